"""The output files: every generated file as ``path -> bytes`` (``build_files``: pool, images,
side files, benchmarks), the atomic write of that tree, and the ``selfilter shapes`` command.
Bytes depend on the seed and params only, so the same params give the same files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from selfilter.data.shapes.bench import BENCH_FILES, bench_image, category_stats, generate_bench
from selfilter.data.shapes.pool import generate_pool, pool_records, sample_id, shifted
from selfilter.data.shapes.scene import png_bytes, render_scene

# --------------------------------------------------------------------------- files


def build_files(seed: int, pool_size: int, image_size: int = 32, max_objects: int = 6, *,
                categories: dict[str, float] | None = None, rates: dict[str, float] | None = None,
                bench: dict[str, int] | None = None, progress: bool = False,
                difficulty_skew: float = 0.0) -> dict[str, bytes]:
    """Every output file as ``relative path -> bytes`` (pure: no file system)."""
    pool = generate_pool(seed, pool_size, image_size, max_objects, categories, rates, progress, difficulty_skew)
    records = pool_records(pool)
    files: dict[str, bytes] = {}
    scenes = []
    for rec, s in zip(tqdm(records, desc="shapes images", unit="img", disable=not progress), pool):
        objs = shifted(s.objects, s.shift)
        files[rec["image"]] = png_bytes(render_scene(objs, image_size))
        scenes.append({"image": rec["image"], "objects": objs})
    imperfections = []
    for i, s in enumerate(pool):
        row = {"id": sample_id(i), "kind": s.kind}
        if s.duplicate_of is not None:
            row["duplicate_of"] = sample_id(s.duplicate_of)
        imperfections.append(row)
    b = generate_bench(seed, image_size, max_objects, stats=category_stats(s.objects for s in pool),
                       **(bench or {}))
    for i, objs in enumerate(b.scenes):
        files[f"bench/{bench_image(i)}"] = png_bytes(render_scene(objs, image_size))
    files["train.json"] = _json_bytes(records)
    files["scenes.jsonl"] = _jsonl_bytes(scenes)
    files["imperfections.jsonl"] = _jsonl_bytes(imperfections)
    for name in BENCH_FILES:
        files[f"bench/{name}.jsonl"] = _jsonl_bytes(getattr(b, name))
    return files


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _jsonl_bytes(rows: Iterable[Any]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_tree(out: str | Path, files: dict[str, bytes]) -> None:
    """Replace folder ``out`` with exactly ``files``, atomically: written into a sibling temp
    folder, then swapped in by rename (a crash leaves the old folder or the new one, and no
    stale images from a previous, larger run)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_dataset(out: str | Path, cfg: Any, progress: bool = True) -> dict[str, Any]:
    """Generate from a ``ShapesConfig`` and write it to ``out``; return counts."""
    files = build_files(cfg.seed, cfg.pool_size, cfg.image_size, cfg.max_objects,
                        categories=cfg.categories.model_dump(), rates=cfg.imperfections.model_dump(),
                        bench=cfg.bench.model_dump(), progress=progress, difficulty_skew=cfg.difficulty_skew)
    kinds = Counter(json.loads(line)["kind"] for line in files["imperfections.jsonl"].decode().splitlines())
    meta = {
        "artifact": "shapes",
        "params": cfg.model_dump(mode="json"),
        "pool": cfg.pool_size,
        "kinds": dict(sorted(kinds.items())),
        "bench": {n: files[f"bench/{n}.jsonl"].count(b"\n") for n in BENCH_FILES},
        "train_json_sha256": hashlib.sha256(files["train.json"]).hexdigest(),
    }
    # the sidecar of train.json (selfilter.io.sidecar_path naming), inside the same atomic swap
    files["train.json.meta.json"] = _json_bytes(meta)
    write_tree(out, files)
    return meta


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (replaced), e.g. data/shapes")
    parser.add_argument("--params", default="params.yaml", help="params file (section 'data.shapes')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from selfilter.config import ConfigError, load_section
    from selfilter.data.config import DataConfig

    try:
        cfg = load_section("data", DataConfig, args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = write_dataset(args.out, cfg.shapes, progress=not args.no_progress)
    print(f"shapes: {meta['pool']} samples ({meta['kinds']}), bench {meta['bench']} -> {args.out}")
    return 0
