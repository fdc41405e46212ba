"""The embedded "shapes" dataset: a miniature machine-generated visual instruction set.

Everything is a pure function of a seed (``random.Random`` streams named ``"<seed>:train"``,
``"<seed>:bench"``, ``"<seed>:caption"``), drawn with PIL without antialiasing and saved as PNG
with fixed settings, so the same seed gives the same bytes in every file.

Scenes. A ``size x size`` image (32 px by default) on a 3x3 grid; 1-``max_objects`` objects, one
per cell, each with a colour (5, far apart in RGB), a shape (circle, square, triangle) and a size
(small, large); a colour+shape pair appears at most once per scene, so "the red circle" always
names one object. Objects sit at their cell centre with +-1 px jitter: position words (left /
middle / right, top / middle / bottom) are never ambiguous, and the image is still unique.

Samples (LLaVA-Instruct's three categories, ``category`` key on each record):
- ``conversation``: 2-4 short-answer turns of whole-image questions: how many objects, how many
  of a shape / colour, is there a shape / a colour (:data:`CONVERSATION_TYPES`);
- ``detail``: "Describe the image in detail." -> :func:`describe_scene` (every object with
  size, colour, shape and place);
- ``reasoning``: 1-2 count comparisons ("Are there more circles than squares?").
The pool asks what a ~0.4M-parameter LLaVA can learn from a few hundred steps; questions that
bind an attribute to one object ("What color is the circle?", relations) are generated only for
the diagnostic benchmark and ``benchmarks.learnability`` (docs/TESTBED.md).
Short-answer questions end with ``"\nAnswer with a single word."`` (LLaVA-1.5's short-answer
convention; the benchmark questions carry the same suffix, so training and evaluation agree).
Answers come from a small vocabulary: colour / shape / size words, ``yes``/``no``, position words,
and counts as numerals (``"0"``-``"9"``, also in ``bench/count.jsonl``). Answers within every
question type are balanced by construction (yes/no 50:50, counts of 1-6 uniform, ...), so the
most-common-answer baseline is low and each type is learnable from the image.

Imperfections (rates in params; exclusive kinds; exact counts ``round(rate * pool_size)``).
They are designed to *hurt* a model trained on them, as real machine-generated errors do:
- ``wrong_answer``: every answer of the sample contradicts the image, systematically
  (:func:`wrong_answer`: colours and shapes moved by one fixed permutation, positions shifted,
  sizes and yes/no swapped, counts one too high; descriptions of :func:`corrupt_scene`, which
  also hallucinates an extra object). Systematic errors are not noise that averages out: they
  pull the model towards one consistent wrong image->answer mapping.
- ``low_information``: every answer replaced by a non-answer ("It is hard to tell.", "There
  are some shapes in the image."): it teaches the wrong output format.
- ``truncated``: every answer cut to its first half (descriptions mid-sentence, words to a
  prefix), as when generation stops early; at least the first character stays (one-character
  answers stay whole): an empty answer would leave nothing to learn or score.
- ``near_duplicate``: a copy of a clean sample, image re-rendered shifted by 1 px, same questions
  (the detail prompt possibly paraphrased): redundant rather than wrong.
``imperfections.jsonl`` lists *every* sample with its kind, ``"clean"`` included; near
duplicates also carry ``duplicate_of`` (the id of their source).

Held-out scenes. A scene's layout key (shape, colour, size, row, column of every object) is
hashed; 1 in :data:`HELD_OUT_MODULUS` keys is reserved for the benchmarks, and the training pool
and :func:`caption_pairs` never draw a reserved layout. So benchmark scenes are disjoint from
training and caption scenes by construction (not just different random draws), whatever the sizes.

Benchmarks (``bench/``, one held-out scene per question): ``count.jsonl`` (how many objects,
1..6 equally often), ``desc.jsonl`` (descriptions, scored CHAIR-style on categories),
``pope.jsonl`` (POPE on categories: "Is there a circle?", "Is there a red object?", yes / no and
shape / colour in equal shares, negatives sampled random / popular / adversarial from the pool's
category statistics, :func:`negative_category`), ``vqa.jsonl`` (how many of a shape / colour)
and ``binding.jsonl`` (one object's colour, shape, size, position, relations: diagnostic).

Outputs (:func:`write_dataset`, paths relative to the output folder): ``train.json``,
``images/NNNNNN.png``, ``scenes.jsonl``, ``imperfections.jsonl``, ``bench/{vqa,pope,count,desc,binding}.jsonl``
with ``image`` relative to ``bench/`` (``images/bNNNNN.png``).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

# --------------------------------------------------------------------------- vocabulary

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "middle", "right")
GRID = 3
BACKGROUND = (20, 20, 20)
# Half-extent of an object as a fraction of the cell width: large fills most of a cell, small
# about half, so size is visible even at 32 px.
RADIUS = {"small": 0.25, "large": 0.42}

SHORT_ANSWER = "Answer with a single word."
IMAGE_TOKEN = "<image>"
DETAIL_PROMPTS = (
    "Describe the image in detail.",
    "Give a detailed description of the image.",
    "What is in this image? Describe every object.",
)
BENCH_DETAIL_PROMPT = DETAIL_PROMPTS[0]
LOW_INFO_SHORT = ("It is hard to tell.", "I am not sure.", "I cannot tell from the image.")
LOW_INFO_DETAIL = ("There are some shapes in the image.", "The image shows a few objects.")

HELD_OUT_MODULUS = 10  # 1 layout key in 10 belongs to the benchmarks

# The fixed permutations a hallucinating annotator applies (wrong_answer): every colour and
# shape is moved to another one, consistently across the whole pool.
COLOR_SWAP = {"red": "green", "green": "blue", "blue": "yellow", "yellow": "white", "white": "red"}
SHAPE_SWAP = {"circle": "square", "square": "triangle", "triangle": "circle"}
SIZE_SWAP = {"small": "large", "large": "small"}

Obj = dict[str, Any]
QA = tuple[str, str]  # (question text without suffix/placeholder, answer)


# --------------------------------------------------------------------------- scenes


def layout_key(objects: Sequence[Obj]) -> str:
    """Canonical text of a scene's layout (ignores pixel jitter)."""
    return json.dumps(sorted((o["row"], o["col"], o["shape"], o["color"], o["size"]) for o in objects))


def is_held_out(objects: Sequence[Obj]) -> bool:
    """Whether this layout is reserved for the benchmarks (a stable hash, not Python's ``hash``)."""
    digest = hashlib.sha256(layout_key(objects).encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_MODULUS == 0


def sample_scene(rng: random.Random, image_size: int, n_objects: int) -> list[Obj]:
    """``n_objects`` objects in distinct cells with distinct colour+shape pairs, row-major order."""
    if not 1 <= n_objects <= GRID * GRID:
        raise ValueError(f"n_objects must be in 1..{GRID * GRID}, got {n_objects}")
    cell = image_size / GRID
    jitter = max(1, round(0.08 * cell))
    cells = sorted(rng.sample(range(GRID * GRID), n_objects))
    pairs = rng.sample([(c, s) for c in COLORS for s in SHAPES], n_objects)
    objects = []
    for idx, (color, shape) in zip(cells, pairs):
        row, col = divmod(idx, GRID)
        size = rng.choice(SIZES)
        objects.append({
            "shape": shape, "color": color, "size": size, "row": ROWS[row], "col": COLS[col],
            "x": round((col + 0.5) * cell) + rng.randint(-jitter, jitter),
            "y": round((row + 0.5) * cell) + rng.randint(-jitter, jitter),
            "r": max(2, round(RADIUS[size] * cell)),
        })
    return objects


def sample_split_scene(rng: random.Random, image_size: int, n_objects: int, held_out: bool) -> list[Obj]:
    """A scene whose layout is (``held_out=True``) or is not reserved for the benchmarks."""
    for _ in range(100_000):
        objects = sample_scene(rng, image_size, n_objects)
        if is_held_out(objects) == held_out:
            return objects
    raise RuntimeError("could not draw a scene for this split")  # pragma: no cover


def render_scene(objects: Sequence[Obj], image_size: int, shift: tuple[int, int] = (0, 0)) -> Image.Image:
    """Draw the scene (no antialiasing: exact, deterministic pixels)."""
    im = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(im)
    dx, dy = shift
    for o in objects:
        x, y, r = o["x"] + dx, o["y"] + dy, o["r"]
        fill = COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o["shape"] == "square":
            # a square of the same half-extent looks bigger than the circle; shrink it by 1 px
            draw.rectangle([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o['shape']!r}")
    return im


def png_bytes(im: Image.Image) -> bytes:
    """PNG with fixed settings and no metadata chunks: identical pixels -> identical bytes."""
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------- language


def place_phrase(o: Obj) -> str:
    if o["row"] == "middle" and o["col"] == "middle":
        return "in the center"
    if o["row"] == "middle":
        return f"on the {o['col']}"
    if o["col"] == "middle":
        return f"at the {o['row']}"
    return f"at the {o['row']} {o['col']}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_scene(objects: Sequence[Obj]) -> str:
    """One sentence naming every object's size, colour, shape and place, in reading order."""
    if not objects:
        return "The image is empty."
    ordered = sorted(objects, key=lambda o: (ROWS.index(o["row"]), COLS.index(o["col"])))
    n = len(ordered)
    head = "There is 1 object: " if n == 1 else f"There are {n} objects: "
    return head + _join([f"a {o['size']} {o['color']} {o['shape']} {place_phrase(o)}" for o in ordered]) + "."


def refer(o: Obj, objects: Sequence[Obj], omit: str) -> str:
    """The shortest unambiguous name of ``o`` that does not give away attribute ``omit``."""
    if omit == "color":
        candidates = [(f"the {o['shape']}", ("shape",)), (f"the {o['size']} {o['shape']}", ("shape", "size"))]
        fallback = f"the {o['shape']} {place_phrase(o)}"
    elif omit == "shape":
        candidates = [(f"the {o['color']} object", ("color",)),
                      (f"the {o['size']} {o['color']} object", ("color", "size"))]
        fallback = f"the {o['color']} object {place_phrase(o)}"
    else:  # size / position: colour + shape is unique within a scene
        return f"the {o['color']} {o['shape']}"
    for text, keys in candidates:
        if sum(all(p[k] == o[k] for k in keys) for p in objects) == 1:
            return text
    return fallback


def _plural(shape: str) -> str:
    return shape + "s"


# --------------------------------------------------------------------------- questions
# Each generator returns (question, answer) or None when the scene cannot support it. Answers
# are balanced within a type wherever the scene allows (random order of a pair, 50:50 yes/no).


def q_color(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    o = rng.choice(objects)
    return f"What color is {refer(o, objects, 'color')}?", o["color"]


def q_shape(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    o = rng.choice(objects)
    return f"What shape is {refer(o, objects, 'shape')}?", o["shape"]


def q_size(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    o = rng.choice(objects)
    return f"Is {refer(o, objects, 'size')} small or large?", o["size"]


def q_position(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    o = rng.choice(objects)
    ref = refer(o, objects, "position")
    if rng.random() < 0.5:
        return f"Is {ref} on the left, in the middle or on the right?", o["col"]
    return f"Is {ref} at the top, in the middle or at the bottom?", o["row"]


def _balanced(candidates: list[QA], rng: random.Random) -> QA | None:
    """Pick an answer value uniformly, then a question with that answer: counting questions
    would otherwise mostly answer 0 or 1, and "always 1" would be a strong baseline."""
    if not candidates:
        return None
    by_answer: dict[str, list[QA]] = {}
    for qa in candidates:
        by_answer.setdefault(qa[1], []).append(qa)
    return rng.choice(by_answer[rng.choice(sorted(by_answer))])


def q_count(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    total = ("How many objects are there?", str(len(objects)))
    if rng.random() < 0.5:  # scenes hold 1..max_objects uniformly: total counts are balanced
        return total
    candidates = [total]
    candidates += [(f"How many {c} objects are there?", str(sum(o["color"] == c for o in objects)))
                   for c in sorted({o["color"] for o in objects})]
    candidates += [(f"How many {_plural(s)} are there?", str(sum(o["shape"] == s for o in objects)))
                   for s in sorted({o["shape"] for o in objects})]
    return _balanced(candidates, rng)


def absent_pairs(objects: Sequence[Obj]) -> list[tuple[str, str]]:
    present = {(o["color"], o["shape"]) for o in objects}
    return [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]


def negative_pair(objects: Sequence[Obj], rng: random.Random, mode: str,
                  popular: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
    """An absent colour+shape pair, POPE-style: ``random``, ``popular`` (most frequent in the
    pool) or ``adversarial`` (differs from a present object by one attribute)."""
    absent = absent_pairs(objects)
    if mode == "popular":
        for pair in popular:
            if pair in absent:
                return pair
    elif mode == "adversarial":
        near = [p for p in absent if any(p[0] == o["color"] or p[1] == o["shape"] for o in objects)]
        if near:
            return rng.choice(near)
    elif mode != "random":
        raise ValueError(f"unknown negative mode {mode!r}; valid: random, popular, adversarial")
    return rng.choice(absent)


def existence_question(color: str, shape: str) -> str:
    return f"Is there a {color} {shape} in the image?"


def q_exist(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    if rng.random() < 0.5:
        o = rng.choice(objects)
        return existence_question(o["color"], o["shape"]), "yes"
    c, s = negative_pair(objects, rng, rng.choice(("random", "adversarial")))
    return existence_question(c, s), "no"


def _pair(objects: Sequence[Obj], rng: random.Random, differ: str) -> tuple[Obj, Obj] | None:
    pairs = [(a, b) for a in objects for b in objects if a is not b and a[differ] != b[differ]]
    return rng.choice(pairs) if pairs else None


def q_relation(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    axis = rng.choice(("col", "row"))
    pair = _pair(objects, rng, axis)
    if pair is None:
        return None
    a, b = pair  # ordered pairs are drawn uniformly, so yes/no is 50:50
    ra, rb = refer(a, objects, "position"), refer(b, objects, "position")
    if axis == "col":
        return f"Is {ra} to the left of {rb}?", "yes" if COLS.index(a["col"]) < COLS.index(b["col"]) else "no"
    return f"Is {ra} above {rb}?", "yes" if ROWS.index(a["row"]) < ROWS.index(b["row"]) else "no"


def q_count_where(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    candidates = []
    for o in objects:
        ref = refer(o, objects, "position")
        dc = [COLS.index(p["col"]) - COLS.index(o["col"]) for p in objects]
        dr = [ROWS.index(p["row"]) - ROWS.index(o["row"]) for p in objects]
        candidates += [
            (f"How many objects are to the left of {ref}?", str(sum(d < 0 for d in dc))),
            (f"How many objects are to the right of {ref}?", str(sum(d > 0 for d in dc))),
            (f"How many objects are above {ref}?", str(sum(d < 0 for d in dr))),
            (f"How many objects are below {ref}?", str(sum(d > 0 for d in dr))),
        ]
    return _balanced(candidates, rng)


def q_compare(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    attr = rng.choice(("shape", "color"))
    values = SHAPES if attr == "shape" else tuple(COLORS)
    counts = Counter(o[attr] for o in objects)
    options = [(a, b) for a in values for b in values if counts[a] != counts[b]]
    if not options:
        return None
    a, b = rng.choice(options)
    answer = "yes" if counts[a] > counts[b] else "no"
    if attr == "shape":
        return f"Are there more {_plural(a)} than {_plural(b)}?", answer
    return f"Are there more {a} objects than {b} objects?", answer


def q_larger(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    pair = _pair(objects, rng, "size")
    if pair is None:
        return None
    a, b = pair
    return (f"Is {refer(a, objects, 'size')} larger than {refer(b, objects, 'size')}?",
            "yes" if a["size"] == "large" else "no")


# Whole-image category questions: what a ~0.4M-parameter LLaVA learns from a few hundred mixed
# steps (docs/TESTBED.md). A *category* is a shape ("circle") or a colour ("red"), as a COCO
# class is for POPE: "Is there a circle?" asks about the image as a whole, never about one
# object's attributes (binding a colour to a shape stays at chance for this model).

CATEGORY_KINDS = ("shape", "color")


def category_kind(category: str) -> str:
    if category in SHAPES:
        return "shape"
    if category in COLORS:
        return "color"
    raise ValueError(f"unknown category {category!r}; valid: {', '.join((*SHAPES, *COLORS))}")


def categories_of(objects: Sequence[Obj]) -> set[str]:
    """The categories present: every object's shape and colour."""
    return {o["shape"] for o in objects} | {o["color"] for o in objects}


def category_question(category: str) -> str:
    if category_kind(category) == "shape":
        return f"Is there a {category} in the image?"
    return f"Is there a {category} object in the image?"


def _q_presence(objects: Sequence[Obj], rng: random.Random, kind: str) -> QA | None:
    values = SHAPES if kind == "shape" else tuple(COLORS)
    present = categories_of(objects)
    yes = [v for v in values if v in present]
    no = [v for v in values if v not in present]
    if not yes or not no:
        # every shape present: asking would always answer "yes" (70% of shape questions on
        # 1-6 objects), a prior the model would learn instead of the image
        return None
    answer = rng.choice(("yes", "no"))
    return category_question(rng.choice(yes if answer == "yes" else no)), answer


def q_exist_shape(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    return _q_presence(objects, rng, "shape")


def q_exist_color(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    return _q_presence(objects, rng, "color")


def q_count_shape(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    """"How many circles are there?" over every shape, absent ones too (answer 0)."""
    return _balanced([(f"How many {_plural(s)} are there?", str(sum(o["shape"] == s for o in objects)))
                      for s in SHAPES], rng)


def q_count_color(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    """"How many red objects are there?" over every colour, absent ones too (answer 0)."""
    return _balanced([(f"How many {c} objects are there?", str(sum(o["color"] == c for o in objects)))
                      for c in COLORS], rng)


def q_count_total(objects: Sequence[Obj], rng: random.Random) -> QA | None:
    return "How many objects are there?", str(len(objects))


QUESTION_TYPES: dict[str, Callable[[Sequence[Obj], random.Random], QA | None]] = {
    "color": q_color, "shape": q_shape, "size": q_size, "position": q_position, "count": q_count,
    "exist": q_exist, "relation": q_relation,
    "count_where": q_count_where, "compare": q_compare, "larger": q_larger,
    "exist_shape": q_exist_shape, "exist_color": q_exist_color, "count_shape": q_count_shape,
    "count_color": q_count_color, "count_total": q_count_total,
}
# The pool asks what the benchmarks ask (whole-image categories and counts) plus count
# comparisons as its "reasoning"; object-binding types stay available to the diagnostic task
# and to benchmarks.learnability.
CONVERSATION_TYPES = ("count_total", "count_shape", "count_color", "exist_shape", "exist_color")
REASONING_TYPES = ("compare",)
# shapes_vqa: short-answer types counted in the overall score and the calibration.
VQA_TYPES = ("count_shape", "count_color")
# shapes_binding: a diagnostic task outside ``overall`` - questions about one object's
# attributes or relations, which the embedded model does not learn (docs/TESTBED.md).
BINDING_TYPES = ("color", "shape", "size", "position", "relation", "count_where", "compare", "larger")
# The answers each benchmark type cycles through (equal shares): the most-common-answer
# baseline is then 1 / len(values), not whatever a small sample happened to favour.
BENCH_ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS), "shape": SHAPES, "size": SIZES,
    "position": ("left", "right", "top", "bottom", "middle"),
    "relation": ("yes", "no"), "count_where": ("0", "1", "2", "3"), "compare": ("yes", "no"),
    "larger": ("yes", "no"), "exist": ("yes", "no"),
    "exist_shape": ("yes", "no"), "exist_color": ("yes", "no"),
    "count_shape": ("0", "1", "2", "3"), "count_color": ("0", "1", "2", "3"),
    "count_total": tuple(str(i) for i in range(1, 7)),
}


def ask(objects: Sequence[Obj], rng: random.Random, qtypes: Sequence[str]) -> tuple[str, QA]:
    """One question of a type drawn from ``qtypes`` that the scene supports."""
    order = list(qtypes)
    rng.shuffle(order)
    for qtype in order:
        qa = QUESTION_TYPES[qtype](objects, rng)
        if qa is not None:
            return qtype, qa
    # every scene supports a total count; types a scene cannot support fall back to it
    return "count_total", q_count_total(objects, rng)  # type: ignore[return-value]


def balanced_question(qtype: str, k: int, draw_scene: Callable[[], list[Obj]], rng: random.Random,
                      max_tries: int = 10_000) -> tuple[list[Obj], QA]:
    """The ``k``-th benchmark question of ``qtype``: scenes from ``draw_scene`` until the question
    has the answer ``BENCH_ANSWERS[qtype][k % len(values)]`` - answers cycle through the type's
    values, since a few dozen questions per type would otherwise leave one answer frequent by
    chance, and "always say it" a strong baseline. Types without listed values take the first
    scene that supports them; after ``max_tries`` the first supported question is used."""
    values = BENCH_ANSWERS.get(qtype)
    target = values[k % len(values)] if values else None
    first = None
    for _ in range(max_tries):
        objs = draw_scene()
        qa = QUESTION_TYPES[qtype](objs, rng)
        if qa is None:
            continue
        if target is None or qa[1] == target:
            return objs, qa
        first = first or (objs, qa)
    if first is None:
        raise RuntimeError(f"no scene supports a {qtype!r} question in {max_tries} draws")
    return first


def short(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER}"


def sample_qas(objects: Sequence[Obj], category: str, rng: random.Random, wrong: bool = False,
               image_size: int = 32) -> list[QA]:
    """The (question, answer) turns of one sample; short-answer questions carry the suffix.

    ``wrong=True`` gives the answers of a hallucinating annotator: each short answer mapped by
    :func:`wrong_answer`, descriptions of :func:`corrupt_scene` - every answer contradicts the
    image, always in the same direction.
    """
    if category == "detail":
        shown = corrupt_scene(objects, rng, image_size) if wrong else objects
        return [(rng.choice(DETAIL_PROMPTS), describe_scene(shown))]
    if category == "conversation":
        n, qtypes = rng.randint(2, 4), CONVERSATION_TYPES  # short: CPU fine-tunes are token-bound
    elif category == "reasoning":
        n, qtypes = rng.randint(1, 2), REASONING_TYPES
    else:
        raise ValueError(f"unknown category {category!r}; valid: conversation, detail, reasoning")
    qas: list[QA] = []
    seen: set[str] = set()
    for _ in range(4 * n):  # avoid asking the same question twice in one conversation
        qtype, (q, a) = ask(objects, rng, qtypes)
        if q not in seen:
            seen.add(q)
            qas.append((short(q), wrong_answer(qtype, q, a) if wrong else a))
        if len(qas) == n:
            break
    return qas


def to_conversations(qas: Sequence[QA]) -> list[dict[str, str]]:
    turns = []
    for i, (q, a) in enumerate(qas):
        turns.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{q}" if i == 0 else q})
        turns.append({"from": "gpt", "value": a})
    return turns


# --------------------------------------------------------------------------- imperfections

KINDS = ("clean", "wrong_answer", "near_duplicate", "low_information", "truncated")


def wrong_answer(qtype: str, question: str, answer: str) -> str:
    """A hallucinating annotator's answer: always wrong, always wrong the same way (fixed
    permutations of colours / shapes / positions, sizes and yes/no swapped, counts one too high)."""
    if qtype == "color":
        return COLOR_SWAP[answer]
    if qtype == "shape":
        return SHAPE_SWAP[answer]
    if qtype == "size":
        return SIZE_SWAP[answer]
    if qtype == "position":
        axis = COLS if "on the left" in question else ROWS
        return axis[(axis.index(answer) + 1) % GRID]
    if qtype in ("count", "count_where", "count_shape", "count_color", "count_total"):
        return str(int(answer) + 1)
    if answer in ("yes", "no"):
        return "no" if answer == "yes" else "yes"
    raise ValueError(f"no wrong-answer rule for question type {qtype!r}")


def corrupt_scene(objects: Sequence[Obj], rng: random.Random, image_size: int) -> list[Obj]:
    """The scene a hallucinating annotator "sees": colours and shapes permuted (fixed maps),
    positions mirrored both ways, sizes swapped, and one extra object when a cell is free."""
    flip_r = {r: ROWS[GRID - 1 - i] for i, r in enumerate(ROWS)}
    flip_c = {c: COLS[GRID - 1 - i] for i, c in enumerate(COLS)}
    out = [{**o, "color": COLOR_SWAP[o["color"]], "shape": SHAPE_SWAP[o["shape"]],
            "size": SIZE_SWAP[o["size"]], "row": flip_r[o["row"]], "col": flip_c[o["col"]],
            "x": image_size - o["x"], "y": image_size - o["y"]} for o in objects]
    free = [(r, c) for r in ROWS for c in COLS if not any(o["row"] == r and o["col"] == c for o in out)]
    absent = absent_pairs(out)
    if free and absent:
        (r, c), (color, shape) = rng.choice(free), rng.choice(absent)
        cell = image_size / GRID
        size = rng.choice(SIZES)
        out.append({"shape": shape, "color": color, "size": size, "row": r, "col": c,
                    "x": round((COLS.index(c) + 0.5) * cell), "y": round((ROWS.index(r) + 0.5) * cell),
                    "r": max(2, round(RADIUS[size] * cell))})
    return out


def truncate_answer(answer: str) -> str:
    """Generation stopped early: the first half (descriptions end mid-sentence, without '.'),
    never less than the first character (an empty answer supervises no token)."""
    return answer[: max(1, len(answer) // 2)].rstrip()


def low_information_answer(answer_is_short: bool, rng: random.Random) -> str:
    return rng.choice(LOW_INFO_SHORT if answer_is_short else LOW_INFO_DETAIL)


# --------------------------------------------------------------------------- pool and benchmarks


@dataclass
class Sample:
    objects: list[Obj]          # what the image shows
    category: str
    qas: list[QA]
    kind: str = "clean"
    shift: tuple[int, int] = (0, 0)
    duplicate_of: int | None = None  # index into the base samples


def _exact_counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder apportionment of ``n`` to ``shares`` (deterministic)."""
    total = sum(shares.values())
    raw = {k: n * v / total for k, v in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def object_count_weights(max_objects: int, skew: float) -> list[float]:
    """P(a training scene has k objects), k = 1..max_objects: proportional to exp(-skew * (k-1)).

    ``skew`` 0 is uniform (the default pool); 0.8 with 6 objects puts 55% of scenes at one object
    and 4.6% at five or six - a thin tail of crowded scenes, as machine-made instruction data is
    mostly easy, redundant samples with a few hard ones. The benchmarks stay uniform."""
    w = [math.exp(-skew * k) for k in range(max_objects)]
    return [x / sum(w) for x in w]


def _object_count(rng: random.Random, max_objects: int, skew: float) -> int:
    if skew == 0:
        return rng.randint(1, max_objects)  # the default pool's exact random stream
    return rng.choices(range(1, max_objects + 1), weights=object_count_weights(max_objects, skew))[0]


def generate_pool(seed: int, pool_size: int, image_size: int = 32, max_objects: int = 6,
                  categories: dict[str, float] | None = None,
                  rates: dict[str, float] | None = None, progress: bool = False,
                  difficulty_skew: float = 0.0) -> list[Sample]:
    """The training pool, in its final (shuffled) order. ``difficulty_skew``: see
    :func:`object_count_weights`."""
    if difficulty_skew < 0:
        raise ValueError(f"difficulty_skew must be >= 0, got {difficulty_skew}")
    categories = categories or {"conversation": 0.5, "detail": 0.2, "reasoning": 0.3}
    rates = rates or {"wrong_answer": 0.25, "near_duplicate": 0.10, "low_information": 0.10, "truncated": 0.05}
    unknown = set(rates) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown imperfection kinds {sorted(unknown)}; valid: {list(KINDS[1:])}")
    n_kind = {k: round(rates.get(k, 0.0) * pool_size) for k in KINDS[1:]}
    n_base = pool_size - n_kind["near_duplicate"]
    n_bad = n_kind["wrong_answer"] + n_kind["low_information"] + n_kind["truncated"]
    if n_bad > n_base:
        raise ValueError(f"imperfection rates {rates} leave no clean samples in a pool of {pool_size}")
    rng = random.Random(f"{seed}:train")
    kinds = (["wrong_answer"] * n_kind["wrong_answer"] + ["low_information"] * n_kind["low_information"]
             + ["truncated"] * n_kind["truncated"])
    kinds += ["clean"] * (n_base - len(kinds))
    rng.shuffle(kinds)
    cats = [c for c, k in _exact_counts(n_base, categories).items() for _ in range(k)]
    rng.shuffle(cats)

    base: list[Sample] = []
    for kind, category in tqdm(list(zip(kinds, cats)), desc="shapes pool", unit="sample", disable=not progress):
        objects = sample_split_scene(rng, image_size, _object_count(rng, max_objects, difficulty_skew), held_out=False)
        qas = sample_qas(objects, category, rng, wrong=kind == "wrong_answer", image_size=image_size)
        for _ in range(20 if kind == "truncated" else 0):
            # a one-character answer ("3") cannot be cut: redraw so truncation changes every answer
            if all(len(a) >= 2 for _, a in qas):
                break
            qas = sample_qas(objects, category, rng, wrong=False, image_size=image_size)
        if kind == "low_information":
            qas = [(q, low_information_answer(category != "detail", rng)) for q, a in qas]
        elif kind == "truncated":
            qas = [(q, truncate_answer(a)) for q, a in qas]
        base.append(Sample(objects, category, qas, kind))

    clean = [i for i, s in enumerate(base) if s.kind == "clean"]
    n_dup = n_kind["near_duplicate"]
    sources = rng.sample(clean, n_dup) if n_dup <= len(clean) else [rng.choice(clean) for _ in range(n_dup)]
    dups = []
    for i in sources:
        src = base[i]
        qas = [(rng.choice(DETAIL_PROMPTS), a) if src.category == "detail" else (q, a) for q, a in src.qas]
        shift = rng.choice(((1, 0), (-1, 0), (0, 1), (0, -1)))
        dups.append(Sample(src.objects, src.category, qas, "near_duplicate", shift, duplicate_of=i))
    pool = base + dups
    order = list(range(len(pool)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    out = []
    for old in order:
        s = pool[old]
        if s.duplicate_of is not None:
            s = Sample(s.objects, s.category, s.qas, s.kind, s.shift, position[s.duplicate_of])
        out.append(s)
    return out


def pool_records(pool: Sequence[Sample]) -> list[dict[str, Any]]:
    """LLaVA-format records (``id``, ``image``, ``conversations``, ``category``)."""
    return [{"id": sample_id(i), "image": f"images/{i:06d}.png", "conversations": to_conversations(s.qas),
             "category": s.category} for i, s in enumerate(pool)]


def sample_id(i: int) -> str:
    return f"shapes-{i:06d}"


def shifted(objects: Sequence[Obj], shift: tuple[int, int]) -> list[Obj]:
    return [{**o, "x": o["x"] + shift[0], "y": o["y"] + shift[1]} for o in objects]


@dataclass(frozen=True)
class CategoryStats:
    """POPE's negative-sampling statistics of the training pool: how many scenes hold each
    category (``popular``), and how many hold each pair of categories (``adversarial``)."""
    scenes_with: dict[str, int]
    together: dict[tuple[str, str], int]


def category_stats(scenes: Iterable[Sequence[Obj]]) -> CategoryStats:
    with_ = Counter()
    together = Counter()
    for objs in scenes:
        present = sorted(categories_of(objs))
        with_.update(present)
        together.update((a, b) for a in present for b in present if a != b)
    return CategoryStats(dict(with_), dict(together))


def negative_category(objects: Sequence[Obj], rng: random.Random, mode: str, kind: str,
                      stats: CategoryStats | None = None) -> str | None:
    """An absent category of ``kind`` (shape / color), sampled as POPE samples negatives:
    ``random`` (uniform), ``popular`` (the one in most pool scenes) or ``adversarial`` (the one
    that co-occurs most often in the pool with the categories present). None if every category
    of that kind is present. Ties go to the name, so the choice is deterministic."""
    values = SHAPES if kind == "shape" else tuple(COLORS)
    present = categories_of(objects)
    absent = [v for v in values if v not in present]
    if not absent:
        return None
    if mode == "random":
        return rng.choice(absent)
    stats = stats or CategoryStats({}, {})
    if mode == "popular":
        return min(absent, key=lambda c: (-stats.scenes_with.get(c, 0), c))
    if mode == "adversarial":
        return min(absent, key=lambda c: (-sum(stats.together.get((p, c), 0) for p in present), c))
    raise ValueError(f"unknown negative mode {mode!r}; valid: random, popular, adversarial")


@dataclass
class Bench:
    scenes: list[list[Obj]]                  # index -> objects; image is images/b{index:05d}.png
    vqa: list[dict[str, Any]]
    pope: list[dict[str, Any]]
    count: list[dict[str, Any]]
    desc: list[dict[str, Any]]
    binding: list[dict[str, Any]]


BENCH_FILES = ("vqa", "pope", "count", "desc", "binding")


def bench_image(i: int) -> str:
    return f"images/b{i:05d}.png"


def generate_bench(seed: int, image_size: int = 32, max_objects: int = 6, *, vqa: int = 200,
                   pope_per_split: int = 100, count: int = 100, desc: int = 50, binding: int = 0,
                   stats: CategoryStats | None = None) -> Bench:
    """Held-out benchmarks, one fresh held-out scene per question. ``stats`` (of the training
    pool, :func:`category_stats`) drive POPE's popular and adversarial negatives."""
    rng = random.Random(f"{seed}:bench")
    scenes: list[list[Obj]] = []

    def draw_scene(n_objects: int | None = None) -> list[Obj]:
        return sample_split_scene(rng, image_size, n_objects or rng.randint(1, max_objects), held_out=True)

    def new_scene(n_objects: int | None = None) -> tuple[int, list[Obj]]:
        scenes.append(draw_scene(n_objects))
        return len(scenes) - 1, scenes[-1]

    vqa_rows = []
    for i in range(vqa):
        qtype = VQA_TYPES[i % len(VQA_TYPES)]  # equal share of every type
        objs, qa = balanced_question(qtype, i // len(VQA_TYPES), draw_scene, rng)
        scenes.append(objs)
        idx = len(scenes) - 1
        vqa_rows.append({"question_id": f"vqa-{i:05d}", "image": bench_image(idx), "question": short(qa[0]),
                         "answer": qa[1], "qtype": qtype})
    pope_rows = []
    for split in ("random", "popular", "adversarial"):
        for i in range(pope_per_split):
            # yes / no alternate, and so do shape / colour categories within each answer: a
            # model cannot score by guessing from the kind of category asked about
            kind = CATEGORY_KINDS[(i // 2) % 2]
            if i % 2 == 0:
                idx, objs = new_scene()
                category = rng.choice(sorted(c for c in categories_of(objs) if category_kind(c) == kind))
                answer = "yes"
            else:
                for _ in range(10_000):
                    objs = draw_scene()
                    category = negative_category(objs, rng, split, kind, stats)
                    if category is not None:
                        break
                scenes.append(objs)
                idx, answer = len(scenes) - 1, "no"
            pope_rows.append({"question_id": f"pope-{split}-{i:05d}", "image": bench_image(idx),
                              "question": short(category_question(category)), "answer": answer,
                              "split": split, "category": category})
    count_rows = []
    for i in range(count):
        idx, objs = new_scene(1 + i % max_objects)  # counts 1..max_objects equally often
        count_rows.append({"question_id": f"count-{i:05d}", "image": bench_image(idx),
                           "question": short("How many objects are there?"), "answer": str(len(objs))})
    desc_rows = []
    for i in range(desc):
        idx, objs = new_scene()
        desc_rows.append({"question_id": f"desc-{i:05d}", "image": bench_image(idx),
                          "question": BENCH_DETAIL_PROMPT, "objects": objs})
    binding_rows = []
    for i in range(binding):
        qtype = BINDING_TYPES[i % len(BINDING_TYPES)]
        objs, qa = balanced_question(qtype, i // len(BINDING_TYPES), draw_scene, rng)
        scenes.append(objs)
        binding_rows.append({"question_id": f"binding-{i:05d}", "image": bench_image(len(scenes) - 1),
                             "question": short(qa[0]), "answer": qa[1], "qtype": qtype})
    return Bench(scenes, vqa_rows, pope_rows, count_rows, desc_rows, binding_rows)


def caption_pairs(seed: int, n: int, image_size: int = 32, max_objects: int = 6) -> list[tuple[Image.Image, str]]:
    """``n`` (image, caption) pairs for CLIP contrastive training and projector alignment, from
    layouts never used by the benchmarks (they may repeat training layouts, as CC3M/LCS-558K
    overlaps nothing in particular). The caption is :func:`describe_scene`."""
    rng = random.Random(f"{seed}:caption")
    out = []
    for _ in range(n):
        objs = sample_split_scene(rng, image_size, rng.randint(1, max_objects), held_out=False)
        out.append((render_scene(objs, image_size), describe_scene(objs)))
    return out


# --------------------------------------------------------------------------- files


def build_files(seed: int, pool_size: int, image_size: int = 32, max_objects: int = 6, *,
                categories: dict[str, float] | None = None, rates: dict[str, float] | None = None,
                bench: dict[str, int] | None = None, progress: bool = False,
                difficulty_skew: float = 0.0) -> dict[str, bytes]:
    """Every output file as ``relative path -> bytes`` (pure: no file system)."""
    pool = generate_pool(seed, pool_size, image_size, max_objects, categories, rates, progress, difficulty_skew)
    records = pool_records(pool)
    files: dict[str, bytes] = {}
    scenes = []
    for rec, s in zip(tqdm(records, desc="shapes images", unit="img", disable=not progress), pool):
        objs = shifted(s.objects, s.shift)
        files[rec["image"]] = png_bytes(render_scene(objs, image_size))
        scenes.append({"image": rec["image"], "objects": objs})
    imperfections = []
    for i, s in enumerate(pool):
        row = {"id": sample_id(i), "kind": s.kind}
        if s.duplicate_of is not None:
            row["duplicate_of"] = sample_id(s.duplicate_of)
        imperfections.append(row)
    b = generate_bench(seed, image_size, max_objects, stats=category_stats(s.objects for s in pool),
                       **(bench or {}))
    for i, objs in enumerate(b.scenes):
        files[f"bench/{bench_image(i)}"] = png_bytes(render_scene(objs, image_size))
    files["train.json"] = _json_bytes(records)
    files["scenes.jsonl"] = _jsonl_bytes(scenes)
    files["imperfections.jsonl"] = _jsonl_bytes(imperfections)
    for name in BENCH_FILES:
        files[f"bench/{name}.jsonl"] = _jsonl_bytes(getattr(b, name))
    return files


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _jsonl_bytes(rows: Iterable[Any]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_tree(out: str | Path, files: dict[str, bytes]) -> None:
    """Replace folder ``out`` with exactly ``files``, atomically: written into a sibling temp
    folder, then swapped in by rename (a crash leaves the old folder or the new one, and no
    stale images from a previous, larger run)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_dataset(out: str | Path, cfg: Any, progress: bool = True) -> dict[str, Any]:
    """Generate from a ``ShapesConfig`` and write it to ``out``; return counts."""
    files = build_files(cfg.seed, cfg.pool_size, cfg.image_size, cfg.max_objects,
                        categories=cfg.categories.model_dump(), rates=cfg.imperfections.model_dump(),
                        bench=cfg.bench.model_dump(), progress=progress, difficulty_skew=cfg.difficulty_skew)
    kinds = Counter(json.loads(line)["kind"] for line in files["imperfections.jsonl"].decode().splitlines())
    meta = {
        "artifact": "shapes",
        "params": cfg.model_dump(mode="json"),
        "pool": cfg.pool_size,
        "kinds": dict(sorted(kinds.items())),
        "bench": {n: files[f"bench/{n}.jsonl"].count(b"\n") for n in BENCH_FILES},
        "train_json_sha256": hashlib.sha256(files["train.json"]).hexdigest(),
    }
    # the sidecar of train.json (selfilter.io.sidecar_path naming), inside the same atomic swap
    files["train.json.meta.json"] = _json_bytes(meta)
    write_tree(out, files)
    return meta


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (replaced), e.g. data/shapes")
    parser.add_argument("--params", default="params.yaml", help="params file (section 'data.shapes')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from selfilter.config import ConfigError, load_section
    from selfilter.data.config import DataConfig

    try:
        cfg = load_section("data", DataConfig, args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = write_dataset(args.out, cfg.shapes, progress=not args.no_progress)
    print(f"shapes: {meta['pool']} samples ({meta['kinds']}), bench {meta['bench']} -> {args.out}")
    return 0
