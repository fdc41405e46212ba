"""The embedded benchmarks as local datasets lmms-eval loads offline.

``data/shapes/bench/<name>.jsonl`` rows (``image`` = a path relative to the bench folder) become
parquet files whose ``image`` column is a ``datasets.Image`` (bytes embedded), the form
lmms-eval's hub datasets have; a task then reads them with ``dataset_path: parquet`` and
``dataset_kwargs.data_files``. No hub, no network.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfilter.io import atomic_path, read_jsonl

# task name -> (bench file, required fields). The shapes tasks live in evaluation/tasks/shapes.
SHAPES_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "shapes_vqa": ("vqa.jsonl", ("question_id", "image", "question", "answer", "qtype")),
    "shapes_pope": ("pope.jsonl", ("question_id", "image", "question", "answer", "split")),
    "shapes_count": ("count.jsonl", ("question_id", "image", "question", "answer")),
    "shapes_desc": ("desc.jsonl", ("question_id", "image", "question", "objects")),
    "shapes_binding": ("binding.jsonl", ("question_id", "image", "question", "answer", "qtype")),
}


def read_bench(bench_dir: str | Path, task: str) -> list[dict[str, Any]]:
    """Rows of one benchmark file, checked: every required field present, every image found."""
    bench_dir = Path(bench_dir)
    try:
        filename, required = SHAPES_TASKS[task]
    except KeyError:
        raise ValueError(f"unknown shapes task '{task}'; valid: {', '.join(SHAPES_TASKS)}") from None
    path = bench_dir / filename
    if not path.exists():
        raise FileNotFoundError(f"{path}: benchmark file not found (run the prepare stage)")
    rows = read_jsonl(path)
    for lineno, row in enumerate(rows, 1):
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        if not (bench_dir / row["image"]).is_file():
            raise FileNotFoundError(f"{path}:{lineno}: image not found: {bench_dir / row['image']}")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _pope_as_lmms_lab(row: dict[str, Any]) -> dict[str, Any]:
    """A POPE-style row in the schema of lmms-eval's own ``pope`` task (lmms-lab/POPE columns)."""
    return {"question_id": str(row["question_id"]), "question": row["question"],
            "answer": row["answer"], "image_source": row["image"], "category": row["split"],
            "image": row["image"]}


# Datasets in the schema of lmms-eval's built-in tasks, served from our data (offline).
BUILTIN_TASKS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "pope": ("shapes_pope", _pope_as_lmms_lab),
}


def write_image_parquet(rows: list[dict[str, Any]], image_root: str | Path, path: str | Path) -> Path:
    """Write ``rows`` to parquet with ``image`` (a path under ``image_root``) as embedded image bytes."""
    import datasets

    image_root = Path(image_root)
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    # The bytes go into the file (a path alone would be resolved against lmms-eval's working
    # directory); the relative path is kept for reference.
    columns["image"] = [{"bytes": (image_root / r["image"]).read_bytes(), "path": r["image"]} for r in rows]
    ds = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    path = Path(path)
    with atomic_path(path, suffix=".parquet") as tmp:
        # to_parquet records the Image feature in the schema metadata, so load_dataset decodes it.
        ds.to_parquet(str(tmp))
    return path


def build_bench_datasets(bench_dir: str | Path, out_dir: str | Path, tasks: list[str]) -> dict[str, Path]:
    """Build ``out_dir/<task>.parquet`` for each shapes task (and built-in task served from the
    shapes data, e.g. ``pope``) in ``tasks``; other task names (hub benchmarks) are skipped.
    Returns {task: parquet path}."""
    out_dir = Path(out_dir)
    built = {}
    for task in tasks:
        if task in SHAPES_TASKS:
            rows = read_bench(bench_dir, task)
        elif task in BUILTIN_TASKS:
            source, convert = BUILTIN_TASKS[task]
            rows = [convert(r) for r in read_bench(bench_dir, source)]
        else:
            continue
        built[task] = write_image_parquet(rows, bench_dir, out_dir / f"{task}.parquet")
    return built
