"""The held-out benchmarks (``bench/*.jsonl``): one fresh held-out scene per question, answers
balanced per type, and POPE's random / popular / adversarial negatives drawn from the training
pool's category statistics (``category_stats``).
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from selfilter.data.shapes.questions import (
    BENCH_DETAIL_PROMPT,
    BINDING_TYPES,
    CATEGORY_KINDS,
    VQA_TYPES,
    balanced_question,
    categories_of,
    category_kind,
    category_question,
    short,
)
from selfilter.data.shapes.scene import COLORS, SHAPES, Obj, sample_split_scene

# --------------------------------------------------------------------------- benchmarks


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
