"""The held-out benchmark of a dataset that brings none: a seeded split by picture.

Whole pictures are held out: every record of a held-out image leaves the pool, so no benchmark
picture is trained on or selected (LLaVA-Instruct has several conversations per COCO image; a
split by record would leak). Text-only records always stay in the pool (the benchmark tasks
show the model a picture).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class SplitError(ValueError):
    """The data cannot give a benchmark of the requested size; the message says what to change."""


def heldout_images(records: Sequence[dict[str, Any]], fraction: float, max_images: int, min_images: int,
                   seed: int) -> set[str]:
    """The image paths to hold out: ``min(max_images, round(fraction * distinct images))`` of
    them, drawn with ``seed`` from the sorted distinct paths (the draw does not depend on the
    records' order)."""
    images = sorted({r["image"] for r in records if "image" in r})
    n = min(max_images, int(round(fraction * len(images))))
    if n < min_images:
        raise SplitError(
            f"a held-out benchmark of {n} picture(s) ({fraction:g} of {len(images)} distinct images, at most "
            f"{max_images}) is below data.heldout.min_images={min_images}: raise data.heldout.fraction, "
            f"bring more images, or set data.benchmark: none and name evaluate.tasks yourself")
    order = np.random.default_rng(seed).permutation(len(images))
    return {images[i] for i in order[:n]}


def split_heldout(records: Sequence[dict[str, Any]], held: set[str]) -> tuple[list[dict], list[dict]]:
    """``(pool, heldout)``, each in input order; a record is held out when its image is."""
    pool, heldout = [], []
    for r in records:
        (heldout if r.get("image") in held else pool).append(r)
    return pool, heldout
