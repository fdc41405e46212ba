from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image



@pytest.fixture(scope="session")
def clip_dir(tiny_clip_dir):
    return tiny_clip_dir


def _conv(q: str, a: str, image: bool = True):
    return [{"from": "human", "value": ("<image>\n" if image else "") + q}, {"from": "gpt", "value": a}]


@pytest.fixture
def pool(tmp_path):
    """7 records: 5 with images (one palette PNG), one text-only, one too long for 16 tokens."""
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    records = []
    for i in range(5):
        name = f"images/{i}.png"
        im = Image.fromarray(rng.integers(0, 255, (24 + i, 40, 3), dtype=np.uint8))
        (im.convert("P") if i == 2 else im).save(tmp_path / name)
        records.append({"id": f"s{i}", "image": name, "conversations": _conv("what colour is the circle ?", "red .")})
    records.append({"id": "text", "conversations": _conv("how many squares are there ?", "two .", image=False)})
    records.append({"id": "long", "image": "images/0.png",
                    "conversations": _conv("describe the image .", " ".join(["a green triangle"] * 40))})
    for uid, r in enumerate(records):
        r["uid"] = uid
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"records": records, "path": path, "image_dir": tmp_path}
