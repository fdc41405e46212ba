"""Evaluate checkpoints with lmms-eval's Python API and its built-in ``llava_hf`` model.

No fork or copy of lmms-eval: tasks are lmms-eval task configs (ours from ``--include_path``,
or its own, e.g. ``pope``), the model is its registered ``llava_hf`` (the "simple" variant, which
prompts ``apply_chat_template([{"role": "user", "content": "<image>\\n{question}"}])`` - the
template the fine-tuning recipe trains on), and results are written by its own
``EvaluationTracker``. What this module adds:

- **Load once, evaluate many.** Indexing tasks and loading their datasets happens once in
  :class:`LmmsEvaluator`; each checkpoint then costs a model load plus generation. The stage
  evaluates ~15 checkpoints per method in one process this way.
- **Local data.** A task's dataset can be pointed at a local parquet file
  (``dataset_path: parquet`` + ``data_files``) through lmms-eval's own config-override mechanism
  (a ``{"task": name, ...}`` dict merged over the registered YAML) - which is also how one of
  lmms-eval's built-in tasks runs offline on data in its schema.
- **The guard.** lmms-eval swallows generation errors and exits 0; every run is checked
  (``selfilter.evaluation.guard``) and a bad one raises :class:`EvaluationError`.
- **Stable names.** ``<output_dir>/results.json`` (lmms-eval's ``<timestamp>_results.json``, its
  functions' memory addresses dropped),
  ``samples_<task>.jsonl``, ``lmms_eval.log`` (its warnings and errors) and the flat
  ``{"task/metric": value}`` summary returned to the caller.
- **A model for log-likelihood tasks.** ``selfilter_llava_hf`` (``selfilter.evaluation.llava_model``,
  registered here) is ``llava_hf`` with a working ``loglikelihood``, which the held-out tasks need.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfilter.evaluation.guard import EvaluationError, check_run, has_chat_template
from selfilter.io import write_text

# lmms-eval's results keys look like "exact_match,none": metric, then the filter name. These
# suffixes are its uncertainty estimates, not metrics.
_STDERR_MARKERS = ("_stderr,", "_stderr_clt,", "_stderr_clustered,")
# lmms-eval writes each task's functions (doc_to_text, process_results, ...) as their repr
_FUNCTION_ADDRESS = re.compile(r"(<function \S+) at 0x[0-9a-fA-F]+>")


def flatten_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """``{"task/metric": value}`` from an lmms-eval results dict.

    Filter "none" is dropped from the name (other filters are kept: ``metric@filter``); a
    dict-valued metric (e.g. ``qtype_accuracy`` = {qtype: acc}) becomes ``task/acc_<key>``;
    stderr entries, aliases and non-numbers are skipped.
    """
    flat: dict[str, float] = {}
    for task, metrics in sorted(results.get("results", {}).items()):
        for key, value in metrics.items():
            if "," not in key or any(m in key for m in _STDERR_MARKERS):
                continue
            metric, filter_name = key.split(",", 1)
            name = metric if filter_name == "none" else f"{metric}@{filter_name}"
            if isinstance(value, Mapping):
                prefix = "acc" if metric.endswith("_accuracy") else metric
                for sub, v in value.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        flat[f"{task}/{prefix}_{sub}"] = float(v)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{task}/{name}"] = float(value)
    return flat


def task_config(task: str, data_file: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None) -> str | dict[str, Any]:
    """What to hand lmms-eval for ``task``: its name, or - when it should read a local parquet
    file - an override dict that lmms-eval merges over the task's registered YAML."""
    if data_file is None:
        return task
    kwargs: dict[str, Any] = {"data_files": {"test": str(Path(data_file).resolve())}}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    return {"task": task, "dataset_path": "parquet", "dataset_kwargs": kwargs}


@contextlib.contextmanager
def _captured_log(level: str = "WARNING") -> Iterator[list[str]]:
    """Collect lmms-eval's (loguru) messages at ``level`` and above while the block runs."""
    from loguru import logger

    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m).rstrip("\n")), level=level,
                         format="{level}: {message}")
    try:
        yield lines
    finally:
        logger.remove(handler)


class LmmsEvaluator:
    """lmms-eval tasks loaded once, evaluated against any number of checkpoints.

    ``tasks``: lmms-eval task names. ``include_path``: folder(s) of custom task YAMLs.
    ``data_files``: {task: local parquet} for tasks that read local data (the shapes tasks, or a
    built-in task served from local data). ``limit``: at most this many documents per task.
    lmms-eval's built-in task index (~2,000 YAMLs, a few seconds) is read only when a task is
    not found under ``include_path``.
    """

    def __init__(self, tasks: Sequence[str], include_path: str | os.PathLike | Sequence | None = None,
                 data_files: Mapping[str, str | os.PathLike] | None = None, limit: int | None = None,
                 device: str = "cpu", dtype: str = "float32", model: str = "llava_hf",
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 1):
        import lmms_eval.evaluator  # noqa: F401  (imports lmms_eval.models, which sets up its logging)
        from lmms_eval.tasks import TaskManager, get_task_dict

        from selfilter.evaluation.llava_model import register

        register()  # `selfilter_llava_hf`, here so that every evaluation worker process has it

        if not tasks:
            raise ValueError("no lmms-eval tasks given")
        self.tasks = list(tasks)
        self.limit = limit
        self.device = device
        self.dtype = dtype
        self.model = model
        self.batch_size = batch_size
        data_files = dict(data_files or {})
        include = [str(include_path)] if isinstance(include_path, (str, os.PathLike)) else include_path
        include = [str(p) for p in include] if include else None

        manager = TaskManager("WARNING", include_path=include, include_defaults=False) if include else None
        if manager is None or any(t not in manager.all_tasks for t in self.tasks):
            manager = TaskManager("WARNING", include_path=include, include_defaults=True)
        unknown = [t for t in self.tasks if t not in manager.all_tasks]
        if unknown:
            raise ValueError(f"unknown lmms-eval task(s) {', '.join(unknown)} "
                             f"(include_path={include}); see `lmms-eval --tasks list`")
        self.task_manager = manager
        configs = [task_config(t, data_files.get(t), cache_dir) for t in self.tasks]
        task_dict = get_task_dict(configs, manager)
        # Task objects hold their loaded datasets; lmms-eval rebuilds their requests each run.
        self._task_objects = [task_dict[t] for t in self.tasks]
        self.expected_counts = {t: self._expected(obj) for t, obj in zip(self.tasks, self._task_objects)}

    def _expected(self, task_obj) -> int:
        from lmms_eval.evaluator_utils import get_sample_size

        n = len(task_obj.eval_docs)
        limit = get_sample_size(task_obj, self.limit)
        return n if limit is None else min(n, limit)

    def model_args(self, checkpoint_dir: str | os.PathLike) -> str:
        # transformers 5 rejects llava_hf's default device_map="" (NOTES.md): pass the device.
        # (``device`` itself reaches llava_hf through simple_evaluate's own argument.)
        return f"pretrained={Path(checkpoint_dir).resolve()},device_map={self.device},dtype={self.dtype}"

    def evaluate(self, checkpoint_dir: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, float]:
        """Evaluate one checkpoint; write ``results.json``, ``samples_<task>.jsonl`` and
        ``lmms_eval.log`` under ``output_dir``; return ``{"task/metric": value}``.

        Raises :class:`EvaluationError` when the run cannot be trusted (guard).
        """
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.loggers.evaluation_tracker import EvaluationTracker
        from lmms_eval.utils import get_datetime_str

        checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
        if not (checkpoint_dir / "config.json").is_file():
            raise FileNotFoundError(f"{checkpoint_dir}: not a Hugging Face checkpoint (no config.json)")
        if not has_chat_template(checkpoint_dir):
            raise EvaluationError(f"{checkpoint_dir}: no chat template saved with the processor; lmms-eval's "
                                  "llava_hf would silently prompt with its Vicuna default instead")
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=output_dir, prefix=".lmms-") as tmp, _captured_log() as log:
            tracker = EvaluationTracker(output_path=tmp)
            datetime_str = get_datetime_str()
            results = simple_evaluate(
                model=self.model, model_args=self.model_args(checkpoint_dir), tasks=self._task_objects,
                task_manager=self.task_manager, limit=self.limit, device=self.device, batch_size=self.batch_size,
                log_samples=True, evaluation_tracker=tracker, bootstrap_iters=0, verbosity="WARNING",
                datetime_str=datetime_str, force_simple=True, process_docs_parallel=1,
            )
            samples = results.pop("samples") if results is not None else {}
            if results is not None:
                # Exactly what `lmms-eval --output_path ... --log_samples` writes.
                tracker.save_results_aggregated(results=results, samples=samples, datetime_str=datetime_str)
                for task in results.get("configs", {}):
                    tracker.save_results_samples(task_name=task, samples=samples[task])
            written = sorted(Path(tmp).rglob("*_results.json"))
            check_run(results if written else None, samples, self.expected_counts, log,
                      where=str(checkpoint_dir))
            # without the functions' memory addresses, two evaluations of one checkpoint write the
            # same results.json (wall times aside)
            write_text(output_dir / "results.json", _FUNCTION_ADDRESS.sub(r"\1>", written[-1].read_text()))
            for task in self.tasks:
                for f in Path(tmp).rglob(f"*_samples_{task}.jsonl"):
                    os.replace(f, output_dir / f"samples_{task}.jsonl")
            (output_dir / "lmms_eval.log").write_text("".join(line + "\n" for line in log), encoding="utf-8")
        return flatten_metrics(results)


def evaluate_checkpoint(checkpoint_dir: str | os.PathLike, tasks: Sequence[str],
                        include_path: str | os.PathLike | None, output_dir: str | os.PathLike,
                        limit: int | None = None, device: str = "cpu",
                        data_files: Mapping[str, str | os.PathLike] | None = None) -> dict[str, float]:
    """One checkpoint, start to finish (loads the tasks; use :class:`LmmsEvaluator` for many)."""
    return LmmsEvaluator(tasks, include_path, data_files=data_files, limit=limit,
                         device=device).evaluate(checkpoint_dir, output_dir)

