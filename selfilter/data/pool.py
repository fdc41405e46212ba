"""The pool every later stage reads, from any source: ingest + side files + the benchmark split.

``build_pool`` validates the annotations (``selfilter.data.ingest``: every record kept or rejected
with its reason), takes the side files the source has (the generator's scene annotations and
hidden labels, or yours from ``data.scenes`` / ``data.hidden_labels``), decides the benchmark
(the generator's shapes benchmark, or a held-out split of your records by picture) and writes

    OUT/records.jsonl    the selectable pool (kept records minus the held-out ones)
    OUT/heldout.jsonl    the benchmark records (never selectable), when the benchmark is a split
    OUT/rejected.jsonl   every rejected record with its reason
    OUT/scenes.jsonl, OUT/hidden.jsonl   the side files, when the data has them
    OUT/summary.json     counts: input, kept, rejected by reason, duplicate ids, held out
    OUT/source.json      what the data has (selfilter.data.source)

With the embedded default (source shapes, its own benchmark) ``records.jsonl`` is exactly what
ingest alone wrote before the held-out split existed: nothing is held out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from selfilter.data.config import DataConfig
from selfilter.data.ingest import AnnotationsError, ingest_records, read_annotations
from selfilter.data.source import HELDOUT_FILE, HIDDEN_FILE, SCENES_FILE, SourceInfo, write_source
from selfilter.data.split import heldout_images, split_heldout
from selfilter.io import file_digest, read_jsonl, write_bytes, write_json, write_jsonl, write_sidecar

SIDE_FILES = {  # key -> (generator's file, pool file, required fields of a row)
    "scenes": ("scenes.jsonl", SCENES_FILE, ("image", "objects")),
    "hidden_labels": ("imperfections.jsonl", HIDDEN_FILE, ("id", "kind")),
}


def _side_file(path: Path, key: str, required: tuple[str, ...]) -> bytes:
    """The bytes of a side file, after checking every row (a bad row names file and line)."""
    if not path.is_file():
        raise AnnotationsError(f"{path}: data.{key} file not found")
    try:
        rows = read_jsonl(path)
    except ValueError as e:
        raise AnnotationsError(f"{path}: data.{key}: {e}") from None
    for lineno, row in enumerate(rows, 1):
        missing = [k for k in required if not isinstance(row, dict) or k not in row]
        if missing:
            raise AnnotationsError(f"{path}:{lineno}: data.{key} row lacks {', '.join(missing)}")
    return path.read_bytes()


def build_pool(cfg: DataConfig, generated: str | Path, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Ingest, split, write ``out``; return the summary (also ``out/summary.json``)."""
    generated, out = Path(generated), Path(out)
    annotations, image_dir = Path(cfg.annotations_path), Path(cfg.image_dir)
    if not image_dir.is_dir():
        raise AnnotationsError(f"{image_dir}: image folder not found (data.image_dir)")
    result = ingest_records(read_annotations(annotations), image_dir, max_pixels=cfg.max_image_pixels,
                            progress=progress, workers=cfg.ingest_workers)
    side: dict[str, bytes] = {}
    for key, (gen_name, _, required) in SIDE_FILES.items():
        path = generated / gen_name if cfg.source == "shapes" else (Path(getattr(cfg, key)) if getattr(cfg, key) else None)
        side[key] = _side_file(path, key, required) if path is not None else b""

    kind = cfg.benchmark
    if kind == "auto":
        kind = "shapes" if cfg.source == "shapes" else "heldout"
    pool, heldout = result.kept, []
    if kind == "shapes":
        benchmark: dict[str, Any] = {"kind": "shapes", "dir": str(generated / "bench")}
    elif kind == "heldout":
        h = cfg.heldout
        held = heldout_images(result.kept, h.fraction, h.max_images, h.min_images, h.seed)
        pool, heldout = split_heldout(result.kept, held)
        benchmark = {"kind": "heldout", "records": str(out / HELDOUT_FILE), "images": len(held),
                     "records_n": len(heldout), "seed": h.seed, "fraction": h.fraction}
    else:
        benchmark = {"kind": "none"}

    summary = {**result.summary(), "pool": len(pool), "heldout": len(heldout),
               "annotations": str(annotations), "image_dir": str(image_dir), "max_image_pixels": cfg.max_image_pixels}
    # prepare's output folder is cleared by DVC before it runs; by hand, stale side files must go
    for name in (HELDOUT_FILE, *(v[1] for v in SIDE_FILES.values())):
        (out / name).unlink(missing_ok=True)
    write_jsonl(out / "records.jsonl", pool)
    files: dict[str, str] = {}
    if heldout:
        write_jsonl(out / HELDOUT_FILE, heldout)
        files[HELDOUT_FILE] = file_digest(out / HELDOUT_FILE)
    write_jsonl(out / "rejected.jsonl", result.rejected)
    for key, (_, pool_name, _) in SIDE_FILES.items():
        if side[key]:
            write_bytes(out / pool_name, side[key])
            files[pool_name] = file_digest(out / pool_name)
    write_json(out / "summary.json", summary)
    write_source(out, SourceInfo(source=cfg.source, annotations=str(annotations), image_dir=str(image_dir),
                                 scenes=bool(side["scenes"]), hidden_labels=bool(side["hidden_labels"]),
                                 benchmark=benchmark, files=files))
    write_sidecar(out / "records.jsonl", params={"max_image_pixels": cfg.max_image_pixels, "image_dir": str(image_dir)},
                  inputs={"annotations": annotations}, kept=len(result.kept), rejected=len(result.rejected),
                  heldout=len(heldout))
    return summary
