"""comparison.md: the verdict sentences and the report's tables, from ``compare.summarize``'s summary.

Every "separated", "beats random" and "beats full" here is one test: the two-sided Welch t-test of
the two methods' seeds (``stats.welch``, docs/METHOD.md). With one seed there is no interval and
the order is never called established; equal means are ties.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfilter.report.budgets import bkey, budget_label
from selfilter.report.calibration import (
    NOT_CALIBRATED,
    NOT_ESTABLISHED,
    calibration_status,
)
from selfilter.report.config import CompareConfig
from selfilter.report.metric_info import better
from selfilter.report.stats import welch


def _pm(s: Mapping[str, float] | None, digits: int = 3) -> str:
    if s is None:
        return "-"
    if not math.isfinite(s.get("half_width", float("nan"))):
        return f"{s['mean']:.{digits}f} (n={s['n']})"
    if s.get("clipped"):  # the t-interval left the metric's range: show the part inside it
        return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"
    return f"{s['mean']:.{digits}f} ± {s['half_width']:.{digits}f}"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _picked(g: Mapping[str, Any]) -> str:
    """Mean number of known-imperfect records a method picked, by kind, and their share."""
    picked = g.get("imperfect_picked")
    if picked is None:
        return "-"
    total = math.fsum(picked.values())
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in picked.items() if v)
    return f"{total:.0f} of {g['n_selected']} ({_num(g.get('imperfect_share'), '{:.3f}')})" + (f": {kinds}" if kinds else "")



def calibration_line(checks: Sequence[Mapping[str, Any]]) -> str:
    """The one line under the verdict: calibrated / not calibrated / not established, and which
    checks failed or were skipped (a skipped check is never counted as passed)."""
    status = calibration_status(checks)
    counts = (f"{sum(c['status'] == 'pass' for c in checks)} passed, {sum(c['status'] == 'fail' for c in checks)} "
              f"failed, {sum(c['status'] == 'skipped' for c in checks)} skipped")
    if status == NOT_CALIBRATED:
        names = ", ".join(c["name"] for c in checks if c["status"] == "fail")
        return (f"Calibration: **not calibrated** ({counts}; failed: {names}) - read the comparison with that in mind.")
    if status == NOT_ESTABLISHED:
        skipped = "; ".join(f"{c['name']} ({c['detail'].split(': ')[-1]})" for c in checks if c["status"] == "skipped")
        return (f"Calibration: **not established** ({counts}" + (f"; skipped: {skipped}" if skipped else "; no check applies")
                + ") - nothing shows this benchmark can tell these methods apart.")
    return f"Calibration: calibrated ({counts})."


def _versus(a: Mapping[str, float], b: Mapping[str, float], cfg: CompareConfig) -> tuple[dict[str, Any], str]:
    """The Welch test of ``a`` against ``b`` and how the report says its outcome."""
    test = welch(a, b, cfg.confidence)
    level = f"{cfg.confidence:.0%}"
    if test["separated"] is None:
        return test, "one seed, no interval: the order of these two is not established"
    if test["separated"]:
        return test, f"separated at {level} (Welch t-test, p = {test['p']:.3g})"
    return test, f"not separated at {level} (Welch t-test, p = {test['p']:.3g}): the order of these two is not established"


def verdict_lines(summary: Mapping[str, Any], cfg: CompareConfig) -> list[str]:
    """Plain sentences: who wins at each budget (even when Self-Filter loses), and whether the
    Welch test separates the winner from the runner-up. One seed is never "separated"; equal
    means are a tie; a benchmark on which every method scores the same separates nothing."""
    methods = summary["methods"]
    lines = []
    for b, winner in sorted(summary["winners"].items(), key=lambda kv: float(kv[0])):
        ranked = sorted((m for m in methods if b in methods[m] and not methods[m][b]["control"]),
                        key=lambda m: (methods[m][b]["rank"], m))
        if winner == cfg.reference_method and len(ranked) == 1:
            continue  # the full-data reference alone at its budget: nothing to compare
        overall = {m: methods[m][b]["metrics"]["overall"] for m in ranked}
        tied = summary.get("ties", {}).get(b, [])
        if len(ranked) > 1 and len(tied) == len(ranked):
            lines.append(f"At {budget_label(b)}: the benchmark does not separate these methods - every one "
                         f"({', '.join(ranked)}) scores {overall[ranked[0]]['mean']:.3f} on overall.")
            continue
        if tied:
            rest = [m for m in ranked if m not in tied]
            lines.append(f"At {budget_label(b)}: **tie** between {', '.join(tied)} on the overall score "
                         f"({_pm(overall[tied[0]])}, equal means - no winner)"
                         + (f"; next {rest[0]} ({_pm(overall[rest[0]])}) - {_versus(overall[tied[0]], overall[rest[0]], cfg)[1]}."
                            if rest else "."))
        else:
            w = overall[winner]
            text = (f"At {budget_label(b)}: **{winner}** wins on the overall score ({_pm(w)}, "
                    f"{_num(methods[winner][b]['relative_to_full'], '{:.1f}')}% of full data)")
            if len(ranked) > 1:
                runner = ranked[1]
                text += f"; runner-up {runner} ({_pm(overall[runner])}) - {_versus(w, overall[runner], cfg)[1]}."
            lines.append(text)
        sf = [m for m in ranked if m.startswith("self_filter")]
        if sf and winner not in sf and not set(sf) & set(tied):
            best = min(sf, key=lambda m: methods[m][b]["rank"])
            lines.append(f"  Self-Filter does not win at {budget_label(b)}: its best variant, {best}, ranks "
                         f"{methods[best][b]['rank']} of {len(ranked)} ({_pm(methods[best][b]['metrics']['overall'])}).")
    # The paper's headline claim: a small subset beats training on the full data - decided by the
    # same test as every other comparison, never by the mean alone.
    full = next(iter(methods.get(cfg.reference_method, {}).values()), None)
    if full is not None:
        beat, above = [], []
        for m in methods:
            for b, g in methods[m].items():
                if m == cfg.reference_method or g["control"] or not g["relative_to_full"] > 100:
                    continue
                test, said = _versus(g["metrics"]["overall"], full["metrics"]["overall"], cfg)
                (beat if test["separated"] else above).append(
                    f"{m} at {budget_label(b)} ({g['relative_to_full']:.1f}%" + (f", p = {test['p']:.3g})" if test["separated"] else f"; {said.split(':')[0]})"))
        if beat:
            lines.append("Subsets that beat full-data training on the overall score: " + ", ".join(beat) + ".")
        else:
            lines.append("No selected subset beats full-data training on the overall score.")
        if above:
            lines.append("  Above full data on the mean but not shown to beat it: " + ", ".join(above) + ".")
    return lines


def render_markdown(summary: Mapping[str, Any], qtypes: Mapping[str, Mapping[str, Any]],
                    checks: Sequence[Mapping[str, Any]], costs: Mapping[str, Mapping[str, Any]],
                    recipe: Mapping[str, Any], cfg: CompareConfig, plots: Sequence[str] = (), *,
                    left_out: Mapping[str, str] | None = None, benchmark: Mapping[str, Any] | None = None,
                    notes: Sequence[str] = (), machine_time: Mapping[str, float] | None = None) -> str:
    methods = summary["methods"]
    budgets = sorted({b for m in methods.values() for b in m}, key=float)
    tasks = sorted({k.split("/", 1)[0] for m in methods.values() for g in m.values()
                    for k in g["metrics"] if "/" in k})
    primaries = [f"{t}/{cfg.primary_metrics[t]}" for t in tasks if t in cfg.primary_metrics]
    out = ["# Data selection comparison", ""]
    out += ["## Verdict", ""] + [f"- {line}" if not line.startswith("  ") else line for line in verdict_lines(summary, cfg)]
    out += ["", calibration_line(checks), ""]
    if left_out:
        out += ["## Left out", "", "Parts that need something this data lacks did not run (never fed a constant):", ""]
        out += [f"- {name}: left out - {why}" for name, why in sorted(left_out.items())] + [""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    out += ["## Recipe", ""]
    if benchmark:
        out.append(f"- Benchmark: **{benchmark.get('name')}** - {benchmark.get('description', '')} "
                   f"(tasks: {', '.join(benchmark.get('tasks', []))}).")
    out += [f"- Fine-tuning recipe: **{recipe.get('recipe', 'unknown')}**"
            + (f" ({recipe['detail']})" if recipe.get("detail") else "") + ".",
            (f"- Scores: mean ± half-width of the {cfg.confidence:.0%} t-interval over seeds; "
            f"overall = mean of each task's primary metric "
            f"({', '.join(x for x in primaries if x.split('/', 1)[0] not in cfg.diagnostic_tasks)}); "
            f"relative to full = overall / {cfg.reference_method}'s overall."),
            (f"- Separated, beats {cfg.baseline_method}, beats full: one rule, a two-sided Welch t-test of the two "
             f"methods' seeds at {cfg.confidence:.0%}; with one seed there is no interval and no order is established."),
            "- Controls (read the hidden imperfection labels) are shown for calibration and never ranked.", ""]
    base = cfg.baseline_method
    head = ["method", "seeds", "overall", f"vs {base}", "% of full", "rank", *primaries, "imperfect picked (share)"]
    resolution = summary.get("resolution", {})
    for b in budgets:
        res = resolution.get(b, {})
        mdd = res.get("mdd", float("nan"))
        out += [f"## Budget {budget_label(b)}", ""]
        if math.isfinite(mdd):
            out += [(f"Minimum detectable difference of this grid at {budget_label(b)}: **{mdd:.3f}** on overall "
                     f"({res['confidence']:.0%}, two-sided t-test of two methods with {res['n_seeds']} seeds each; "
                     f"pooled seed std {res['pooled_std']:.3f}, {res['dof']} degrees of freedom): the smallest gap "
                     f"this many seeds can resolve. `vs {base}` marks gaps the Welch test separates with *."), ""]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rows = [(m, methods[m][b]) for m in methods if b in methods[m]]
        rows.sort(key=lambda mg: (mg[1]["control"], mg[1].get("rank", 10**6), mg[0]))
        ref = methods.get(base, {}).get(b)
        for m, g in rows:
            name = f"{m} (control)" if g["control"] else m
            gap = "-"
            if ref is not None and m != base:
                test = welch(g["metrics"]["overall"], ref["metrics"]["overall"], cfg.confidence)
                gap = f"{test['diff']:+.3f}" + ("*" if test["separated"] else "")
            cells = [name, str(len(g["seeds"])), _pm(g["metrics"]["overall"]), gap,
                     _num(g["relative_to_full"], "{:.1f}"), "-" if g["control"] else str(g.get("rank", "-")),
                     *[_pm(g["metrics"].get(p)) for p in primaries], _picked(g)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if qtypes:
        cb = bkey(cfg.calibration_budget)
        shown = [m for m in methods if cb in methods[m]]
        out += ["## Question types vs their most-common-answer baseline", "",
                (f"Accuracy per question type; baseline = always giving the type's most common answer. "
                f"Methods at {budget_label(cb)} unless named full. Types marked (diagnostic) belong to "
                f"tasks outside overall and outside the calibration ({', '.join(cfg.diagnostic_tasks) or 'none'})."), "",
                "| type | n | baseline (answer) | full | " + " | ".join(shown) + " |",
                "|" + "---|" * (4 + len(shown))]
        full = next(iter(methods.get(cfg.reference_method, {}).values()), None)
        for qt, info in qtypes.items():
            cells = [qt + (" (diagnostic)" if info.get("diagnostic") else ""), str(info["n"]),
                     f"{info['majority_accuracy']:.3f} ({info['majority_answer']})",
                     _pm(full["metrics"].get(info["metric"])) if full else "-"]
            cells += [_pm(methods[m][cb]["metrics"].get(info["metric"])) for m in shown]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Cost", "", ("Selection wall time per subset (from selections/*/meta.json; deterministic methods "
            "are computed once per budget), judge usage (judge/usage.json, for methods that read the ratings), "
            "fine-tuning wall time and steps per run (runs/*/train_log.json). Scoring: the model-pass stage a "
            "method's scores come from (el2n, ifd, less; metrics.json), once for all subsets: wall seconds "
            "(passes over the pool)."), "",
            "| method | budget | selection s | judge requests | judge tokens | training s | steps | scoring s (passes) |",
            "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        for b in budgets:
            if b not in methods[m]:
                continue
            g, c = methods[m][b], costs.get(m, {})
            sc = g.get("scoring") or {}
            passes = "-" if sc.get("model_passes") is None else sc["model_passes"]
            scoring = f"{sc['wall_s']:.1f} ({passes})" if sc.get("wall_s") is not None else "-"
            out.append(f"| {m} | {budget_label(b)} | {_num(g['selection_wall_s'], '{:.3f}')} | "
                       f"{c.get('requests', '-')} | {c.get('tokens', '-')} | {_num(g['train_wall_s'])} | "
                       f"{_num(g['train_steps'], '{:.0f}')} | {scoring} |")
    if machine_time and len(machine_time) > 1:  # the grid ran on several workers (flows/grid.py)
        total = sum(machine_time.values())
        out += ["", f"Fine-tuning machine time summed over the grid's workers: {total:.1f} s "
                    f"({', '.join(f'{k} {v:.1f} s' for k, v in machine_time.items())})."]
    out += ["", "## Calibration checks", ""]
    for c in checks:
        out.append(f"- **{c['status'].upper()}** `{c['name']}`: {c['detail']}")
    out += [""]
    for b in budgets:
        names = [m for m in methods if b in methods[m]]
        keys = sorted(set().union(*(methods[m][b]["metrics"] for m in names)))
        out += [f"## All metrics at {budget_label(b)}", "", "| metric | " + " | ".join(names) + " |",
                "|" + "---|" * (1 + len(names))]
        for k in keys:
            out.append(f"| {k} ({better(k).split()[0]}) | " + " | ".join(_pm(methods[m][b]["metrics"].get(k)) for m in names) + " |")
        out.append("")
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(out)


def to_html(markdown_text: str, folder: Path) -> str:
    """comparison.md as one self-contained HTML page: tables rendered, every plot embedded as a
    data URI (relative image paths are read from ``folder``), so MLflow's artifact preview and a
    browser show the pictures without the plots folder."""
    import base64
    import re

    import markdown as md

    def embed(m: re.Match) -> str:
        src = Path(folder) / m.group(2)
        if not src.is_file():
            return m.group(0)
        data = base64.b64encode(src.read_bytes()).decode("ascii")
        return f"![{m.group(1)}](data:image/png;base64,{data})"

    body = md.markdown(re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", embed, markdown_text), extensions=["tables"])
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;font-size:0.85em;display:block;overflow-x:auto}"
             "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;white-space:nowrap}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Data selection comparison</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")
