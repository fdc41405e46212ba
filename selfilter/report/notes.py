"""Anomalies the report states instead of hiding: a metric every method scores the same on, a
method that scores exactly 0 on a task others score on, a selector whose picks are all known
imperfect records. Each note names the metric's better direction and, where the pipeline can
tell, the likely cause. Pure functions over ``compare.summarize``'s summary.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from selfilter.report.budgets import budget_label
from selfilter.report.metric_info import better
from selfilter.report.stats import EQUAL


def anomaly_notes(summary: Mapping[str, Any]) -> list[str]:
    """One sentence per anomaly, in a stable order."""
    methods = summary["methods"]
    groups = [(m, b, g) for m, per in sorted(methods.items()) for b, g in sorted(per.items(), key=lambda kv: float(kv[0]))]
    notes: list[str] = []
    keys = sorted(set().union(*(g["metrics"] for _, _, g in groups))) if groups else []
    # 1. metrics that do not separate anything: every group, full and controls included, the same
    flat: dict[float, list[str]] = {}
    for k in keys:
        means = [g["metrics"][k]["mean"] for _, _, g in groups if k in g["metrics"]]
        if len(means) > 1 and max(means) - min(means) <= EQUAL:
            flat.setdefault(round(means[0], 9), []).append(k)
    for value, names in sorted(flat.items()):
        shown = ", ".join(f"`{k}` ({better(k)})" for k in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        cause = (" - likely cause: the answers never match the task's expected format, or the question type "
                 "is not learned at this size" if value == 0 else "")
        notes.append(f"Every method, full data included, scores {value:.3f} on {shown}: "
                     f"{'this metric does' if len(names) == 1 else 'these metrics do'} not separate the methods"
                     f"{cause}.")
    flat_keys = {k for names in flat.values() for k in names}
    # 2. a method at exactly 0 on a metric another method scores on
    for k in keys:
        if k in flat_keys or k == "overall":
            continue
        top = max((g["metrics"][k]["mean"] for _, _, g in groups if k in g["metrics"]), default=0.0)
        zero = [(m, b) for m, b, g in groups if k in g["metrics"] and g["metrics"][k]["mean"] == 0 and not g["control"]]
        if zero and top > 0 and better(k) == "higher is better":
            where = ", ".join(f"{m} at {budget_label(b)}" for m, b in zero[:6]) + (f" and {len(zero) - 6} more" if len(zero) > 6 else "")
            notes.append(f"`{k}` ({better(k)}): {where} score exactly 0 while another method reaches {top:.3f} - "
                         f"check that subset's answers on this task before reading its rank.")
    # 3. selectors whose picks are all known imperfect records
    for m, b, g in groups:
        share = g.get("imperfect_share")
        if share is not None and share >= 1 - EQUAL and not g["control"]:
            notes.append(f"{m} at {budget_label(b)}: every pick ({g['n_selected']} of {g['n_selected']}) is a known "
                         f"imperfect record (hidden labels) - it ranks broken records first.")
    return notes
