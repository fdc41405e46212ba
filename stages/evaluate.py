"""evaluate stage: every fine-tuned checkpoint of one method through lmms-eval.

    python -m stages.evaluate --params params.yaml --method NAME --runs runs/NAME \
        --bench data/shapes/bench --out evals/NAME

For each checkpoint ``runs/NAME/<run>/`` (e.g. ``b0.15_s0``) writes ``evals/NAME/<run>/``:
``results.json`` (lmms-eval's results file under a stable name), ``samples_<task>.jsonl``
(its per-sample log), ``lmms_eval.log`` (its warnings/errors) and ``metrics.json``
(``{"task/metric": value}``, with a ``.meta.json`` sidecar). Then ``evals/NAME/summary.json``
(every run's metrics) - written last, it marks the stage complete.
Tasks come from ``evaluate.tasks``; the shapes tasks (and lmms-eval's own ``pope``) read local
parquet files built from ``--bench`` in a temporary folder; other task names (the GPU profile's
``mme``, ``textvqa_val``, ...) load their datasets the way lmms-eval does.
A run that lmms-eval silently botched (swallowed generation errors, empty or missing outputs)
fails the stage (selfilter.evaluation.guard).
"""
from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from selfilter.config import ConfigError, load_section
from selfilter.evaluation.config import EvaluateConfig
from selfilter.evaluation.guard import EvaluationError
from selfilter.io import file_digest, write_json, write_sidecar


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--method", required=True, help="selection method whose checkpoints to evaluate")
    p.add_argument("--runs", required=True, help="runs/<method>: one checkpoint folder per (budget, seed)")
    p.add_argument("--bench", required=True, help="data/shapes/bench: the embedded benchmarks")
    p.add_argument("--out", required=True, help="output folder, evals/<method>")


def _run(args: argparse.Namespace) -> int:
    # Imported here so `--help` and argument errors stay instant.
    from selfilter.evaluation.bench import build_bench_datasets
    from selfilter.evaluation.lmms import LmmsEvaluator
    from selfilter.evaluation.runner import Job, find_checkpoints, run_jobs

    cfg = load_section("evaluate", EvaluateConfig, args.params)
    checkpoints = find_checkpoints(args.runs)
    out = Path(args.out)
    if out.exists():  # results of a previous grid must not survive next to this one
        shutil.rmtree(out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="selfilter-eval-") as tmp:
        data_files = build_bench_datasets(args.bench, Path(tmp) / "bench", cfg.tasks)
        make_evaluator = functools.partial(
            LmmsEvaluator, cfg.tasks, cfg.include_path, data_files=data_files, limit=cfg.limit,
            device=cfg.device, dtype=cfg.dtype, model=cfg.model, cache_dir=Path(tmp) / "hf_datasets")
        jobs = [Job(c.name, c, out / c.name) for c in checkpoints]
        metrics = run_jobs(jobs, make_evaluator, workers=cfg.workers, torch_threads=cfg.torch_threads)
    wall = time.perf_counter() - t0
    for job in jobs:
        write_json(job.output_dir / "metrics.json", metrics[job.name])
        write_sidecar(job.output_dir / "metrics.json", params=cfg, method=args.method,
                      checkpoint=str(job.checkpoint), checkpoint_sha256=file_digest(job.checkpoint))
    write_json(out / "summary.json", {
        "method": args.method, "tasks": cfg.tasks, "wall_seconds": round(wall, 2),
        "bench_sha256": file_digest(args.bench), "runs": metrics})
    print(f"evaluate: {args.method}: {len(jobs)} checkpoint(s), tasks {', '.join(cfg.tasks)}, "
          f"{wall:.1f}s -> {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, ConfigError, EvaluationError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
