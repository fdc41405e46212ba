"""PNG plots (matplotlib, Agg: DVC's HTML plots need a CDN, these do not) and the rows of the
DVC plots data files. Functions take the summary from ``compare.summarize``."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfilter.io import atomic_path


def score_vs_budget_rows(summary: Mapping[str, Any], metric: str = "overall") -> list[dict[str, Any]]:
    """One row per (method, budget): mean and CI of ``metric`` - the DVC plots data."""
    rows = []
    for method, per_budget in sorted(summary["methods"].items()):
        for b, g in sorted(per_budget.items(), key=lambda kv: float(kv[0])):
            s = g["metrics"].get(metric)
            if s is None:
                continue
            rows.append({"method": method, "budget": float(b), "control": g["control"], "mean": s["mean"],
                         "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"]})
    return rows


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def plot_score_vs_budget(summary: Mapping[str, Any], path: str | Path, metric: str = "overall",
                         reference: str = "full") -> Path:
    """Score vs budget per method with 95% CI bands; the full-data reference as a horizontal
    band, controls dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = score_vs_budget_rows(summary, metric)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({r["method"] for r in rows}):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["budget"])
        if method == reference:
            r = rs[0]
            ax.axhline(r["mean"], color="black", lw=1, label=f"{method} ({r['budget'] * 100:g}%)")
            if math.isfinite(r["ci_low"]):
                ax.axhspan(r["ci_low"], r["ci_high"], color="black", alpha=0.08)
            continue
        x = [r["budget"] * 100 for r in rs]
        style = "--" if rs[0]["control"] else "-"
        line, = ax.plot(x, [r["mean"] for r in rs], style, marker="o", label=method + (" (control)" if rs[0]["control"] else ""))
        lo, hi = [r["ci_low"] for r in rs], [r["ci_high"] for r in rs]
        if all(math.isfinite(v) for v in lo + hi):
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("budget (% of pool)")
    ax.set_ylabel(f"{metric} (mean, 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_metric_bars(summary: Mapping[str, Any], budget: str, metrics: Sequence[str], path: str | Path) -> Path:
    """Grouped bars: each metric (x) for each method at ``budget``, with CI error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m, g in sorted(summary["methods"].items()) if budget in g]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * max(1, len(methods)) / 3), 4.5))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        g = summary["methods"][m][budget]
        means = [g["metrics"].get(k, {}).get("mean", float("nan")) for k in metrics]
        errs = [g["metrics"].get(k, {}).get("half_width", float("nan")) for k in metrics]
        errs = [e if math.isfinite(e) else 0.0 for e in errs]
        ax.bar([j + i * width for j in range(len(metrics))], means, width, yerr=errs, capsize=2,
               label=m + (" (control)" if g["control"] else ""), hatch="//" if g["control"] else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("score (mean, 95% CI over seeds)")
    ax.set_title(f"budget {float(budget) * 100:g}%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
