"""DVC stage ``prepare``: the pool every later stage reads, from any source.

    python -m stages.prepare --params params.yaml --generated data/shapes --out data/pool

Ingests ``data.annotations`` (LLaVA-format JSON or JSONL) with images under ``data.image_dir`` -
the generator's ``data/shapes/train.json`` by default, your files with ``data.source: llava`` -
and writes OUT: ``records.jsonl`` (the selectable pool, each record with its ``uid``),
``rejected.jsonl`` (every rejected record with its reason), ``heldout.jsonl`` (the benchmark
split of your records, never selectable), ``scenes.jsonl`` / ``hidden.jsonl`` (side files, empty
when the data has none), ``summary.json`` and ``source.json`` (what the data has).
"""
from __future__ import annotations

import sys
import time

from selfilter import console
from selfilter.config import ConfigError, load_section
from selfilter.data.config import DataConfig
from selfilter.data.ingest import AnnotationsError
from selfilter.data.split import SplitError
from stages._common import StageParser


def main(argv: list[str] | None = None) -> int:
    console.setup()
    parser = StageParser("stages.prepare", __doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--generated", required=True,
                        help="the generate stage's folder (data/shapes): the shapes source's side files and benchmark")
    parser.add_argument("--out", required=True, help="pool folder (records.jsonl, source.json, ...)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        cfg = load_section("data", DataConfig, args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from selfilter.data.pool import build_pool

    start = time.perf_counter()
    try:
        cfg.check_generated(args.generated)
    except ValueError as e:
        print(f"error: {args.params}: {e}", file=sys.stderr)
        return 2
    try:
        s = build_pool(cfg, args.generated, args.out, progress=not args.no_progress)
    except (AnnotationsError, SplitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    held = f", {s['heldout']} held out as the benchmark" if s["heldout"] else ""
    print(f"prepare: ingested {s['input']} records, kept {s['kept']}, rejected {s['rejected']} "
          f"{s['by_reason']}{held} -> {args.out} ({time.perf_counter() - start:.1f} s)")
    dup = s["duplicate_ids"]
    if dup["ids"]:
        print(f"prepare: {dup['ids']} id(s) shared by {dup['records']} kept records (kept: uid is the identity), "
              f"e.g. {', '.join(dup['examples'])}")
    if s["rejected"]:
        print(f"prepare: the rejected records and why: {args.out}/rejected.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
