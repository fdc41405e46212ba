"""A generated LLaVA-format dataset that is *not* the embedded shapes data, for tests and the
README's "Using your own data" example.

    python tests/userdata.py --out DIR --n 400      # from the repo root, with the venv's python

(``python -m tests.userdata`` does not work in this venv: latex2sympy2, a dependency of
lmms-eval, installs a top-level ``tests`` package into site-packages, which wins over this
folder, a namespace package. Tests import it as ``from userdata import ...``, like
``fake_pipeline``.) It writes ``DIR/annotations.json`` (a JSON array in LLaVA format) and ``DIR/images/`` (64 px PNG and
JPEG pictures in sub-folders: circles, stripes, digits, coloured squares - nothing like the
32 px shape scenes), and prints the expected ingest counts.

The conversations are multi-turn (2-3 exchanges) with several question types: short answers
("Red.", "3", "Vertical.") and longer descriptions; some records are text-only (no ``image``, as in
LLaVA-665K). Planted among the ``n`` records are the bad records ingest must handle, one kind per
entry of :data:`PLANTED` (missing, corrupt and truncated images, absolute and escaping paths,
malformed conversations, empty and whitespace-only answers) and a few valid records that repeat
an earlier record's id. :func:`make_llava_dataset` returns what ingest is expected to make of it.

Empty answers and duplicate ids: selfilter/data/ingest.py does not handle them yet (issue 17
item 6). The returned counts say both what ingest does today (``kept_today``,
``rejected_today``: empty answers kept) and what it must do (``kept``, ``rejected``: empty
answers rejected as :data:`EMPTY_ANSWER_REASON`; duplicate ids kept and counted).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SIZE = 64
# The reason code the lead's ingest fix is expected to use for empty / whitespace-only answers
# (not in ingest.REASONS yet): one constant to change if it ends up named otherwise.
EMPTY_ANSWER_REASON = "answer_empty"

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
          "purple": (140, 60, 180), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (250, 250, 250)}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (150, 150, 150), "black": (20, 20, 20)}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Planted bad records: kind -> (how many, the ingest reason code). The valid records with a
# duplicate id and the empty answers are counted separately (see module docstring).
PLANTED: dict[str, tuple[int, str]] = {
    "missing_image": (2, "image_missing"),
    "corrupt_image": (2, "image_unreadable"),
    "truncated_image": (2, "image_truncated"),
    "escaping_path": (2, "image_path_escapes"),
    "absolute_path": (1, "image_path_absolute"),
    "conversations_not_list": (1, "conversations_not_list"),
    "turn_without_value": (1, "turn_not_object"),
    "unknown_role": (1, "unknown_role"),
    "no_answer_turn": (1, "no_answer_turn"),
    "empty_answer": (2, EMPTY_ANSWER_REASON),
    "whitespace_answer": (2, EMPTY_ANSWER_REASON),
}
N_DUPLICATE_IDS = 4
N_TEXT_ONLY_FRACTION = 0.06
SHORT_WORDS = 5  # "short answer": at most this many words (the held-out short-answer task's default)


# --------------------------------------------------------------------------- pictures

def _font():
    # Pillow's built-in bitmap font: no font files needed; drawn small and scaled up.
    return ImageFont.load_default()


def _circles(rng: random.Random):
    bg_name = rng.choice(list(BACKGROUNDS))
    color = rng.choice([c for c in COLORS if c != bg_name])
    k = rng.randint(1, 4)
    im = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[bg_name])
    d = ImageDraw.Draw(im)
    for i in range(k):
        r = rng.randint(5, 9)
        cx, cy = 8 + (i % 2) * 30 + rng.randint(0, 12), 8 + (i // 2) * 30 + rng.randint(0, 12)
        d.ellipse([cx - r + 4, cy - r + 4, cx + r + 4, cy + r + 4], fill=COLORS[color])
    facts = {"kind": "circles", "color": color, "count": k, "background": bg_name}
    return im, facts


def _stripes(rng: random.Random):
    a, b = rng.sample(list(COLORS), 2)
    orient = rng.choice(["horizontal", "vertical"])
    k = rng.choice([4, 6, 8])
    im = Image.new("RGB", (SIZE, SIZE), COLORS[b])
    d = ImageDraw.Draw(im)
    w = SIZE // k
    for i in range(0, k, 2):
        box = [0, i * w, SIZE, (i + 1) * w - 1] if orient == "horizontal" else [i * w, 0, (i + 1) * w - 1, SIZE]
        d.rectangle(box, fill=COLORS[a])
    facts = {"kind": "stripes", "colors": (a, b), "orientation": orient, "count": k}
    return im, facts


def _digit(rng: random.Random):
    digit = rng.randint(0, 9)
    color = rng.choice(["red", "blue", "green", "black", "purple"])
    small = Image.new("RGB", (16, 16), BACKGROUNDS["white"])
    ImageDraw.Draw(small).text((4, 2), str(digit), fill=COLORS[color], font=_font())
    im = small.resize((SIZE, SIZE), Image.NEAREST)
    facts = {"kind": "digit", "digit": digit, "color": color}
    return im, facts


def _squares(rng: random.Random):
    colors = rng.sample(list(COLORS)[:6], rng.randint(1, 3))
    im = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS["gray"])
    d = ImageDraw.Draw(im)
    sizes = sorted(rng.sample(range(8, 26), len(colors)), reverse=True)
    for i, (c, s) in enumerate(zip(colors, sizes)):
        x, y = 2 + i * 20, 2 + rng.randint(0, SIZE - s - 4)
        d.rectangle([x, y, min(SIZE - 1, x + s), y + s], fill=COLORS[c])
    facts = {"kind": "squares", "colors": colors, "count": len(colors), "largest": colors[0]}
    return im, facts


PICTURES = (_circles, _stripes, _digit, _squares)


# --------------------------------------------------------------------------- conversations

def _questions(f: dict[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) pairs about one picture: short answers and one long description."""
    if f["kind"] == "circles":
        n = f["count"]
        return [("What color are the circles?" if n > 1 else "What color is the circle?", f"{f['color'].capitalize()}."),
                ("How many circles are there?", str(n)),
                ("What is the background color?", f["background"].capitalize()),
                ("Describe the picture in detail.",
                 f"The picture shows {NUMBER_WORDS[n]} {f['color']} circle{'s' * (n > 1)} on a {f['background']} "
                 f"background. The circles are drawn as flat filled discs without outlines, and they do "
                 f"not overlap.")]
    if f["kind"] == "stripes":
        a, b = f["colors"]
        return [("Are the stripes horizontal or vertical?", f"{f['orientation'].capitalize()}."),
                ("Which two colors do the stripes have?", f"{a.capitalize()} and {b}."),
                ("How many stripes are there?", str(f["count"])),
                ("Describe the pattern.",
                 f"It is a pattern of {f['count']} {f['orientation']} stripes of equal width that alternate "
                 f"between {a} and {b}, filling the whole square image from edge to edge.")]
    if f["kind"] == "digit":
        d = f["digit"]
        return [("What digit is shown?", str(d)),
                ("What color is the digit?", f"{f['color'].capitalize()}."),
                ("Is the number even or odd?", "Even." if d % 2 == 0 else "Odd."),
                ("What is written in the image, and how does it look?",
                 f"The image shows the single digit {d} ({NUMBER_WORDS[d]}), written in {f['color']} on a white "
                 f"background in a blocky pixel font, enlarged so that each pixel of the font is clearly visible.")]
    n = f["count"]
    return [("How many squares are there?", str(n)),
            ("What color is the largest square?", f"{f['largest'].capitalize()}."),
            ("List the colors of the squares from largest to smallest.", ", ".join(f["colors"]).capitalize() + "."),
            ("Describe the image.",
             f"A gray canvas with {NUMBER_WORDS[n]} filled square{'s' * (n > 1)} placed from left to right; "
             f"the largest one is {f['largest']}. No square has a border.")]


TEXT_ONLY = [
    ("What is {a} plus {b}?", "{s}"),
    ("Write one sentence about the number {a}.", "The number {a} comes right after {p} when you count up from zero."),
    ("Is {a} greater than {b}? Answer yes or no.", "{gt}"),
    ("Spell the number {a} in words.", "{w}"),
]


def _conversation(pairs: list[tuple[str, str]], image_last: bool) -> list[dict[str, str]]:
    conv = []
    for i, (q, a) in enumerate(pairs):
        if i == 0:
            # LLaVA puts the placeholder first, sometimes last; ingest and encode accept both.
            q = f"{q}\n<image>" if image_last else f"<image>\n{q}"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return conv


def _text_only_record(rng: random.Random, rid: str) -> dict[str, Any]:
    pairs = []
    for q, a in rng.sample(TEXT_ONLY, rng.randint(2, 3)):
        x, y = rng.randint(1, 9), rng.randint(1, 9)
        fill = {"a": x, "b": y, "s": x + y, "p": x - 1, "gt": "Yes." if x > y else "No.", "w": NUMBER_WORDS[x]}
        pairs.append((q.format(**fill), a.format(**fill)))
    return {"id": rid, "conversations": [t for q, a in pairs for t in
                                         ({"from": "human", "value": q}, {"from": "gpt", "value": a})]}


# --------------------------------------------------------------------------- the dataset

def make_llava_dataset(out_dir: str | Path, n: int = 400, seed: int = 0) -> dict[str, Any]:
    """Write ``out_dir/annotations.json`` + ``out_dir/images/`` with ``n`` records in all
    (planted bad ones included) and return the expected outcome of ingest:

    ``annotations``, ``image_dir`` (paths); ``records`` (= n); ``planted`` {kind: count};
    ``rejected`` {reason: count} and ``kept`` once ingest rejects empty answers (issue 17),
    ``rejected_today`` / ``kept_today`` for the ingest of today (empty answers kept);
    ``text_only`` (kept records without an image); ``duplicate_ids`` (records whose id repeats an
    earlier record's, all valid and kept) with ``duplicate_id_values``; ``short_first_answer``
    (kept image records whose first answer has at most 5 words).
    """
    n_planted = sum(k for k, _ in PLANTED.values())
    if n < n_planted + N_DUPLICATE_IDS + 20:
        raise ValueError(f"n={n} is too small: {n_planted} planted bad records plus valid ones need n >= "
                         f"{n_planted + N_DUPLICATE_IDS + 20}")
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    for kind in ("circles", "stripes", "digit", "squares", "broken"):
        (image_dir / kind).mkdir(parents=True, exist_ok=True)

    n_text = max(1, round(N_TEXT_ONLY_FRACTION * n))
    n_valid = n - n_planted
    records: list[dict[str, Any]] = []
    short_first = 0
    for i in range(n_valid):
        rid = f"ud{seed}-{i:05d}"
        if i % max(1, n_valid // n_text) == 1 and sum("image" not in r for r in records) < n_text:
            records.append(_text_only_record(rng, rid))
            continue
        im, facts = rng.choice(PICTURES)(rng)
        ext = "jpg" if i % 3 == 0 else "png"
        rel = f"{facts['kind']}/{i:05d}.{ext}"
        im.save(image_dir / rel, **({"quality": 90} if ext == "jpg" else {}))
        qa = _questions(facts)
        pairs = rng.sample(qa, rng.randint(2, 3))
        short_first += len(pairs[0][1].split()) <= SHORT_WORDS
        records.append({"id": rid, "image": rel, "conversations": _conversation(pairs, image_last=(i % 7 == 3))})

    # Valid records that reuse an earlier id (LLaVA-665K has such): kept, reported.
    image_ids = [j for j, r in enumerate(records) if "image" in r]
    dup_sources = rng.sample(image_ids[: len(image_ids) // 2], N_DUPLICATE_IDS)
    dup_targets = rng.sample(image_ids[len(image_ids) // 2:], N_DUPLICATE_IDS)
    for s, t in zip(dup_sources, dup_targets):
        records[t]["id"] = records[s]["id"]

    # The planted bad records, each with a valid-looking rest so that only its fault rejects it.
    good_png = image_dir / "broken" / "source.png"
    Image.effect_noise((SIZE, SIZE), 60).convert("RGB").save(good_png)
    good_jpg = image_dir / "broken" / "source.jpg"
    Image.effect_noise((SIZE, SIZE), 60).convert("RGB").save(good_jpg, quality=95)
    conv = _conversation([("What color is the circle?", "Blue."), ("How many circles are there?", "2")], False)
    bad: list[dict[str, Any]] = []
    for kind, (count, _) in PLANTED.items():
        for j in range(count):
            r: dict[str, Any] = {"id": f"bad-{kind}-{j}", "image": "broken/source.png",
                                 "conversations": json.loads(json.dumps(conv))}
            if kind == "missing_image":
                r["image"] = f"circles/not_there_{j}.png"
            elif kind == "corrupt_image":
                (image_dir / "broken" / f"corrupt_{j}.png").write_bytes(bytes(rng.randrange(256) for _ in range(300)))
                r["image"] = f"broken/corrupt_{j}.png"
            elif kind == "truncated_image":
                src = good_jpg if j % 2 == 0 else good_png
                data = src.read_bytes()
                name = f"truncated_{j}{src.suffix}"
                (image_dir / "broken" / name).write_bytes(data[: len(data) // 2])
                r["image"] = f"broken/{name}"
            elif kind == "escaping_path":
                r["image"] = "../annotations.json" if j == 0 else "circles/../../outside.png"
            elif kind == "absolute_path":
                r["image"] = str((image_dir / "broken" / "source.png").resolve())
            elif kind == "conversations_not_list":
                r["conversations"] = "USER: <image>\nWhat color is the circle? ASSISTANT: Blue."
            elif kind == "turn_without_value":
                del r["conversations"][1]["value"]
            elif kind == "unknown_role":
                r["conversations"][1]["from"] = "assistant"
            elif kind == "no_answer_turn":
                r["conversations"] = r["conversations"][:1]
            elif kind == "empty_answer":
                # the first answer, and (second one) an answer later in the conversation
                r["conversations"][1 if j == 0 else 3]["value"] = ""
            elif kind == "whitespace_answer":
                r["conversations"][1 if j == 0 else 3]["value"] = " \n\t " if j == 0 else "   "
            bad.append(r)
    # Spread the bad records through the file (their positions = their ingest index).
    for r in bad:
        records.insert(rng.randrange(len(records) + 1), r)
    assert len(records) == n

    with open(out_dir / "annotations.json", "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)

    rejected: dict[str, int] = {}
    for count, reason in PLANTED.values():
        rejected[reason] = rejected.get(reason, 0) + count
    empty = rejected[EMPTY_ANSWER_REASON]
    rejected_today = {k: v for k, v in rejected.items() if k != EMPTY_ANSWER_REASON}
    dup_values = sorted({records_id for records_id in (r["id"] for r in records)
                         if sum(1 for x in records if x["id"] == records_id) > 1})
    return {
        "annotations": out_dir / "annotations.json",
        "image_dir": image_dir,
        "records": n,
        "planted": {k: c for k, (c, _) in PLANTED.items()},
        "rejected": dict(sorted(rejected.items())),
        "kept": n - sum(rejected.values()),
        "rejected_today": dict(sorted(rejected_today.items())),
        "kept_today": n - sum(rejected_today.values()),
        "empty_answers": empty,
        "text_only": sum("image" not in r for r in records),
        "duplicate_ids": N_DUPLICATE_IDS,
        "duplicate_id_values": dup_values,
        "short_first_answer": short_first,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/userdata.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (annotations.json, images/)")
    p.add_argument("--n", type=int, default=400, help="records in all, planted bad ones included")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    info = make_llava_dataset(args.out, n=args.n, seed=args.seed)
    print(json.dumps(info, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
