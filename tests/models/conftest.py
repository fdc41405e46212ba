"""Small synthetic caption data for the model tests (independent of the shapes generator)."""
from __future__ import annotations

import random

import pytest
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ["square", "circle"]


def make_pairs(n: int, seed: int, size: int = 32) -> list[tuple[Image.Image, str]]:
    """One coloured square or circle on a grey background, left or right, and its caption."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        color, shape, side = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(["left", "right"])
        im = Image.new("RGB", (size, size), (128, 128, 128))
        d = ImageDraw.Draw(im)
        x0 = 2 if side == "left" else size // 2 + 2
        box = (x0, size // 4, x0 + size // 2 - 4, size // 4 + size // 2 - 4)
        (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLORS[color])
        pairs.append((im, f"a {color} {shape} on the {side}."))
    return pairs


@pytest.fixture(scope="session")
def synthetic_pairs():
    return make_pairs(256, seed=0), make_pairs(64, seed=1)
