"""Turn lmms-eval's silent failures into loud ones.

lmms-eval catches exceptions raised inside a model's ``generate`` (logs "Error ... in
generating", answers "") and still exits 0, so a broken checkpoint scores 0 instead of failing;
it also only warns when it cannot write its results file. These pure checks look at what a run
left behind - its log lines, results and per-sample logs - and list every problem found.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# lmms-eval's own messages for swallowed failures (models/*/llava_hf.py, evaluation_tracker.py).
SWALLOWED_ERROR_PATTERNS = (
    re.compile(r"Error .* in generating", re.DOTALL),
    re.compile(r"Could not save results"),
    re.compile(r"Error .* when loading video"),
)


class EvaluationError(RuntimeError):
    """An lmms-eval run that exited normally but did not really evaluate; lists the problems."""


def swallowed_errors(log_lines: Iterable[str]) -> list[str]:
    """The log lines in which lmms-eval reports an error it then ignored."""
    return [line for line in log_lines if any(p.search(line) for p in SWALLOWED_ERROR_PATTERNS)]


def _prediction(sample: Mapping[str, Any]) -> str:
    resp = sample.get("filtered_resps", sample.get("resps", ""))
    while isinstance(resp, list):  # [[text]] or [text] depending on lmms-eval's flattening
        resp = resp[0] if resp else ""
    return str(resp)


def find_problems(
    results: Mapping[str, Any] | None,
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    expected_counts: Mapping[str, int],
    log_lines: Sequence[str] = (),
) -> list[str]:
    """Everything wrong with one lmms-eval run; empty when it can be trusted.

    - no results file (lmms-eval only warns when it cannot write one);
    - any swallowed error in the log (one failed generation already biases a score);
    - a task missing from the results, or evaluated on a different number of samples than its
      dataset (or ``limit``) holds;
    - a task whose predictions are all empty (generation failed without logging, or the model
      emits end-of-sequence at once: either way the score is not a measurement).
    """
    problems = [f"lmms-eval logged a swallowed error: {line.strip()[:300]}" for line in swallowed_errors(log_lines)]
    if results is None:
        return problems + ["lmms-eval wrote no results file"]
    n_samples = results.get("n-samples", {})
    for task, expected in expected_counts.items():
        if task not in results.get("results", {}):
            problems.append(f"{task}: missing from the results")
            continue
        effective = n_samples.get(task, {}).get("effective")
        if effective != expected:
            problems.append(f"{task}: evaluated {effective} samples, the dataset has {expected}")
        task_samples = samples.get(task)
        if task_samples is None:
            problems.append(f"{task}: no per-sample log")
            continue
        if len(task_samples) != expected:
            problems.append(f"{task}: {len(task_samples)} logged samples, expected {expected}")
        if task_samples and all(not _prediction(s).strip() for s in task_samples):
            problems.append(f"{task}: all {len(task_samples)} predictions are empty")
    return problems


def has_chat_template(checkpoint_dir) -> bool:
    """Whether a saved checkpoint carries a chat template (file or tokenizer/processor config key).

    Without one, lmms-eval's llava_hf silently prompts with its own Vicuna template - a prompt
    format the fine-tuned model never saw, which would score it near zero without any error.
    """
    import json
    from pathlib import Path

    d = Path(checkpoint_dir)
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        f = d / name
        if f.is_file():
            try:
                if json.loads(f.read_text(encoding="utf-8")).get("chat_template"):
                    return True
            except (ValueError, AttributeError):
                continue
    return False


def check_run(results, samples, expected_counts, log_lines=(), where: str = "") -> None:
    """Raise :class:`EvaluationError` naming ``where`` and every problem, if there is any."""
    problems = find_problems(results, samples, expected_counts, log_lines)
    if problems:
        head = f"{where}: " if where else ""
        raise EvaluationError(head + "lmms-eval run is not trustworthy:\n  - " + "\n  - ".join(problems))
