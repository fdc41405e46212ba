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


def save_png(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def plot_score_vs_budget(summary: Mapping[str, Any], path: str | Path, metric: str = "overall",
                         reference: str = "full") -> Path:
    """Each method's mean at each budget as a point with its interval as an error bar (methods
    side by side within a budget; lines join budgets only when the sweep has four or more, where
    a trend is worth reading); the full-data reference as a labelled line with its interval as a
    labelled band; controls hollow; the legend outside the data."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = score_vs_budget_rows(summary, metric)
    budgets = sorted({r["budget"] for r in rows if r["method"] != reference})
    methods = sorted({r["method"] for r in rows if r["method"] != reference},
                     key=lambda m: (any(r["control"] for r in rows if r["method"] == m), m))
    lines = len(budgets) >= 4
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["budget"])
        x = [budgets.index(r["budget"]) - 0.4 + width * (i + 0.5) for r in rs]
        y = [r["mean"] for r in rs]
        err = [[max(0.0, r["mean"] - r["ci_low"]) if math.isfinite(r["ci_low"]) else 0.0 for r in rs],
               [max(0.0, r["ci_high"] - r["mean"]) if math.isfinite(r["ci_high"]) else 0.0 for r in rs]]
        control = rs[0]["control"]
        ax.errorbar(x, y, yerr=err, fmt="o" + ("--" if lines and control else "-" if lines else ""), capsize=3,
                    markerfacecolor="none" if control else None, lw=1,
                    label=method + (" (control)" if control else "") + (" - one seed, no interval" if rs[0]["n"] < 2 else ""))
    ref = [r for r in rows if r["method"] == reference]
    if ref:
        r = ref[0]
        ax.axhline(r["mean"], color="black", lw=1.2, label=f"{reference} data ({r['budget'] * 100:g}%): {r['mean']:.3f}")
        if math.isfinite(r["ci_low"]):
            ax.axhspan(r["ci_low"], r["ci_high"], color="black", alpha=0.08, label=f"{reference} data, 95% CI")
    ax.set_xticks(range(len(budgets)))
    ax.set_xticklabels([f"{b * 100:g}%" for b in budgets])
    ax.set_xlim(-0.6, len(budgets) - 0.4)
    ax.set_xlabel("budget (share of the pool selected)")
    ax.set_ylabel(f"{metric} (mean over seeds, 95% CI)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    out = save_png(fig, Path(path))
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
        # asymmetric where the interval was cut to the metric's range
        errs = [[max(0.0, g["metrics"][k]["mean"] - g["metrics"][k]["ci_low"]) if k in g["metrics"]
                 and math.isfinite(g["metrics"][k]["ci_low"]) else 0.0 for k in metrics],
                [max(0.0, g["metrics"][k]["ci_high"] - g["metrics"][k]["mean"]) if k in g["metrics"]
                 and math.isfinite(g["metrics"][k]["ci_high"]) else 0.0 for k in metrics]]
        ax.bar([j + i * width for j in range(len(metrics))], means, width, yerr=errs, capsize=2,
               label=m + (" (control)" if g["control"] else ""), hatch="//" if g["control"] else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("score (mean, 95% CI over seeds)")
    ax.set_title(f"budget {float(budget) * 100:g}%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    out = save_png(fig, Path(path))
    plt.close(fig)
    return out
