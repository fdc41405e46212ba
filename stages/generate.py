"""DVC stage ``generate``: the embedded shapes dataset, when the source is the generator.

    python -m stages.generate --params params.yaml --out data/shapes

``data.source: shapes`` writes the generated dataset to OUT: a LLaVA-format ``train.json`` and
its images (what ``prepare`` then ingests, exactly as it ingests your files), ``scenes.jsonl``
(scene annotations, for the offline annotation judge), ``imperfections.jsonl`` (hidden labels,
for the ``oracle_clean`` control and the report) and ``bench/`` (the shapes benchmark).
``data.source: llava`` writes only ``not_generated.json``: your data needs no generator, and the
stage exists for every source so the graph is the same.
"""
from __future__ import annotations

import json
import sys

from selfilter import console
from selfilter.config import ConfigError, load_section
from selfilter.data.config import DataConfig
from selfilter.data.shapes import write_dataset, write_tree
from stages._common import StageParser


def main(argv: list[str] | None = None) -> int:
    console.setup()
    parser = StageParser("stages.generate", __doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="where the shapes dataset is generated (data/shapes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        cfg = load_section("data", DataConfig, args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.source != "shapes":
        marker = {"source": cfg.source, "generated": False,
                  "why": f"data.source is {cfg.source}: prepare ingests {cfg.annotations}; nothing to generate"}
        write_tree(args.out, {"not_generated.json": (json.dumps(marker, indent=2) + "\n").encode()})
        print(f"generate: data.source is {cfg.source}: nothing to generate -> {args.out}/not_generated.json")
        return 0
    meta = write_dataset(args.out, cfg.shapes, progress=not args.no_progress)
    print(f"generate: shapes {meta['pool']} samples {meta['kinds']}, bench {meta['bench']} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
