"""The map as a heat map: one row per (regime, budget), one column per method.

Colour = gap to random, only where the gap is resolved (Welch at 95% and beyond the regime's
MDD) in a calibrated cell; other cells stay white with the number in grey; blind rows are grey
and say so. A diverging scale centred on 0 (red = worse than random, blue = better)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from selfilter.report.plots import save_png


def plot_regime_map(m: Mapping[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [x for x in m["methods"] if x not in (m["reference"], "full")]
    rows = [(name, b, cell) for name, r in m["regimes"].items() for b, cell in r["cells"].items()]
    if not rows or not methods:
        raise ValueError("nothing to plot: no regime has results")
    gaps = np.full((len(rows), len(methods)), np.nan)
    shown = np.zeros_like(gaps, dtype=bool)
    for i, (_, _, cell) in enumerate(rows):
        for j, meth in enumerate(methods):
            c = cell["methods"].get(meth)
            if c is not None:
                gaps[i, j] = c["gap"]
                shown[i, j] = cell["status"] == "calibrated" and c["resolved"]
    finite = np.abs(gaps[np.isfinite(gaps)])
    vmax = float(finite.max()) if finite.size else 1.0
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 3.5, 0.45 * len(rows) + 1.8))
    ax.imshow(np.where(shown, gaps, np.nan), cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
    for i, (_, _, cell) in enumerate(rows):
        if cell["status"] != "calibrated":
            ax.axhspan(i - 0.5, i + 0.5, color="0.85", zorder=0)
        for j in range(len(methods)):
            if np.isfinite(gaps[i, j]):
                ax.text(j, i, f"{gaps[i, j]:+.2f}" + ("*" if shown[i, j] else ""), ha="center", va="center",
                        fontsize=8, color="black" if shown[i, j] else "0.45")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{n} @ {float(b):.0%}" + ("" if c["status"] == "calibrated" else f" ({c['status']})")
                                     for n, b, c in rows], fontsize=8)
    ax.set_title("Gap to random (overall); coloured and * = resolved; grey rows: no calibration", fontsize=9)
    fig.tight_layout()
    out = save_png(fig, Path(path))
    plt.close(fig)
    return out
