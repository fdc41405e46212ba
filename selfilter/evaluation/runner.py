"""Evaluate every checkpoint of one method: one process per worker, tasks loaded once each.

Checkpoints are tiny on the default path, so per-checkpoint overhead dominates: lmms-eval's
``lm.clean()`` runs ``gc.collect()`` twice per evaluation, which walks every object the task
index and datasets created (~1 s each, measured). ``gc.freeze()`` after set-up moves those to
the permanent generation, cutting the cost of one evaluation several-fold.
One torch thread per worker: the model is too small for intra-op parallelism to pay and
generation is Python-bound; on a busy 2-core machine two threads mostly wait for each other
(measured: the shapes end-to-end test took 74 s with 2 threads, 5.8 s with 1).
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from selfilter.holdpoints import hold


@dataclass(frozen=True)
class Job:
    name: str            # run name, e.g. b0.15_s0 (the checkpoint folder's name)
    checkpoint: Path
    output_dir: Path
    # The base model (a reference point, not a compared run): a run the guard rejects - e.g. a
    # base that answers end-of-sequence first, "all predictions empty" - is recorded as
    # {"error": why} instead of failing the stage.
    reference: bool = False


def find_checkpoints(runs_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint folder directly under ``runs_dir`` (those with a ``config.json``), sorted."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: runs folder not found (run the finetune stage)")
    dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [p for p in dirs if not (p / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: not a Hugging Face checkpoint (no config.json)")
    if not dirs:
        raise FileNotFoundError(f"{runs_dir}: no checkpoints")
    return dirs


_EVALUATOR = None  # one per worker process


def _init_worker(make_evaluator: Callable[[], Any], torch_threads: int) -> None:
    global _EVALUATOR
    import torch

    torch.set_num_threads(torch_threads)
    _EVALUATOR = make_evaluator()
    gc.freeze()


def _run_job(job: Job) -> tuple[str, dict]:
    from selfilter.evaluation.guard import EvaluationError

    try:
        return job.name, _EVALUATOR.evaluate(job.checkpoint, job.output_dir)
    except EvaluationError as e:
        if not job.reference:
            raise
        return job.name, {"error": str(e)}


def run_jobs(jobs: Sequence[Job], make_evaluator: Callable[[], Any], workers: int = 1,
             torch_threads: int = 1) -> dict[str, dict[str, float]]:
    """Evaluate ``jobs``; return {job name: metrics}. ``make_evaluator()`` builds an object with
    ``evaluate(checkpoint, output_dir) -> metrics`` (an :class:`LmmsEvaluator`); it must be
    called once, in this process, before the workers fork. The first failure stops all."""
    results: dict[str, dict[str, float]] = {}
    bar = tqdm(total=len(jobs), desc="evaluate", unit="ckpt")
    workers = max(1, min(workers, len(jobs)))
    # Tasks and datasets are loaded once, here; forked workers inherit them (copy-on-write)
    # instead of each re-importing lmms-eval and reloading the data (~5-10 s of CPU apiece).
    _init_worker(make_evaluator, torch_threads)
    if workers == 1:
        for job in jobs:
            name, metrics = _run_job(job)
            results[name] = metrics
            bar.update()
            hold("evaluate.checkpoint_done")  # test-only kill point (selfilter/holdpoints.py); off unless the suite sets it
    else:
        # fork is safe here: the parent has run no torch computation (no OpenMP pool to break).
        ctx = mp.get_context("fork")
        with ctx.Pool(workers) as pool:
            for name, metrics in pool.imap_unordered(_run_job, jobs):
                results[name] = metrics
                bar.update()
                hold("evaluate.checkpoint_done")  # test-only kill point (selfilter/holdpoints.py); off unless the suite sets it
    bar.close()
    return {j.name: results[j.name] for j in jobs}
