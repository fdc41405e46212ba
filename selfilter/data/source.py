"""What a data source brings besides its records: ``source.json`` in the pool folder.

The ``prepare`` stage writes it once, and every later stage asks it instead of knowing which
source made the pool: the graph is the same for the embedded generator and for your files.

    {"source": "shapes" | "llava",
     "annotations": path, "image_dir": path,
     "scenes": bool,          # POOL/scenes.jsonl holds scene annotations (annotation judge)
     "hidden_labels": bool,   # POOL/hidden.jsonl holds imperfection labels (oracle_clean, report)
     "benchmark": {"kind": "shapes", "dir": "data/shapes/bench"}
                | {"kind": "heldout", "records": "POOL/heldout.jsonl", "images": n, "records_n": n}
                | {"kind": "none"}}

``scenes.jsonl``, ``hidden.jsonl`` and ``heldout.jsonl`` exist in the pool folder only when the
data has them; ``files`` holds their sha256, so a DVC stage that depends on ``source.json``
reruns when one of them changes (and no stage depends on a file that may not exist).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfilter.io import read_json, write_json

SOURCE_FILE = "source.json"
SCENES_FILE = "scenes.jsonl"
HIDDEN_FILE = "hidden.jsonl"
HELDOUT_FILE = "heldout.jsonl"


@dataclass(frozen=True)
class SourceInfo:
    source: str
    annotations: str
    image_dir: str
    scenes: bool
    hidden_labels: bool
    benchmark: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    files: dict[str, str] = field(default_factory=dict)  # side file name -> sha256

    @property
    def benchmark_kind(self) -> str:
        return str(self.benchmark.get("kind", "none"))


def write_source(pool_dir: str | Path, info: SourceInfo) -> Path:
    path = Path(pool_dir) / SOURCE_FILE
    write_json(path, asdict(info))
    return path


def read_source(path: str | Path) -> SourceInfo:
    """``source.json`` (or the pool folder holding it)."""
    path = Path(path)
    if path.name != SOURCE_FILE:  # the pool folder
        path = path / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the prepare stage: dvc repro prepare)")
    data = read_json(path)
    try:
        return SourceInfo(**data)
    except TypeError as e:
        raise ValueError(f"{path}: not a source manifest ({e})") from None
