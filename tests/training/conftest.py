"""A tiny pool (coloured shapes, one text-only record in seven) encoded for the tiny LLaVA."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30), "yellow": (230, 220, 30)}
SHAPES = ("circle", "square")


def make_pool(root: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` LLaVA-format records with ``uid``s; images written under ``root/images``."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        if i % 7 == 3:
            records.append({"id": f"t{i}", "uid": i, "conversations": [
                {"from": "human", "value": "Which is a shape?"}, {"from": "gpt", "value": f"A {shape}."}]})
            continue
        im = Image.new("RGB", (32, 32), (255, 255, 255))
        draw = ImageDraw.Draw(im)
        (draw.ellipse if shape == "circle" else draw.rectangle)([6, 6, 26, 26], fill=COLORS[color])
        rel = f"images/{i}.png"
        im.save(root / rel)
        records.append({"id": f"s{i}", "uid": i, "image": rel, "conversations": [
            {"from": "human", "value": f"<image>\nWhat color is the {shape}?"},
            {"from": "gpt", "value": f"The {shape} is {color}."}]})
    return records


@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return root, make_pool(root, 40)


@pytest.fixture(scope="session")
def encoded_pool(tiny_llava_dir, pool):
    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.models.loading import load_vlm

    root, records = pool
    _, processor = load_vlm(tiny_llava_dir)
    encoder = ChatEncoder(processor, max_length=64)
    return EncodedDataset(records, root, encoder, progress=False), encoder


@pytest.fixture(scope="session")
def accelerator():
    from selfilter.training.loop import make_accelerator

    return make_accelerator("cpu")
