"""The training data: the instruction pool (``generate_pool``: scenes, their questions and the
imperfections planted on purpose - wrong, non-informative, truncated, near-duplicate samples)
and the caption pairs a base pretrains on. Both draw only layouts outside the benchmarks.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from selfilter.data.shapes.questions import (
    CONVERSATION_TYPES,
    DETAIL_PROMPTS,
    QA,
    REASONING_TYPES,
    absent_pairs,
    ask,
    short,
    to_conversations,
)
from selfilter.data.shapes.scene import (
    COLS,
    GRID,
    RADIUS,
    ROWS,
    SIZES,
    Obj,
    describe_scene,
    render_scene,
    sample_split_scene,
)

# --------------------------------------------------------------------------- vocabulary

LOW_INFO_SHORT = ("It is hard to tell.", "I am not sure.", "I cannot tell from the image.")
LOW_INFO_DETAIL = ("There are some shapes in the image.", "The image shows a few objects.")

# The fixed permutations a hallucinating annotator applies (wrong_answer): every colour and
# shape is moved to another one, consistently across the whole pool.
COLOR_SWAP = {"red": "green", "green": "blue", "blue": "yellow", "yellow": "white", "white": "red"}
SHAPE_SWAP = {"circle": "square", "square": "triangle", "triangle": "circle"}
SIZE_SWAP = {"small": "large", "large": "small"}


# --------------------------------------------------------------------------- samples


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


# --------------------------------------------------------------------------- pool


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


# --------------------------------------------------------------------------- caption pairs


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
