"""The selector map: per regime and budget, every method's gap to random, judged by the
report's own rule (selfilter.report.stats.welch) against that regime's own calibration.

- A (regime, budget) cell is **calibrated** when one of the sweep's controls beats the reference
  (random) by the Welch test: ``oracle_clean`` (trained only on samples known to be clean: the
  benchmark sees data quality) or ``oracle_hard`` (known-clean samples of the most crowded
  scenes first: the benchmark sees difficulty). **Blind** when they ran and none does (no method
  is ranked); **not established** when no control ran with two or more seeds. Why two: in a
  pool with 3% broken answers a clean-only random subset *is* nearly a random subset, so the
  cleanliness control cannot certify a low-noise cell however good the benchmark is.
- A method's gap is **resolved** when the Welch test separates it from random *and* it exceeds
  the regime's minimum detectable difference (the grid's MDD at that budget) - the heat map
  colours only those.
- The hypothesis is judged on the cells of its regimes where its **premise** holds: where its own
  control (``hypothesis.control``, e.g. ``oracle_hard``: hard, correct samples help) beats random;
  without one, on the calibrated cells. **Confirmed** when in every such cell one of its methods
  beats random (resolved, positive); **refuted** when none does in any; **mixed** otherwise;
  **not tested** when no cell qualifies - with the reason (premise absent, or blind / missing).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from selfilter.report.stats import welch

FULL_BUDGET = "1"


def _overall(entry: Mapping[str, Any]) -> dict[str, float]:
    return entry["metrics"]["overall"]


def _control_tests(methods: Mapping[str, Any], budget: str, ref_o: Mapping[str, Any],
                   controls: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each control that ran at ``budget``: its gap to the reference, p, and whether it beats it
    (None: fewer than two seeds on a side, the test cannot say)."""
    out = {}
    for name in controls:
        entry = methods.get(name, {}).get(budget)
        if entry is None:
            continue
        t = welch(_overall(entry), ref_o)
        beats = None if t["separated"] is None else bool(t["separated"] and t["diff"] > 0)
        out[name] = {"gap": t["diff"], "p": t["p"], "beats": beats}
    return out


def regime_cells(record: Mapping[str, Any], metrics: Mapping[str, Any], reference: str = "random",
                 controls: Sequence[str] | str = ("oracle_clean",)) -> dict[str, Any]:
    """Per budget: calibration status and each method's mean, half-width, gap and test."""
    controls = [controls] if isinstance(controls, str) else list(controls)
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
        tests = _control_tests(methods, budget, ref_o, controls)
        by = [c for c, t in tests.items() if t["beats"]]
        if by:
            status = "calibrated"
        elif any(t["beats"] is not None for t in tests.values()):
            status = "blind"
        else:
            status = "not established"
        first = tests.get(controls[0]) if controls else None
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
                          "resolved": resolved, "control": bool(entry.get("control", name in controls)),
                          "imperfect_share": entry.get("imperfect_share")}
        cells[budget] = {"status": status, "calibrated_by": by, "controls": tests, "mdd": mdd,
                         "n_seeds": resolution[budget].get("n_seeds"),
                         "reference_mean": ref_o["mean"],
                         "control_gap": None if first is None else first["gap"],
                         "control_p": None if first is None else first["p"],
                         "full_mean": None if full is None else _overall(full)["mean"],
                         "methods": rows}
    return cells


def _premise(cell: Mapping[str, Any], control: str | None) -> tuple[str | None, bool]:
    """(why this cell cannot test the hypothesis or None when it can, whether the reason is that
    the premise is absent - its control ran and does not beat random)."""
    if control is None:
        return (None if cell["status"] == "calibrated" else cell["status"]), False
    t = cell.get("controls", {}).get(control)
    if t is None:
        return f"{control} did not run", False
    if t["beats"] is None:
        return f"{control} has one seed", False
    if not t["beats"]:
        return f"premise absent: {control} does not beat random ({t['gap']:+.3f}, p = {t['p']:.3f})", True
    return None, False


def hypothesis_verdict(regimes: Mapping[str, Mapping[str, Any]], hypothesis: Mapping[str, Any]) -> dict[str, Any]:
    """Judge the hypothesis on the cells of its regimes where its premise holds, with the numbers."""
    control = hypothesis.get("control")
    evidence, wins, tested, absent = [], 0, 0, 0
    for name in hypothesis["regimes"]:
        entry = regimes.get(name)
        if entry is None:
            evidence.append({"regime": name, "budget": None, "status": "not run"})
            continue
        for budget, cell in entry["cells"].items():
            row: dict[str, Any] = {"regime": name, "budget": budget, "status": cell["status"], "mdd": cell["mdd"]}
            if control is not None and control in cell.get("controls", {}):
                row.update(control=control, control_gap=cell["controls"][control]["gap"],
                           control_p=cell["controls"][control]["p"])
            candidates = {m: cell["methods"][m] for m in hypothesis["methods"] if m in cell["methods"]}
            if candidates:
                best = max(candidates, key=lambda m: candidates[m]["gap"])
                row.update(best=best, gap=candidates[best]["gap"], p=candidates[best]["p"],
                           resolved=candidates[best]["resolved"])
            why, premise_absent = _premise(cell, control)
            if why is None and candidates:
                tested += 1
                won = any(c["resolved"] and c["gap"] > 0 for c in candidates.values())
                wins += won
                row["wins"] = won
            else:
                row["not_tested"] = why or "no hypothesis method ran"
                absent += premise_absent
            evidence.append(row)
    if tested == 0:
        status = "not tested"
    elif wins == tested:
        status = "confirmed"
    elif wins == 0:
        status = "refuted"
    else:
        status = "mixed"
    return {"text": hypothesis["text"], "control": control, "status": status, "cells_tested": tested,
            "cells_won": wins, "cells_premise_absent": absent, "evidence": evidence}


def _controls(spec: Mapping[str, Any]) -> list[str]:
    controls = spec.get("controls", spec.get("control", ["oracle_clean"]))  # "control": sweep files before oracle_hard
    return [controls] if isinstance(controls, str) else list(controls)


def build_map(entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], spec: Mapping[str, Any]) -> dict[str, Any]:
    """``entries``: (regime.json, metrics.json) per collected regime; ``spec``: the sweep file."""
    order = list(spec["regimes"])
    regimes: dict[str, Any] = {}
    for record, metrics in sorted(entries, key=lambda e: order.index(e[0]["name"]) if e[0]["name"] in order else 10**6):
        regimes[record["name"]] = {
            "describe": record.get("describe"), "noise": record.get("noise"), "overrides": record.get("overrides", {}),
            "code": record.get("code"),  # None: collected before code digests were recorded
            "machine": record.get("machine"),  # the CPU (model and the ISA flags that pick kernels)
            "pool": record.get("pool", {}), "judge": record.get("judge"),
            "cells": regime_cells(record, metrics, spec.get("reference", "random"), _controls(spec)),
        }
    methods: list[str] = []
    for r in regimes.values():
        for cell in r["cells"].values():
            methods += [m for m in cell["methods"] if m not in methods]
    return {"reference": spec.get("reference", "random"), "controls": _controls(spec),
            "methods": methods, "regimes": regimes, "not_run": [n for n in order if n not in regimes],
            "hypothesis": hypothesis_verdict(regimes, spec["hypothesis"])}


def _fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def render_markdown(m: Mapping[str, Any]) -> str:
    """reports/regimes.md."""
    h = m["hypothesis"]
    premise = (f" where its premise holds ({h['control']} - hard, correct samples first - beats random)"
               if h.get("control") else " that are calibrated")
    lines = ["# The selector map", "",
             f"Hypothesis (stated before the sweep ran): *{h['text']}*.", "",
             f"**{h['status'].upper()}** - judged on the cells of its regimes{premise}: one of its methods "
             f"beats random (Welch test at 95% and beyond the regime's minimum detectable difference) in "
             f"{h['cells_won']} of {h['cells_tested']}."
             + (f" The premise is absent in {h['cells_premise_absent']} cell(s)." if h.get("cells_premise_absent") else ""),
             ""]
    for e in h["evidence"]:
        if e.get("budget") is None:
            lines.append(f"- {e['regime']}: not run")
            continue
        ctl = (f"{e['control']} {_fmt(e['control_gap'], sign=True)} (p = {_fmt(e['control_p'])}); "
               if e.get("control") else "")
        best = (f"best {e['best']} {_fmt(e.get('gap'), sign=True)} vs random (p = {_fmt(e.get('p'), 3)}, "
                f"MDD {_fmt(e['mdd'])}{', resolved' if e.get('resolved') else ', not resolved'})") if "best" in e else "no hypothesis method ran"
        verdict = f" - not counted: {e['not_tested']}" if e.get("not_tested") else (" - a win" if e.get("wins") else " - no win")
        lines.append(f"- {e['regime']} at {float(e['budget']):.0%}: {e['status']}; {ctl}{best}{verdict}")
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
    versions: dict[str, list[str]] = {}
    for name, r in m["regimes"].items():
        key = f"code {r.get('code') or 'not recorded'} on {r.get('machine') or 'CPU not recorded'}"
        versions.setdefault(key, []).append(name)
    if len(versions) > 1 or any("not recorded" in v for v in versions):
        lines += ["", f"**The regimes come from {len(versions)} (code, CPU) combinations**: training this small "
                  "model is chaotic, so a rerun on other code or another instruction set is a new draw of each "
                  "run's seed noise - compare regimes of one combination: "
                  + "; ".join(f"{v}: {', '.join(names)}" for v, names in versions.items()) + "."]
    lines += ["", "## Gap to random, per regime and budget", "",
              "Each cell: the method's overall mean minus random's (3 decimals); `*` = resolved (Welch test "
              "at 95% and beyond the regime's MDD). A **blind** row: no control ("
              f"{', '.join(m['controls'])}) beat random there, so the benchmark cannot rank selectors in that "
              "regime - its numbers are shown but nothing is ranked. `calibrated (x)`: control x beat random.", ""]
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
            status = cell["status"] + (f" ({', '.join(cell['calibrated_by'])})" if cell.get("calibrated_by") else "")
            lines.append(f"| {name} | {float(budget):.0%} | {status} | {_fmt(cell['mdd'])} | "
                         f"{_fmt(cell['reference_mean'])} | " + " | ".join(vals) + " |")
    lines += ["", "Each regime's own comparison report (means, intervals, calibration) is in "
              "`reports/regimes/<regime>/`; docs/TESTBED.md says what each knob models.", ""]
    return "\n".join(lines)
