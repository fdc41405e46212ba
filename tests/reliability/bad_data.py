"""A LLaVA-format pool with bad records of every reject kind planted at known positions.

``make_pool`` writes ``n`` records (JSON array) and an image folder; about ``bad_share`` of the
records are bad, spread evenly over every code in ``selfilter.data.ingest.REASONS``, each bad
record with a file of its own (so the per-path cache cannot hide one). Returns the ground truth:
``{index: reason}`` for every bad record, computed from what was planted, not by ingest.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from selfilter.data.ingest import REASONS

MAX_PIXELS = 700 * 700  # the run's limit: good images are 32x32 (or COCO-sized), "too large" 800x800


def _image(width: int, height: int, seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    # smooth content (a gradient plus a little noise) compresses like a photo, not like static
    base = np.add.outer(np.arange(height), np.arange(width))[..., None] * np.array([1, 2, 3]) % 256
    pixels = (base + rng.integers(0, 16, (height, width, 3))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 85}))
    return buf.getvalue()


def _conv(i: int) -> list[dict]:
    return [{"from": "human", "value": f"<image>\nWhat is in picture {i}?"}, {"from": "gpt", "value": "A shape."}]


def make_pool(root: Path, n: int = 50_000, bad_share: float = 0.05, unique_images: float = 0.7,
              photo_size: bool = False, seed: int = 0) -> tuple[Path, Path, dict[int, str]]:
    """``photo_size``: good images are 640x480 JPEGs (COCO's typical size) instead of 32x32 PNGs."""
    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    (images / "good").mkdir(parents=True, exist_ok=True)
    (images / "bad").mkdir(exist_ok=True)
    outside = root / "outside.png"
    outside.write_bytes(_image(32, 32, 1))
    rng = np.random.default_rng(seed)
    kinds = list(REASONS)
    bad_idx = rng.choice(n, size=int(n * bad_share), replace=False)
    truth = {int(i): kinds[k % len(kinds)] for k, i in enumerate(sorted(bad_idx))}
    n_unique = max(1, int(n * unique_images))
    # a handful of distinct good images, each written under many names: writing is not what we time
    blobs = [_image(640, 480, s, "JPEG") if photo_size else _image(32, 32, s) for s in range(16)]
    for j in range(n_unique):
        (images / "good" / f"{j}.png").write_bytes(blobs[j % len(blobs)])
    big, cut = _image(800, 800, 2), _image(300, 300, 3)
    records: list = []
    for i in range(n):
        reason = truth.get(i)
        rec = {"id": f"r{i}", "image": f"good/{int(rng.integers(n_unique))}.png", "conversations": _conv(i)}
        bad = f"bad/{i}.png"
        if reason is None:
            if i % 20 == 0:
                del rec["image"]  # text-only records are kept
        elif reason == "not_an_object":
            rec = [rec]
        elif reason == "conversations_missing":
            del rec["conversations"]
        elif reason == "conversations_not_list":
            rec["conversations"] = "USER: hi ASSISTANT: hello"
        elif reason == "conversations_empty":
            rec["conversations"] = []
        elif reason == "turn_not_object":
            rec["conversations"] = ["hi", "hello"]
        elif reason == "unknown_role":
            rec["conversations"][0]["from"] = "user"
        elif reason == "value_not_string":
            rec["conversations"][1]["value"] = 7
        elif reason == "no_answer_turn":
            rec["conversations"] = rec["conversations"][:1]
        elif reason == "answer_empty":
            rec["conversations"][1]["value"] = " \n\t "  # whitespace only: nothing to learn from
        elif reason == "image_placeholder_multiple":
            rec["conversations"][1]["value"] = "<image> and <image>"
        elif reason == "image_path_invalid":
            rec["image"] = ["a.png"] if i % 2 else ""
        elif reason == "image_path_absolute":
            rec["image"] = str(outside)
        elif reason == "image_path_escapes":
            rec["image"] = "good/../../outside.png"
        elif reason == "image_symlink_outside":
            os.symlink(outside, images / bad)
            rec["image"] = bad
        elif reason == "image_missing":
            rec["image"] = f"good/missing-{i}.png"
        elif reason == "image_not_file":
            (images / bad).mkdir()
            rec["image"] = bad
        elif reason == "image_empty":
            (images / bad).write_bytes(b"")
            rec["image"] = bad
        elif reason == "image_unreadable":
            (images / bad).write_bytes(b"not an image, just text\n" * 4)
            rec["image"] = bad
        elif reason == "image_truncated":
            (images / bad).write_bytes(cut[: len(cut) // 2])
            rec["image"] = bad
        elif reason == "image_too_large":
            (images / bad).write_bytes(big)
            rec["image"] = bad
        else:  # pragma: no cover - a new reject code needs a planted example here
            raise AssertionError(f"no bad record planted for {reason}")
        records.append(rec)
    annotations = root / "train.json"
    annotations.write_text(json.dumps(records))
    return annotations, images, truth
