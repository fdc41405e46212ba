"""Image-text pairs and probe questions from any pool, for building a base model offline.

The tiny base (``base.source: tiny``) learns to see from (image, caption) pairs - CLIP's
contrastive pretraining and LLaVA's projector alignment - and to speak from the data's text.
The shapes generator draws fresh captioned scenes; any other pool brings its own pairs: each
image record's picture with its first answer (the answer describes what the question asks about
the picture, the closest thing a VIT record has to a caption). Probe questions come from the
held-out benchmark records, whose pictures the base never sees.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfilter.data.records import IMAGE_PLACEHOLDER, load_image


def first_exchange(record: dict[str, Any]) -> tuple[str, str] | None:
    """``(question, answer)`` of the first human turn followed by a gpt turn, ``<image>`` removed."""
    conv = record.get("conversations") or []
    for a, b in zip(conv, conv[1:]):
        if a.get("from") == "human" and b.get("from") == "gpt":
            return a["value"].replace(IMAGE_PLACEHOLDER, "").strip(), b["value"].strip()
    return None


def pool_caption_pairs(records: Sequence[dict[str, Any]], image_dir: str | Path, n: int, seed: int) -> list[tuple]:
    """``n`` (PIL image, text) pairs from the pool's image records, in a seeded order; a pool with
    fewer image records than ``n`` is cycled (each pass reshuffled), as an epoch would."""
    usable = [(r["image"], ex[1]) for r in records if "image" in r and (ex := first_exchange(r))]
    if not usable or n <= 0:
        return []
    rng = random.Random(f"{seed}:pool-pairs")
    order: list[int] = []
    while len(order) < n:
        block = list(range(len(usable)))
        rng.shuffle(block)
        order.extend(block)
    cache: dict[str, Any] = {}
    out = []
    for i in order[:n]:
        rel, text = usable[i]
        if rel not in cache:
            cache[rel] = load_image(image_dir, rel)
        out.append((cache[rel], text))
    return out


def heldout_questions(records: Sequence[dict[str, Any]], image_dir: str | Path, n: int) -> list[tuple]:
    """The first ``n`` held-out image records as ``(PIL image, question, answer)``."""
    out = []
    for r in records:
        if len(out) >= n:
            break
        ex = first_exchange(r)
        if "image" in r and ex:
            out.append((load_image(image_dir, r["image"]), ex[0], ex[1]))
    return out
