"""Does this benchmark tell the methods apart at all? The calibration checks the compare stage
writes to ``reports/calibration.json`` and the status the verdict and its exit code follow.

``calibrated`` only when every check ran and passed; ``not calibrated`` when one failed; ``not
established`` when one was skipped (too few seeds, a reference not run) - never read as passed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from selfilter.report.budgets import bkey
from selfilter.report.config import CompareConfig
from selfilter.report.stats import separated


def calibration_checks(summary: Mapping[str, Any], qtypes: Mapping[str, Mapping[str, Any]],
                       cfg: CompareConfig, *, left_out: Mapping[str, str] | None = None,
                       base: float | str | None = None) -> list[dict[str, Any]]:
    """The benchmark's calibration, each ``{"name", "status": pass|fail|skipped, "detail"}``:
    full beats random at the calibration budget by > k seed std on overall; so does the clean
    control (only where the data has the hidden labels it reads: a control ``left_out`` for what
    the data lacks is not a check of this data); full beats the base model before fine-tuning
    (``base``: its overall score, or why there is none) by > k seed std - a benchmark the
    fine-tune does not move is blind; every question type trained on full beats its
    most-common-answer baseline (the embedded benchmark's question types)."""
    methods = summary["methods"]
    b = bkey(cfg.calibration_budget)
    k = cfg.std_multiple

    def group(method, budget=None):
        per_budget = methods.get(method, {})
        if budget is None:  # the reference runs at its own budget (1.0)
            return next(iter(per_budget.values()), None)
        return per_budget.get(budget)

    checks = []
    baseline = group(cfg.baseline_method, b)
    pairs = [("full_beats_random", cfg.reference_method, None)]
    if cfg.clean_control not in (left_out or {}):
        pairs.append(("clean_control_beats_random", cfg.clean_control, b))
    for name, method, budget in pairs:
        g = group(method, budget)
        label = f"{method} vs {cfg.baseline_method}@{b}: overall"
        if g is None or baseline is None:
            checks.append({"name": name, "status": "skipped", "detail": f"{label}: not run"})
            continue
        a, r = g["metrics"]["overall"], baseline["metrics"]["overall"]
        if min(a["n"], r["n"]) < cfg.min_seeds:
            checks.append({"name": name, "status": "skipped",
                           "detail": f"{label}: fewer than {cfg.min_seeds} seeds"})
            continue
        ok, diff, thr = separated(a, r, k)
        checks.append({"name": name, "status": "pass" if ok else "fail",
                       "detail": f"{label}: {a['mean']:.4f} vs {r['mean']:.4f}, difference {diff:+.4f} "
                                 f"{'>' if ok else '<='} {k:g} x seed std = {thr:.4f}",
                       "difference": diff, "threshold": thr})
    full = group(cfg.reference_method)
    if base is not None and not isinstance(base, str):  # a base that could not be scored: a note, not a check
        checks.append(_beats_base(full, base, cfg))
    for qt, info in qtypes.items():
        if info.get("diagnostic"):
            continue  # outside overall, outside the calibration
        name = f"full_beats_majority[{qt}]"
        stats = full["metrics"].get(info["metric"]) if full else None
        if stats is None:
            checks.append({"name": name, "status": "skipped", "detail": f"{info['metric']}: not evaluated on full"})
            continue
        enough = info["n"] >= cfg.min_questions_per_type
        ok = stats["mean"] > info["majority_accuracy"] and enough
        checks.append({"name": name, "status": "pass" if ok else "fail",
                       "detail": f"{qt}: full {stats['mean']:.4f} vs always '{info['majority_answer']}' "
                                 f"{info['majority_accuracy']:.4f}, {info['n']} questions"
                                 + ("" if enough else f" (fewer than {cfg.min_questions_per_type}: one question "
                                                      f"moves the score by {1 / max(1, info['n']):.3f})"),
                       "difference": stats["mean"] - info["majority_accuracy"]})
    return checks


def _beats_base(full: Mapping[str, Any] | None, base: float, cfg: CompareConfig) -> dict[str, Any]:
    """Does fine-tuning on the full data move the benchmark above the base model? The base is one
    deterministic evaluation, so full's seeds carry the whole spread: mean - base > k x seed std."""
    name, k = "full_beats_base", cfg.std_multiple
    label = f"{cfg.reference_method} vs the base model: overall"
    if full is None:
        return {"name": name, "status": "skipped", "detail": f"{label}: {cfg.reference_method} not run"}
    a = full["metrics"]["overall"]
    if a["n"] < cfg.min_seeds:
        return {"name": name, "status": "skipped", "detail": f"{label}: fewer than {cfg.min_seeds} seeds"}
    diff, thr = a["mean"] - base, k * a["std"]
    ok = diff > thr
    return {"name": name, "status": "pass" if ok else "fail",
            "detail": f"{label}: {a['mean']:.4f} vs {base:.4f}, difference {diff:+.4f} {'>' if ok else '<='} "
                      f"{k:g} x seed std = {thr:.4f}"
                      + ("" if ok else " - the benchmark does not move with fine-tuning on this data (blind)"),
            "difference": diff, "threshold": thr}


def calibration_status(checks: Sequence[Mapping[str, Any]]) -> str:
    """``calibrated`` only when there are checks and every one ran and passed; ``not calibrated``
    when any failed; ``not established`` when any was skipped (or none could be made)."""
    if any(c["status"] == "fail" for c in checks):
        return NOT_CALIBRATED
    if not checks or any(c["status"] != "pass" for c in checks):
        return NOT_ESTABLISHED
    return CALIBRATED


CALIBRATED, NOT_CALIBRATED, NOT_ESTABLISHED = "calibrated", "not calibrated", "not established"
