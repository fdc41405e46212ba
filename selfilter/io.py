"""Atomic, self-describing outputs.

Every artifact the pipeline writes goes through here: a temp file in the destination folder,
fsync, then ``os.replace`` - so a crash leaves either the old file or the new one, never half
of one. ``write_sidecar`` records what produced an artifact (params, input digests, counts).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it over ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: PathLike, rows: Iterable[Any]) -> int:
    """Write one JSON object per line, atomically; return the number of rows."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=_json_default))
                f.write("\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
    return n


def read_jsonl(path: PathLike) -> list[Any]:
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def read_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_npy(path: PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def write_parquet(path: PathLike, df) -> None:
    """Write a pandas DataFrame to parquet atomically."""
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)


def file_digest(path: PathLike, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, or of every file under a folder (sorted relative paths + contents)."""
    path = Path(path)
    h = hashlib.new(algo)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def sidecar_path(path: PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def write_sidecar(path: PathLike, *, params: Any = None, inputs: dict[str, PathLike] | None = None,
                  **extra: Any) -> Path:
    """Write ``<path>.meta.json``: the params, the digests of the inputs, and any counts given."""
    meta: dict[str, Any] = {"artifact": Path(path).name}
    if params is not None:
        meta["params"] = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
    if inputs:
        meta["inputs"] = {name: {"path": str(p), "sha256": file_digest(p)} for name, p in inputs.items()}
    meta.update(extra)
    out = sidecar_path(path)
    write_json(out, meta)
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
