"""judge stage: a 0-10 quality rating of every pool record (Self-Filter scores, Alpagasus).

    python -m stages.judge --params params.yaml --records data/pool/records.jsonl \
        [--scenes data/pool/scenes.jsonl] [--source data/pool/source.json] --out judge

With ``--source``, the pool's ``source.json`` says whether the data has scene annotations. A
backend that needs them (the offline annotation judge) on data without them is **left out**: one
line says so and how to fix it, ``ratings.parquet`` has no rows and ``usage.json`` holds
``"left_out": <reason>`` - never a constant rating (the methods that read ratings are then left
out too, with that reason).

Outputs (OUT): ratings.parquet (uid, rating, parsed), usage.json (calls, cache hits, tokens;
a DVC metrics file for the cost report), and a sidecar. Replies are cached under
judge.cache_dir (not an out), so a rerun after a failure repeats no call.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from selfilter import needs
from selfilter.config import load_section
from selfilter.data.records import load_records
from selfilter.data.source import read_source
from selfilter.io import read_jsonl, write_json, write_parquet, write_sidecar
from selfilter.judge import build_backend, judge_records
from selfilter.judge.annotation import index_scenes
from selfilter.judge.config import JudgeConfig
from selfilter.judge.run import ratings_table
from stages._common import StageParser, run_stage

log = logging.getLogger("judge")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--records", required=True, help="records.jsonl from ingest")
    p.add_argument("--scenes", help="scene annotations (jsonl keyed by 'image'); required by the annotation backend")
    p.add_argument("--source", help="the pool's source.json: whether --scenes holds annotations at all")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    return run_stage("judge", _run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("judge", JudgeConfig, args.params)
    has_scenes = read_source(args.source).scenes if args.source else bool(args.scenes)
    reason = needs.judge_missing(cfg.backend, has_scenes)
    if reason:
        print(needs.line("judge", reason) + " (so are alpagasus and the stage-1 scores setting)")
        out = Path(args.out)
        write_parquet(out / "ratings.parquet", ratings_table([], []))
        write_json(out / "usage.json", {"left_out": reason, "requests": 0, "cache_hits": 0, "failed": 0})
        return 0
    records = load_records(args.records)
    if args.scenes and has_scenes:
        scenes = index_scenes(read_jsonl(args.scenes), source=args.scenes)
    elif cfg.backend == "annotation":
        raise ValueError("judge.backend=annotation needs --scenes (the scene annotations)")
    else:
        scenes = {}
    backend = build_backend(cfg)
    started = time.perf_counter()
    table, usage = judge_records(records, scenes, backend, progress=not args.no_progress)
    usage["seconds"] = round(time.perf_counter() - started, 3)

    if len(table) and not table["parsed"].any():
        # every reply unparseable: the table would be one constant (the midpoint) - never pass that on
        raise ValueError(f"none of the {len(table)} judge replies held a rating (0-10 on the first line); "
                         f"check judge.openai.model and the endpoint's replies (cached under {cfg.cache_dir})")
    failed = usage.get("failed", 0)
    if len(records) and failed / len(records) > cfg.max_failed_fraction:
        write_json(Path(args.out) / "usage.json", usage)
        raise ValueError(f"{failed} of {len(records)} judge requests failed after retries "
                         f"(judge.max_failed_fraction={cfg.max_failed_fraction}); rerun to retry them "
                         "(answered prompts come from the cache)")
    out = Path(args.out)
    write_parquet(out / "ratings.parquet", table)
    write_json(out / "usage.json", usage)
    inputs = {"records": args.records, **({"scenes": args.scenes} if args.scenes else {})}
    write_sidecar(out / "ratings.parquet", params=cfg, inputs=inputs, **usage)
    log.info("%d records rated (mean %.2f); %d unparseable -> mean; %d requests, %d cache hits",
             len(table), usage["mean_rating"] or 0, usage["n_unparsed"], usage["requests"], usage["cache_hits"])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = StageParser("stages.judge", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
