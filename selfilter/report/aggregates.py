"""What MLflow shows to rank methods: one aggregate per (method, budget) and a few headline
numbers for the pipeline run, from ``reports/metrics.json``'s summary.

An aggregate holds the overall mean (under the same ``overall`` key as the per-seed runs, so one
sort ranks both), its spread and interval, the number of seeds, the gap to the baseline and
whether the report's one rule (the Welch test) separates it, and each benchmark metric's mean.
The per-seed runs stay as they are; the flattened summary stays an artifact (metrics.json).
No run gets more than ``MAX_METRICS`` metrics: MLflow's column picker and metrics tab are
unreadable with thousands.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from selfilter.report.budgets import bkey
from selfilter.report.stats import welch

MAX_METRICS = 200


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def aggregate_rows(summary: Mapping[str, Any], baseline: str = "random", confidence: float = 0.95) -> list[dict[str, Any]]:
    """One ``{"method", "budget", "params", "metrics"}`` per (method, budget) of the summary.
    Undefined numbers (one seed's interval) are left out rather than logged as NaN."""
    rows = []
    methods = summary.get("methods", {})
    for method, per in sorted(methods.items()):
        for b, g in sorted(per.items(), key=lambda kv: float(kv[0])):
            o = g["metrics"]["overall"]
            metrics: dict[str, float | None] = {
                "overall": _num(o["mean"]), "overall_std": _num(o.get("std")), "overall_ci_low": _num(o.get("ci_low")),
                "overall_ci_high": _num(o.get("ci_high")), "n_seeds": float(o["n"]),
                "relative_to_full": _num(g.get("relative_to_full")), "rank": _num(g.get("rank")),
                "imperfect_share": _num(g.get("imperfect_share")),
            }
            base = methods.get(baseline, {}).get(b)
            if base is not None and method != baseline:
                test = welch(o, base["metrics"]["overall"], confidence)
                metrics[f"gap_to_{baseline}"] = _num(test["diff"])
                if test["separated"] is not None:
                    metrics[f"separated_from_{baseline}"] = float(test["separated"])
                    metrics[f"p_vs_{baseline}"] = _num(test["p"])
            kept = {k: v for k, v in metrics.items() if v is not None}
            for k in sorted(k for k in g["metrics"] if "/" in k):
                if len(kept) >= MAX_METRICS:
                    break
                v = _num(g["metrics"][k]["mean"])
                if v is not None:
                    kept[k] = v
            rows.append({"method": method, "budget": float(b),
                         "params": {"method": method, "budget": bkey(b), "n_seeds": str(int(o["n"])),
                                    "control": str(bool(g.get("control"))).lower()},
                         "metrics": kept})
    return rows


def headline(summary: Mapping[str, Any], n_runs: int) -> dict[str, float]:
    """The pipeline run's few metrics: calibrated (1/0), the number of runs, full data's overall,
    and per budget the best non-control overall mean."""
    out: dict[str, float] = {"calibrated": float(summary.get("calibration_status") == "calibrated"),
                             "runs": float(n_runs)}
    ref = _num(summary.get("reference_overall"))
    if ref is not None:
        out["full_overall"] = ref
    best: dict[str, float] = {}
    for per in summary.get("methods", {}).values():
        for b, g in per.items():
            v = _num(g["metrics"]["overall"]["mean"])
            if v is not None and not g.get("control") and float(b) < 1.0:
                best[b] = max(best.get(b, -math.inf), v)
    out.update({f"best_overall_b{b}": v for b, v in sorted(best.items(), key=lambda kv: float(kv[0]))})
    return out
