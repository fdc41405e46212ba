"""The selector map: per regime and budget, every method's gap to random, judged by the
report's own rule (selfilter.report.stats.welch) against that regime's own calibration.

- A (regime, budget) cell is **calibrated** when the control (``oracle_clean``: trained only on
  samples known to be clean) beats the reference (random) by the Welch test; **blind** when it
  ran and does not (the benchmark cannot see data quality there: no method is ranked); **not
  established** when the control is missing or has one seed.
- A method's gap is **resolved** when the Welch test separates it from random *and* it exceeds
  the regime's minimum detectable difference (the grid's MDD at that budget) - the heat map
  colours only those.
- The hypothesis is **confirmed** when, in every calibrated cell of its regimes, one of its
  methods beats random (resolved, positive); **refuted** when none does in any; **mixed**
  otherwise; **not tested** when all its cells are blind or missing.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from selfilter.report.stats import welch

FULL_BUDGET = "1"


def _overall(entry: Mapping[str, Any]) -> dict[str, float]:
    return entry["metrics"]["overall"]


def regime_cells(record: Mapping[str, Any], metrics: Mapping[str, Any], reference: str = "random",
                 control: str = "oracle_clean") -> dict[str, Any]:
    """Per budget: calibration status and each method's mean, half-width, gap and test."""
    summary = metrics["summary"]
    methods, resolution = summary["methods"], summary.get("resolution", {})
    full = methods.get("full", {}).get(FULL_BUDGET)
    cells: dict[str, Any] = {}
    for budget in sorted((b for b in resolution if b != FULL_BUDGET), key=float):
        ref = methods.get(reference, {}).get(budget)
        if ref is None:
            continue
        ref_o = _overall(ref)
        mdd = float(resolution[budget]["mdd"])
        ctl = methods.get(control, {}).get(budget)
        if ctl is None:
            status, ctl_test = "not established", None
        else:
            ctl_test = welch(_overall(ctl), ref_o)
            if ctl_test["separated"] is None:
                status = "not established"
            else:
                status = "calibrated" if ctl_test["separated"] and ctl_test["diff"] > 0 else "blind"
        rows: dict[str, Any] = {}
        for name, by_budget in methods.items():
            entry = by_budget.get(budget)
            if entry is None:
                continue
            o = _overall(entry)
            test = welch(o, ref_o)
            resolved = bool(test["separated"]) and abs(test["diff"]) > mdd
            rows[name] = {"mean": o["mean"], "half_width": o.get("half_width"), "n_seeds": int(o["n"]),
                          "gap": test["diff"], "p": test["p"], "separated": test["separated"],
                          "resolved": resolved, "control": bool(entry.get("control", name == control)),
                          "imperfect_share": entry.get("imperfect_share")}
        cells[budget] = {"status": status, "mdd": mdd, "n_seeds": resolution[budget].get("n_seeds"),
                         "reference_mean": ref_o["mean"],
                         "control_gap": None if ctl_test is None else ctl_test["diff"],
                         "control_p": None if ctl_test is None else ctl_test["p"],
                         "full_mean": None if full is None else _overall(full)["mean"],
                         "methods": rows}
    return cells


def hypothesis_verdict(regimes: Mapping[str, Mapping[str, Any]], hypothesis: Mapping[str, Any]) -> dict[str, Any]:
    """Judge the hypothesis on the calibrated cells of its regimes, with the numbers behind it."""
    evidence, wins, tested = [], 0, 0
    for name in hypothesis["regimes"]:
        entry = regimes.get(name)
        if entry is None:
            evidence.append({"regime": name, "budget": None, "status": "not run"})
            continue
        for budget, cell in entry["cells"].items():
            row: dict[str, Any] = {"regime": name, "budget": budget, "status": cell["status"], "mdd": cell["mdd"]}
            candidates = {m: cell["methods"][m] for m in hypothesis["methods"] if m in cell["methods"]}
            if candidates:
                best = max(candidates, key=lambda m: candidates[m]["gap"])
                row.update(best=best, gap=candidates[best]["gap"], p=candidates[best]["p"],
                           resolved=candidates[best]["resolved"])
            if cell["status"] == "calibrated" and candidates:
                tested += 1
                won = any(c["resolved"] and c["gap"] > 0 for c in candidates.values())
                wins += won
                row["wins"] = won
            evidence.append(row)
    if tested == 0:
        status = "not tested"
    elif wins == tested:
        status = "confirmed"
    elif wins == 0:
        status = "refuted"
    else:
        status = "mixed"
    return {"text": hypothesis["text"], "status": status, "cells_tested": tested, "cells_won": wins,
            "evidence": evidence}


def build_map(entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], spec: Mapping[str, Any]) -> dict[str, Any]:
    """``entries``: (regime.json, metrics.json) per collected regime; ``spec``: the sweep file."""
    order = list(spec["regimes"])
    regimes: dict[str, Any] = {}
    for record, metrics in sorted(entries, key=lambda e: order.index(e[0]["name"]) if e[0]["name"] in order else 10**6):
        regimes[record["name"]] = {
            "describe": record.get("describe"), "noise": record.get("noise"), "overrides": record.get("overrides", {}),
            "pool": record.get("pool", {}), "judge": record.get("judge"),
            "cells": regime_cells(record, metrics, spec.get("reference", "random"), spec.get("control", "oracle_clean")),
        }
    methods: list[str] = []
    for r in regimes.values():
        for cell in r["cells"].values():
            methods += [m for m in cell["methods"] if m not in methods]
    return {"reference": spec.get("reference", "random"), "control": spec.get("control", "oracle_clean"),
            "methods": methods, "regimes": regimes, "not_run": [n for n in order if n not in regimes],
            "hypothesis": hypothesis_verdict(regimes, spec["hypothesis"])}


def _fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def render_markdown(m: Mapping[str, Any]) -> str:
    """reports/regimes.md."""
    h = m["hypothesis"]
    lines = ["# The selector map", "",
             f"Hypothesis (stated before the sweep ran): *{h['text']}*.", "",
             f"**{h['status'].upper()}** - {h['cells_won']} of {h['cells_tested']} calibrated cell(s) of its "
             "regimes show one of its methods beating random (Welch test at 95% and beyond the regime's "
             "minimum detectable difference).", ""]
    for e in h["evidence"]:
        if e.get("budget") is None:
            lines.append(f"- {e['regime']}: not run")
            continue
        best = (f"best {e['best']} {_fmt(e.get('gap'), sign=True)} vs random (p = {_fmt(e.get('p'), 3)}, "
                f"MDD {_fmt(e['mdd'])}{', resolved' if e.get('resolved') else ', not resolved'})") if "best" in e else "no hypothesis method ran"
        lines.append(f"- {e['regime']} at {float(e['budget']):.0%}: {e['status']}; {best}")
    lines += ["", "## Regimes", "",
              "| regime | what it models | noise | broken answers | near-dup | crowded scenes (5+) | judge | judge AUC | judge bal. acc. |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in m["regimes"].items():
        p, j = r["pool"], r.get("judge") or {}
        lines.append(f"| {name} | {r['describe']} | {r['noise']} | {_fmt(p.get('broken_share'), 2)} | "
                     f"{_fmt(p.get('near_duplicate_share'), 2)} | {_fmt(p.get('crowded_share'), 3)} | "
                     f"{j.get('view', '-')} | {_fmt(j.get('auc'))} | {_fmt(j.get('balanced_accuracy'))} |")
    if m["not_run"]:
        lines += ["", f"Not run yet: {', '.join(m['not_run'])} (the sweep resumes them: same command)."]
    lines += ["", "## Gap to random, per regime and budget", "",
              "Each cell: the method's overall mean minus random's (3 decimals); `*` = resolved (Welch test "
              "at 95% and beyond the regime's MDD). A **blind** row: the clean-data control did not beat "
              "random there, so the benchmark cannot rank selectors in that regime - its numbers are shown "
              "but nothing is ranked.", ""]
    methods = [x for x in m["methods"] if x not in (m["reference"], "full")]
    lines.append("| regime | budget | status | MDD | random | " + " | ".join(methods) + " |")
    lines.append("|---|---|---|---|---|" + "---|" * len(methods))
    for name, r in m["regimes"].items():
        for budget, cell in r["cells"].items():
            vals = []
            for meth in methods:
                c = cell["methods"].get(meth)
                if c is None:
                    vals.append("-")
                    continue
                star = "*" if c["resolved"] and cell["status"] == "calibrated" else ""
                vals.append(f"{_fmt(c['gap'], sign=True)}{star}")
            lines.append(f"| {name} | {float(budget):.0%} | {cell['status']} | {_fmt(cell['mdd'])} | "
                         f"{_fmt(cell['reference_mean'])} | " + " | ".join(vals) + " |")
    lines += ["", "Each regime's own comparison report (means, intervals, calibration) is in "
              "`reports/regimes/<regime>/`; docs/TESTBED.md says what each knob models.", ""]
    return "\n".join(lines)
