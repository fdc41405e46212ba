"""evaluate stage: every fine-tuned checkpoint of every method through lmms-eval.

    python -m stages.evaluate --params params.yaml --runs runs --pool data/pool \
        --image-dir data/shapes --base models/base --out evals [--method NAME ...]

Methods default to ``select.methods`` in the params. For each finished checkpoint
``RUNS/<method>/<run>/`` (e.g. ``b0.15_s0``; one with ``done.json``) writes
``OUT/<method>/<run>/``: ``results.json`` (lmms-eval's results file under a stable name),
``samples_<task>.jsonl`` (its per-sample log), ``lmms_eval.log`` (its warnings/errors) and
``metrics.json`` (``{"task/metric": value}``) with a ``.meta.json`` sidecar holding the digests
of the checkpoint and of the evaluation settings; a rerun skips runs whose digests match (OUT is
``persist: true`` in dvc.yaml). Then ``OUT/<method>/summary.json`` (every run's metrics),
``OUT/_base/metrics.json`` (the base model before fine-tuning, on the same tasks: the reference
that tells whether fine-tuning moves the benchmark at all) and ``OUT/benchmark.json`` (which
benchmark, which tasks). All checkpoints share ``evaluate.workers`` processes.

The benchmark is the pool's (``source.json``): with ``evaluate.tasks: auto`` the shapes tasks
for the embedded data (local parquet files built from its ``bench/``), the held-out split's
tasks (``selfilter_heldout_ll``: likelihood of the reference answer; ``selfilter_heldout_short``:
exact match and token F1 on short answers) for yours. Other task names (the GPU profile's
``mme``, ``textvqa_val``, ..., or your own task folder added to ``evaluate.include_path``) load
their datasets the way lmms-eval does.
A run that lmms-eval silently botched (swallowed generation errors, empty or missing outputs)
fails the stage (selfilter.evaluation.guard).

``--only METHOD/RUN`` (repeatable; ``_base`` for the base model) evaluates just those and
writes no summary, removing nothing: a grid unit (flows/grid.py) beside other units in a shared
workspace; the ``dvc repro evaluate`` after the grid writes the summaries. ``--plan`` prints
what is still to evaluate (of the checkpoints that exist) as JSON and evaluates nothing.
"""
from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from selfilter import console
from selfilter.config import ConfigError, load_section
from selfilter.data.source import HELDOUT_FILE, read_source
from selfilter.evaluation.config import HELDOUT_TASKS, EvaluateConfig, resolve_tasks
from selfilter.evaluation.guard import EvaluationError
from selfilter.io import file_digest, read_json, sidecar_path, write_json, write_sidecar
from selfilter.selection.config import compared_methods
from stages._common import StageParser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--method", action="append", dest="methods",
                   help="method whose checkpoints to evaluate (repeatable; default: select.methods in the params)")
    p.add_argument("--runs", required=True, help="runs root: <method>/<run>/ checkpoint folders")
    p.add_argument("--pool", required=True, help="the prepare stage's pool folder (source.json says which benchmark)")
    p.add_argument("--image-dir", required=True, help="folder the held-out records' image paths are relative to")
    p.add_argument("--base", help="the base model (models/base): evaluated too, as the reference; its tokenizer "
                                  "counts the held-out answers' tokens")
    p.add_argument("--out", required=True, help="output root: <method>/<run>/ per checkpoint")
    p.add_argument("--only", action="append", metavar="METHOD/RUN",
                   help="evaluate only this checkpoint (repeatable; _base: the base model); no summaries, "
                        "nothing removed")
    p.add_argument("--plan", action="store_true", help="print what is still to evaluate as a JSON list")


def _run(args: argparse.Namespace) -> int:
    # Imported here so `--help` and argument errors stay instant.
    from selfilter.evaluation.lmms import LmmsEvaluator
    from selfilter.evaluation.runner import Job, find_checkpoints, run_jobs

    cfg = load_section("evaluate", EvaluateConfig, args.params)
    methods = compared_methods(args.params, args.methods)
    out = Path(args.out)
    info = read_source(args.pool)
    tasks = resolve_tasks(cfg.tasks, info.benchmark_kind)
    bench_files = _benchmark_files(info, args.pool)
    settings_digest = _settings_digest(cfg, tasks, bench_files)
    only = set(args.only) if args.only else None
    if only is not None:
        wanted = _only_wanted(only, Path(args.runs), out, args.base)
        checkpoints = {}
    else:
        if args.plan:  # what a grid would still have to evaluate: the finished runs (others may be training)
            checkpoints = {m: sorted(d.parent for d in (Path(args.runs) / m).glob("*/done.json")) for m in methods}
        else:
            checkpoints = {m: find_checkpoints(Path(args.runs) / m) for m in methods
                           if _has_runs(Path(args.runs) / m)}
            _remove_stale(out, checkpoints)
        wanted = [(f"{m}/{c.name}", c, out / m / c.name) for m, ckpts in checkpoints.items() for c in ckpts]
        if args.base:
            wanted.append((BASE_DIR, Path(args.base), out / BASE_DIR))
    jobs, digests, done = [], {}, {}
    for name, c, target in wanted:
        digests[name] = file_digest(c)
        meta = sidecar_path(target / "metrics.json")
        if meta.is_file():
            prev = read_json(meta)
            if prev.get("checkpoint_sha256") == digests[name] and prev.get("settings_sha256") == settings_digest:
                done[name] = read_json(target / "metrics.json")
                continue
        if target.exists() and not args.plan:
            shutil.rmtree(target)
        jobs.append(Job(name, c, target, reference=name == BASE_DIR))
    if args.plan:
        print(json.dumps([j.name for j in jobs]))
        return 0
    t0 = time.perf_counter()
    metrics: dict = {}
    if jobs:
        with tempfile.TemporaryDirectory(prefix="selfilter-eval-") as tmp:
            data_files = _build_datasets(info, args, tasks, Path(tmp) / "bench")
            make_evaluator = functools.partial(
                LmmsEvaluator, tasks, cfg.include_path, data_files=data_files, limit=cfg.limit,
                device=cfg.device, dtype=cfg.dtype, model=cfg.model, cache_dir=Path(tmp) / "hf_datasets",
                batch_size=cfg.batch_size)
            metrics = run_jobs(jobs, make_evaluator, workers=cfg.workers, torch_threads=cfg.torch_threads)
        for job in jobs:
            write_json(job.output_dir / "metrics.json", metrics[job.name])
            write_sidecar(job.output_dir / "metrics.json", params=cfg, method=job.name.split("/")[0],
                          checkpoint=str(job.checkpoint), checkpoint_sha256=digests[job.name],
                          settings_sha256=settings_digest)
    wall = time.perf_counter() - t0
    metrics.update(done)
    if only is not None:
        print(f"evaluate: {len(jobs)} checkpoint(s) evaluated, {len(done)} up to date ({', '.join(sorted(only))}), "
              f"{wall:.1f}s -> {out}")
        return 0
    for m, ckpts in checkpoints.items():
        write_json(out / m / "summary.json", {
            "method": m, "tasks": tasks, "bench_sha256": settings_digest,
            "runs": {c.name: metrics[f"{m}/{c.name}"] for c in ckpts}})
    write_json(out / "benchmark.json", _benchmark_description(info, tasks))
    base_note = ""
    if args.base and "error" in metrics.get(BASE_DIR, {}):
        base_note = f"; the base model could not be scored: {metrics[BASE_DIR]['error'][:200]}"
    print(f"evaluate: {len(jobs)} checkpoint(s) evaluated, {len(done)} up to date, "
          f"tasks {', '.join(tasks)}, {wall:.1f}s -> {out}{base_note}")
    return 0


BASE_DIR = "_base"  # OUT/_base: the base model's scores (a folder name no method can have)


def _remove_stale(out: Path, checkpoints: dict[str, list[Path]]) -> None:
    """Results of checkpoints or methods that no longer exist must not linger."""
    if not out.is_dir():
        return
    for d in out.iterdir():
        if d.is_dir() and d.name not in checkpoints and d.name != BASE_DIR:
            shutil.rmtree(d)
    for m, ckpts in checkpoints.items():
        names = {c.name for c in ckpts}
        for d in (out / m).iterdir() if (out / m).is_dir() else ():
            if d.is_dir() and d.name not in names:
                shutil.rmtree(d)


def _only_wanted(only: set[str], runs: Path, out: Path, base: str | None) -> list[tuple[str, Path, Path]]:
    """(name, checkpoint, output folder) of each ``--only`` name; a checkpoint that is not
    finished (no done.json) is an error naming it - other runs may still be training."""
    wanted = []
    for name in sorted(only):
        if name == BASE_DIR:
            if not base:
                raise ValueError("--only _base: pass --base (the base model)")
            wanted.append((name, Path(base), out / BASE_DIR))
            continue
        ckpt = runs / name
        if name.count("/") != 1 or not (ckpt / "done.json").is_file() or not (ckpt / "config.json").is_file():
            raise FileNotFoundError(f"{ckpt}: no finished checkpoint (done.json) for --only {name}")
        wanted.append((name, ckpt, out / name))
    return wanted


def _has_runs(method_dir: Path) -> bool:
    """False for a method that was left out (its selections hold only left_out.json, so finetune
    wrote no checkpoint): nothing to evaluate, and the report says why."""
    return method_dir.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in method_dir.iterdir())


def _benchmark_files(info, pool: str) -> list[Path]:
    """The files the benchmark's content is in (their digests decide whether results are stale)."""
    if info.benchmark_kind == "shapes":
        return [Path(info.benchmark["dir"])]
    if info.benchmark_kind == "heldout":
        return [Path(pool) / HELDOUT_FILE]
    return []


def _build_datasets(info, args: argparse.Namespace, tasks: list[str], tmp: Path) -> dict:
    from selfilter.evaluation.bench import build_bench_datasets

    if info.benchmark_kind == "shapes":
        return build_bench_datasets(info.benchmark["dir"], tmp, tasks)
    if info.benchmark_kind == "heldout" and any(t in HELDOUT_TASKS for t in tasks):
        from selfilter.evaluation.heldout import build_heldout_datasets

        if not args.base:
            raise ValueError("the held-out tasks count answer tokens with the base model's tokenizer: pass --base")
        return build_heldout_datasets(Path(args.pool) / HELDOUT_FILE, args.image_dir, tmp,
                                      [t for t in tasks if t in HELDOUT_TASKS], args.base)
    return {}


def _benchmark_description(info, tasks: list[str]) -> dict:
    kind = info.benchmark_kind
    if kind == "shapes":
        text = "the embedded shapes benchmark (held-out scenes the generator never put in the pool)"
    elif kind == "heldout":
        b = info.benchmark
        text = (f"held-out split of your own data: {b.get('records_n')} records on {b.get('images')} pictures "
                f"(seed {b.get('seed')}), never selectable")
    else:
        text = "the lmms-eval tasks named in evaluate.tasks"
    own = [t for t in tasks if not (kind == "shapes" and t.startswith("shapes_")) and t not in HELDOUT_TASKS]
    name = kind if kind != "none" else "lmms-eval"
    if own and kind != "none":
        text += f"; plus lmms-eval tasks {', '.join(own)}"
    return {"name": name, "tasks": tasks, "description": text}


def _settings_digest(cfg: EvaluateConfig, tasks: list[str], bench_files: list[Path]) -> str:
    """What an evaluation's result depends on besides the checkpoint (not workers/threads)."""
    import hashlib
    import json

    keep = cfg.model_dump(mode="json")
    for k in ("workers", "torch_threads"):
        keep.pop(k, None)
    keep["tasks"] = tasks
    include = [cfg.include_path] if isinstance(cfg.include_path, str) else cfg.include_path
    blob = json.dumps({"evaluate": keep, "bench": [file_digest(f) for f in bench_files],
                       "tasks": [file_digest(p) if Path(p).exists() else None for p in include]},
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
