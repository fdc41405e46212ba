"""Evaluation through lmms-eval: local benchmark datasets, running its ``llava_hf`` model on
many checkpoints, the guard against its swallowed errors, and reading its results.

- ``metrics``: pure scoring functions of the shapes benchmarks (used by the task utils).
- ``bench``: ``data/shapes/bench/*.jsonl`` -> parquet datasets lmms-eval loads offline.
- ``heldout``: the held-out split of the user's records -> the ``selfilter_heldout_*`` tasks' data.
- ``llava_model``: ``selfilter_llava_hf``, lmms-eval's ``llava_hf`` with a working log-likelihood.
- ``lmms``: :class:`LmmsEvaluator`, :func:`evaluate_checkpoint`, :func:`flatten_metrics`.
- ``guard``: :func:`find_problems` / :func:`check_run`, :class:`EvaluationError`.
- ``runner``: evaluating every checkpoint of a method, in parallel worker processes.
"""
