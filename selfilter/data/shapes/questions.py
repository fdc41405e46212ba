"""Questions: the generators of (question, answer) pairs about a scene (``QUESTION_TYPES``), which
types the pool, the benchmarks and the diagnostic task ask, and how a benchmark question gets a
balanced answer. Shared by the training pool and the benchmarks, so both ask the same way.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

from selfilter.data.shapes.scene import COLORS, COLS, ROWS, SHAPES, SIZES, Obj, refer

# --------------------------------------------------------------------------- vocabulary

SHORT_ANSWER = "Answer with a single word."
IMAGE_TOKEN = "<image>"
DETAIL_PROMPTS = (
    "Describe the image in detail.",
    "Give a detailed description of the image.",
    "What is in this image? Describe every object.",
)
BENCH_DETAIL_PROMPT = DETAIL_PROMPTS[0]

QA = tuple[str, str]  # (question text without suffix/placeholder, answer)


# --------------------------------------------------------------------------- language


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

def to_conversations(qas: Sequence[QA]) -> list[dict[str, str]]:
    turns = []
    for i, (q, a) in enumerate(qas):
        turns.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{q}" if i == 0 else q})
        turns.append({"from": "gpt", "value": a})
    return turns
