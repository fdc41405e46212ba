"""finetune stage: fine-tune the base model on every (method, budget, seed) subset.

    python -m stages.finetune --params params.yaml --selections selections \
        --image-dir data/shapes --model models/base --out runs [--method NAME ...]

Methods default to ``select.methods`` from the params file. Every subset
``SELECTIONS/<method>/b<budget>_s<seed>/subset.json`` is trained with the same recipe
(``finetune`` params) in ONE process: the union of all subsets' records is encoded once, and
``finetune.workers`` forked processes train independent runs side by side. Each run writes
``OUT/<method>/b<budget>_s<seed>/``: the Hugging Face checkpoint (model + processor,
``save_pretrained``), ``train_log.json`` (steps, final loss, wall seconds, the per-step log) and,
last, ``done.json`` with the digest of (subset file, recipe params, base model). A rerun skips
runs whose marker digest matches (OUT is ``persist: true`` in dvc.yaml, so DVC keeps it),
resumes an interrupted run from its ``checkpoint/``, and removes run folders of subsets that no
longer exist. A run without ``done.json`` is never used downstream.

Two runs with the same subset file, recipe, base model and seed compute the same weights, so
only one is trained and the other gets a copy (its ``train_log.json`` names the run it was
``trained_as``): in uniform regimes ``self_filter_guarded`` sets nothing aside and picks the
subsets of ``self_filter_clip`` byte for byte.

``--only METHOD/RUN`` (repeatable) trains just those runs and removes nothing else: a grid
unit (flows/grid.py) on another machine writing into a shared workspace, beside other units.
``--plan`` prints the runs still to do as JSON (after the usual clean-up) and trains nothing.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from selfilter import console, needs
from selfilter.config import ConfigError, load_section
from selfilter.grid import machine
from selfilter.selection.config import compared_methods
from selfilter.training.config import FinetuneConfig
from stages._common import StageParser, run_stage

log = logging.getLogger("finetune")
# params that change where/how fast a run goes, not what it computes
_NOT_IN_DIGEST = {"device", "checkpoint_every", "workers", "torch_threads"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--method", action="append", dest="methods",
                   help="selection method to train (repeatable; default: select.methods in the params)")
    p.add_argument("--selections", required=True, help="selections root: <method>/b<budget>_s<seed>/subset.json")
    p.add_argument("--image-dir", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--model", required=True, help="base VLM folder (save_pretrained) or hub name")
    p.add_argument("--out", required=True, help="output root: <method>/b<budget>_s<seed>/ per run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--only", action="append", metavar="METHOD/RUN",
                   help="train only this run, e.g. random/b0.15_s0 (repeatable); nothing else is removed")
    p.add_argument("--plan", action="store_true", help="print the runs still to do as a JSON list; train nothing")


def run(args: argparse.Namespace) -> int:
    return run_stage("finetune", _run, args)


@dataclass
class _Job:
    method: str
    spec: object          # selfilter.training.finetune.SubsetSpec
    digest: str
    records: list

    @property
    def name(self) -> str:
        return f"{self.method}/{self.spec.name}"


def _plan(args, cfg, methods, out: Path, only: set[str] | None = None) -> list[_Job]:
    """The runs still to do (digest differs or no marker); stale run folders are removed -
    except with ``only`` (a grid unit): then just those runs are planned and nothing removed."""
    from selfilter.io import file_digest, read_json
    from selfilter.training.finetune import discover_subsets, run_digest

    recipe = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_DIGEST}
    base_digest = file_digest(args.model) if Path(args.model).exists() else str(args.model)
    jobs: list[_Job] = []
    known: set[str] = set()  # every run the selections define (checks --only names)
    for method in methods:
        if needs.read_left_out(Path(args.selections) / method):
            # nothing to train: the select stage left the method out and said why (the report too)
            log.info("%s: left out by its select stage (selections/%s/left_out.json)", method, method)
            if only is None and (out / method).is_dir():
                shutil.rmtree(out / method)
            continue
        specs = discover_subsets(Path(args.selections) / method)
        known |= {f"{method}/{s.name}" for s in specs}
        method_out = out / method
        if only is not None:
            specs = [s for s in specs if f"{method}/{s.name}" in only]
        elif method_out.is_dir():  # run folders of subsets that are gone (budgets/seeds changed)
            wanted = {s.name for s in specs}
            for d in method_out.iterdir():
                if d.is_dir() and d.name not in wanted:
                    log.info("removing stale run %s", d)
                    shutil.rmtree(d)
        for spec in specs:
            digest = run_digest(file_digest(spec.path), recipe, base_digest)
            done = method_out / spec.name / "done.json"
            if done.is_file() and read_json(done).get("digest") == digest:
                continue
            records = read_json(spec.path)
            if not isinstance(records, list) or not records:
                raise ValueError(f"{spec.path}: expected a non-empty JSON array of records")
            for i, r in enumerate(records):
                if not isinstance(r, dict) or not isinstance(r.get("uid"), int):
                    raise ValueError(f"{spec.path}: record {i} has no integer 'uid'")
            jobs.append(_Job(method, spec, digest, records))
    if only is not None:
        unknown = sorted(only - known)
        if unknown:
            raise ValueError(f"--only {unknown[0]}: no such run (selections/<method>/<run>/subset.json)")
    elif out.is_dir():
        for d in out.iterdir():
            if d.is_dir() and d.name not in methods:
                log.info("removing runs of a method no longer compared: %s", d)
                shutil.rmtree(d)
    return jobs


def _write_marker(run_dir: Path, job: _Job) -> None:
    """``run.json``, first: which run the folder holds (a folder whose digest differs is redone)."""
    from selfilter.io import write_json

    write_json(run_dir / "run.json", {"digest": job.digest, "method": job.method, "subset": str(job.spec.path)})


def _write_done(run_dir: Path, job: _Job, steps: int) -> None:
    """``done.json``, last: a run folder without it is never used downstream."""
    from selfilter.io import write_json

    write_json(run_dir / "done.json", {"digest": job.digest, "steps": steps})


# State shared with forked workers (set in the parent before the fork; read-only afterwards).
_CTX: dict = {}


def _train_one(job: _Job) -> tuple[str, int, float, float]:
    """Train one run; returns (name, steps, final loss, wall seconds). Runs in a worker or inline."""
    import torch

    from selfilter.io import read_json, write_json
    from selfilter.models.loading import load_vlm, save_vlm
    from selfilter.training.finetune import finetune, recipe_steps
    from selfilter.training.loop import make_accelerator, remove_checkpoint

    cfg, args, out = _CTX["cfg"], _CTX["args"], _CTX["out"]
    pool, position, encoder, processor = _CTX["pool"], _CTX["position"], _CTX["encoder"], _CTX["processor"]
    if _CTX.get("threads"):
        torch.set_num_threads(_CTX["threads"])
    accelerator = _CTX.get("accelerator") or make_accelerator(cfg.device, cfg.mixed_precision)
    main_proc = accelerator.is_main_process
    spec, run_dir = job.spec, out / job.method / job.spec.name
    if main_proc:
        marker = run_dir / "run.json"
        if run_dir.exists() and not (marker.is_file() and read_json(marker).get("digest") == job.digest):
            shutil.rmtree(run_dir)  # a different (older) run: nothing in it can be resumed
        _write_marker(run_dir, job)
    accelerator.wait_for_everyone()
    data = pool.subset([position[r["uid"]] for r in job.records])
    steps = recipe_steps(len(data), spec.budget, recipe=cfg.recipe, epochs=cfg.epochs,
                         reference_budget=cfg.reference_budget, batch_size=cfg.batch_size,
                         world=accelerator.num_processes, steps=cfg.steps)
    model, _ = load_vlm(args.model, cfg.dtype, "cpu")
    seed = spec.seed + cfg.seed_offset
    result = finetune(model, data, encoder.pad_token_id, accelerator=accelerator, num_steps=steps, lr=cfg.lr,
                      weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, batch_size=cfg.batch_size,
                      grad_clip=cfg.grad_clip, freeze_vision=cfg.freeze_vision, seed=seed,
                      checkpoint_dir=run_dir, checkpoint_every=cfg.checkpoint_every, max_steps=cfg.max_steps,
                      group_by_length=cfg.group_by_length, loss=cfg.loss,
                      progress=_CTX["progress"], desc=job.name)
    if not result.finished:
        log.info("%s: stopped at step %d of %d (max_steps); checkpoint kept", job.name, result.step,
                 result.num_steps)
        return job.name, result.step, float("nan"), result.wall_s
    if main_proc:
        save_started = time.perf_counter()
        save_vlm(accelerator.unwrap_model(model), processor, run_dir)
        tail = [r["loss"] for r in result.log[-5:]]
        write_json(run_dir / "train_log.json", {
            "method": job.method, "budget": spec.budget, "seed": spec.seed, "train_seed": seed,
            "n_samples": len(data), "recipe": cfg.recipe, "steps": result.step,
            "epochs": round(result.step * cfg.batch_size * accelerator.num_processes / len(data), 4),
            "final_loss": sum(tail) / len(tail), "resumed_from": result.resumed_from,
            "wall_s": round(result.wall_s, 3), "save_s": round(time.perf_counter() - save_started, 3),
            **machine(),
            "log": result.log,
        })
    remove_checkpoint(accelerator, run_dir)
    if main_proc:  # the marker goes last: a run without it is redone
        _write_done(run_dir, job, result.step)
    accelerator.wait_for_everyone()
    return job.name, result.step, result.log[-1]["loss"], result.wall_s


def _split_twins(jobs: list[_Job], out: Path) -> tuple[list[_Job], list[tuple[_Job, Path]]]:
    """(runs to train, [(twin, run folder it copies)]). A twin has the digest (subset file,
    recipe, base model) and seed of a finished run in ``out`` or of an earlier job here."""
    from selfilter.io import read_json
    from selfilter.training.finetune import SUBSET_DIR

    done: dict[tuple[str, int], Path] = {}
    for marker in sorted(out.glob("*/*/done.json")):
        m = SUBSET_DIR.match(marker.parent.name)
        digest = read_json(marker).get("digest") if m else None
        if digest:
            done.setdefault((digest, int(m["seed"])), marker.parent)
    train: list[_Job] = []
    twins: list[tuple[_Job, Path]] = []
    for job in jobs:
        key = (job.digest, job.spec.seed)
        if key in done:
            twins.append((job, done[key]))
        else:
            done[key] = out / job.method / job.spec.name  # trained below, before any twin copies it
            train.append(job)
    return train, twins


def _copy_twin(job: _Job, source: Path, out: Path) -> tuple[str, int, float, float]:
    """Give ``job`` the finished run in ``source``: same files, its own method and subset in
    run.json and train_log.json, ``done.json`` last (a folder without it is redone)."""
    from selfilter.io import read_json, write_json

    run_dir = out / job.method / job.spec.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("done.json", "run.json", "checkpoint*"))
    _write_marker(run_dir, job)
    train_log = read_json(run_dir / "train_log.json")
    trained_as = f"{source.parent.name}/{source.name}"
    write_json(run_dir / "train_log.json", {**train_log, "method": job.method, "trained_as": trained_as})
    steps = read_json(source / "done.json")["steps"]
    _write_done(run_dir, job, steps)
    log.info("%s: same subset, seed, recipe and base as %s - its weights copied, not retrained",
             job.name, trained_as)
    return job.name, steps, train_log["final_loss"], train_log["wall_s"]


def _copy_twins(twins: list[tuple[_Job, Path]], out: Path, bar) -> None:
    for job, source in twins:
        if (source / "done.json").is_file():  # not when max_steps stopped the run it copies
            _finished(bar, *_copy_twin(job, source, out))


def _runs_bar(total: int, args: argparse.Namespace):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="finetune", unit="run", disable=args.no_progress)


def _finished(bar, name: str, steps: int, loss: float, wall: float) -> None:
    bar.set_postfix_str(f"{name} loss {loss:.3f}", refresh=False)
    bar.update()
    console.detail(log, "%s: %d steps, loss %.4f, %.2f s", name, steps, loss, wall)


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("finetune", FinetuneConfig, args.params)
    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.models.loading import load_vlm
    from selfilter.training.loop import make_accelerator

    out = Path(args.out)
    only = set(args.only) if args.only else None
    methods = compared_methods(args.params, args.methods)
    if only is not None:
        methods = [m for m in methods if any(u.split("/", 1)[0] == m for u in only)]
    jobs = _plan(args, cfg, methods, out, only)
    if args.plan:
        import json

        print(json.dumps([j.name for j in jobs]))
        return 0
    if not jobs:
        log.info("all runs of %s up to date", ", ".join(methods))
        return 0

    # a grid unit (--only) trains what it is given: its twin may be another machine's unit
    twins: list[tuple[_Job, Path]] = []
    if only is None:
        jobs, twins = _split_twins(jobs, out)
    if not jobs:
        with _runs_bar(len(twins), args) as bar:
            _copy_twins(twins, out, bar)
        return 0

    # Every record any remaining run needs, encoded once (the processor runs up front, not per step).
    union: dict[int, dict] = {}
    for job in jobs:
        for r in job.records:
            union.setdefault(r["uid"], r)
    _, processor = load_vlm(args.model, cfg.dtype, "cpu")
    encoder = ChatEncoder(processor, max_length=cfg.max_length)
    uids = sorted(union)
    pool = EncodedDataset([union[u] for u in uids], args.image_dir, encoder, progress=not args.no_progress)
    _CTX.update(cfg=cfg, args=args, out=out, pool=pool, position={u: i for i, u in enumerate(uids)},
                encoder=encoder, processor=processor, threads=cfg.torch_threads)

    started = time.perf_counter()
    workers = min(cfg.workers, len(jobs))
    if workers > 1:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("finetune.workers must be 1 under a distributed launch")
        # fork: children inherit the encoded pool copy-on-write. The parent has run no torch
        # parallel region yet (encoding only builds tensors), so no OpenMP pool is inherited.
        _CTX["progress"] = False
        with mp.get_context("fork").Pool(workers) as p, _runs_bar(len(jobs) + len(twins), args) as bar:
            for name, steps, loss, wall in p.imap_unordered(_train_one, jobs):
                _finished(bar, name, steps, loss, wall)
            _copy_twins(twins, out, bar)
    else:
        # one bar for the stage's runs; each run's own step bar only with SELFILTER_VERBOSE
        _CTX["progress"] = not args.no_progress and console.verbose()
        _CTX["accelerator"] = make_accelerator(cfg.device, cfg.mixed_precision)
        with _runs_bar(len(jobs) + len(twins), args) as bar:
            for job in jobs:
                _finished(bar, *_train_one(job))
            _copy_twins(twins, out, bar)
    log.info("%d run(s) of %d method(s) in %.1f s (%d worker(s))", len(jobs), len(methods),
             time.perf_counter() - started, workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = StageParser("stages.finetune", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
