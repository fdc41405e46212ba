"""DVC stage ``prepare``: (generate the shapes dataset, then) ingest the pool.

    python -m stages.prepare --params params.yaml --shapes-dir data/shapes --out data/pool

``data.source: shapes`` writes the embedded dataset to ``--shapes-dir`` and ingests its
``train.json`` against that folder - the same path user data takes. ``data.source: llava``
ingests ``data.annotations`` with images under ``data.image_dir`` (``--shapes-dir`` is then
left empty, so the stage's declared outputs still exist).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from selfilter import console
from selfilter.config import ConfigError, load_section
from selfilter.data.config import DataConfig
from selfilter.data.ingest import AnnotationsError, run_ingest
from selfilter.data.shapes import write_dataset, write_tree
from stages._common import StageParser


def main(argv: list[str] | None = None) -> int:
    console.setup()
    parser = StageParser("stages.prepare", __doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shapes-dir", required=True, help="where the shapes dataset is generated")
    parser.add_argument("--out", required=True, help="ingest output folder (records.jsonl, ...)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_section("data", DataConfig, args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    if cfg.source == "shapes":
        if Path(cfg.image_dir) != Path(args.shapes_dir):
            # later stages read images from data.image_dir: they would not find the shapes images
            print(f"error: {args.params}: data.image_dir is {cfg.image_dir!r} but the shapes dataset is "
                  f"generated to {args.shapes_dir!r}; set data.image_dir to {args.shapes_dir!r}", file=sys.stderr)
            return 2
        meta = write_dataset(args.shapes_dir, cfg.shapes, progress=not args.no_progress)
        print(f"prepare: shapes {meta['pool']} samples {meta['kinds']}, bench {meta['bench']} -> {args.shapes_dir}")
        annotations, image_dir = Path(args.shapes_dir) / "train.json", Path(args.shapes_dir)
    else:
        write_tree(args.shapes_dir, {})
        annotations, image_dir = Path(cfg.annotations), Path(cfg.image_dir)  # type: ignore[arg-type]
    try:
        s = run_ingest(annotations, image_dir, args.out, max_pixels=cfg.max_image_pixels,
                       progress=not args.no_progress, workers=cfg.ingest_workers)
    except AnnotationsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"prepare: ingested {s['input']} records, kept {s['kept']}, rejected {s['rejected']} "
          f"{s['by_reason']} -> {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
