"""evaluate stage: every fine-tuned checkpoint of every method through lmms-eval.

    python -m stages.evaluate --params params.yaml --runs runs --bench data/shapes/bench \
        --out evals [--method NAME ...]

Methods default to ``select.methods`` in the params. For each finished checkpoint
``RUNS/<method>/<run>/`` (e.g. ``b0.15_s0``; one with ``done.json``) writes
``OUT/<method>/<run>/``: ``results.json`` (lmms-eval's results file under a stable name),
``samples_<task>.jsonl`` (its per-sample log), ``lmms_eval.log`` (its warnings/errors) and
``metrics.json`` (``{"task/metric": value}``) with a ``.meta.json`` sidecar holding the digests
of the checkpoint and of the evaluation settings; a rerun skips runs whose digests match (OUT is
``persist: true`` in dvc.yaml). Then ``OUT/<method>/summary.json`` (every run's metrics).
All checkpoints share ``evaluate.workers`` processes, each loading the tasks once.
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

from selfilter import console
from selfilter.config import ConfigError, load_section
from selfilter.evaluation.config import EvaluateConfig
from selfilter.evaluation.guard import EvaluationError
from selfilter.selection.config import compared_methods
from selfilter.io import file_digest, read_json, sidecar_path, write_json, write_sidecar
from stages._common import StageParser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--method", action="append", dest="methods",
                   help="method whose checkpoints to evaluate (repeatable; default: select.methods in the params)")
    p.add_argument("--runs", required=True, help="runs root: <method>/<run>/ checkpoint folders")
    p.add_argument("--bench", required=True, help="data/shapes/bench: the embedded benchmarks")
    p.add_argument("--out", required=True, help="output root: <method>/<run>/ per checkpoint")


def _run(args: argparse.Namespace) -> int:
    # Imported here so `--help` and argument errors stay instant.
    from selfilter.evaluation.bench import build_bench_datasets
    from selfilter.evaluation.lmms import LmmsEvaluator
    from selfilter.evaluation.runner import Job, find_checkpoints, run_jobs

    cfg = load_section("evaluate", EvaluateConfig, args.params)
    methods = compared_methods(args.params, args.methods)
    out = Path(args.out)
    settings_digest = _settings_digest(cfg, args.bench)
    checkpoints = {m: find_checkpoints(Path(args.runs) / m) for m in methods}
    if out.is_dir():  # results of checkpoints or methods that no longer exist must not linger
        for d in out.iterdir():
            if d.is_dir() and d.name not in checkpoints:
                shutil.rmtree(d)
        for m, ckpts in checkpoints.items():
            names = {c.name for c in ckpts}
            for d in (out / m).iterdir() if (out / m).is_dir() else ():
                if d.is_dir() and d.name not in names:
                    shutil.rmtree(d)
    jobs, digests, done = [], {}, {}
    for m, ckpts in checkpoints.items():
        for c in ckpts:
            name, target = f"{m}/{c.name}", out / m / c.name
            digests[name] = file_digest(c)
            meta = sidecar_path(target / "metrics.json")
            if meta.is_file():
                prev = read_json(meta)
                if prev.get("checkpoint_sha256") == digests[name] and prev.get("settings_sha256") == settings_digest:
                    done[name] = read_json(target / "metrics.json")
                    continue
            if target.exists():
                shutil.rmtree(target)
            jobs.append(Job(name, c, target))
    t0 = time.perf_counter()
    metrics: dict = {}
    if jobs:
        with tempfile.TemporaryDirectory(prefix="selfilter-eval-") as tmp:
            data_files = build_bench_datasets(args.bench, Path(tmp) / "bench", cfg.tasks)
            make_evaluator = functools.partial(
                LmmsEvaluator, cfg.tasks, cfg.include_path, data_files=data_files, limit=cfg.limit,
                device=cfg.device, dtype=cfg.dtype, model=cfg.model, cache_dir=Path(tmp) / "hf_datasets")
            metrics = run_jobs(jobs, make_evaluator, workers=cfg.workers, torch_threads=cfg.torch_threads)
        for job in jobs:
            write_json(job.output_dir / "metrics.json", metrics[job.name])
            write_sidecar(job.output_dir / "metrics.json", params=cfg, method=job.name.split("/")[0],
                          checkpoint=str(job.checkpoint), checkpoint_sha256=digests[job.name],
                          settings_sha256=settings_digest)
    wall = time.perf_counter() - t0
    metrics.update(done)
    for m, ckpts in checkpoints.items():
        write_json(out / m / "summary.json", {
            "method": m, "tasks": cfg.tasks, "bench_sha256": file_digest(args.bench),
            "runs": {c.name: metrics[f"{m}/{c.name}"] for c in ckpts}})
    print(f"evaluate: {len(jobs)} checkpoint(s) evaluated, {len(done)} up to date, "
          f"tasks {', '.join(cfg.tasks)}, {wall:.1f}s -> {out}")
    return 0


def _settings_digest(cfg: EvaluateConfig, bench: str) -> str:
    """What an evaluation's result depends on besides the checkpoint (not workers/threads)."""
    import hashlib
    import json

    keep = cfg.model_dump(mode="json")
    for k in ("workers", "torch_threads"):
        keep.pop(k, None)
    blob = json.dumps({"evaluate": keep, "bench": file_digest(bench),
                       "tasks": file_digest(cfg.include_path) if Path(cfg.include_path).exists() else None},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, ConfigError, EvaluationError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    console.setup()
    p = StageParser("stages.evaluate", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
