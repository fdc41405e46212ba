"""Scenes: the vocabulary (colours, shapes, sizes, the 3x3 grid), drawing a scene from a seeded
stream, the held-out split of layouts, rendering to PNG bytes, and the sentences that name a
scene's objects. Everything else in the package is built on these objects (``Obj`` dicts).
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

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

HELD_OUT_MODULUS = 10  # 1 layout key in 10 belongs to the benchmarks

Obj = dict[str, Any]


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
