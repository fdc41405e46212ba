"""The comparison: which subset should I train on, with evidence.

Reading (``load_runs`` and friends) is kept apart from the pure parts: ``summarize`` (mean and
t-based CI over seeds for every metric, relative-to-full, ranks), ``question_types`` (each
question type next to its most-common-answer baseline), ``calibration_checks`` and
``render_markdown``. ``build_report`` ties them together for the stage.

Controls (``meta.json: "control": true``, i.e. ``oracle_clean``, which reads the hidden labels)
are summarised and shown, never ranked and never named a winner.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfilter.evaluation.metrics import majority_baseline
from selfilter.io import read_json, read_jsonl
from selfilter.report.config import CompareConfig
from selfilter.report.stats import (min_detectable_difference, pooled_std, ranks, relative_to, seed_stats,
                                    separated)

MANIFEST_KEYS = ("method", "budget", "seed", "n_selected", "selection", "checkpoint", "eval", "metrics")


@dataclass
class Run:
    """One (method, budget, seed): the manifest fields plus what the cost/quality tables need."""
    method: str
    budget: float
    seed: int
    n_selected: int
    selection: str
    checkpoint: str
    eval: str
    metrics: dict[str, float]
    control: bool = False
    n_pool: int | None = None
    selection_wall_s: float | None = None
    scoring: dict[str, Any] | None = None  # model-pass scoring stage the selection read (wall_s, model_passes)
    train: dict[str, Any] = field(default_factory=dict)   # train_log.json minus its per-step log
    uids: list[int] | None = None

    def manifest(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in MANIFEST_KEYS}


# ---------------------------------------------------------------- pure parts

def overall_score(metrics: Mapping[str, float], primary: Mapping[str, str], where: str = "",
                  diagnostic: Iterable[str] = ()) -> float:
    """Mean of each benchmark task's primary score (tasks = prefixes of ``task/metric`` keys),
    diagnostic tasks left out."""
    skip = set(diagnostic)
    tasks = sorted({k.split("/", 1)[0] for k in metrics if "/" in k} - skip)
    if not tasks:
        raise ValueError(f"{where}: no task metrics")
    scores = []
    for task in tasks:
        if task not in primary:
            raise ValueError(f"{where}: task '{task}' has no primary metric; add it to compare.primary_metrics")
        key = f"{task}/{primary[task]}"
        if key not in metrics:
            raise ValueError(f"{where}: primary metric '{key}' missing (compare.primary_metrics.{task})")
        scores.append(metrics[key])
    return math.fsum(scores) / len(scores)


def group_runs(runs: Iterable[Run]) -> dict[tuple[str, float], list[Run]]:
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.method, r.budget)].append(r)
    return {k: sorted(v, key=lambda r: r.seed) for k, v in sorted(groups.items())}


def summarize(runs: Sequence[Run], cfg: CompareConfig,
              kind_by_uid: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Per (method, budget): stats over seeds of every metric, relative-to-full (%) of the
    overall score, rank among non-control methods at that budget, imperfect share; winners."""
    groups = group_runs(runs)
    ref = [g for (m, _), g in groups.items() if m == cfg.reference_method]
    ref_overall = seed_stats([r.metrics["overall"] for r in ref[0]], cfg.confidence)["mean"] if ref else float("nan")
    rows: dict[str, dict[str, Any]] = defaultdict(dict)
    for (method, budget), group in groups.items():
        keys = sorted(set().union(*(r.metrics for r in group)))
        entry: dict[str, Any] = {
            "control": any(r.control for r in group),
            "seeds": [r.seed for r in group],
            "n_selected": group[0].n_selected,
            "metrics": {k: seed_stats([r.metrics[k] for r in group if k in r.metrics], cfg.confidence) for k in keys},
        }
        entry["relative_to_full"] = relative_to(entry["metrics"]["overall"]["mean"], ref_overall)
        if kind_by_uid is not None and all(r.uids is not None for r in group):
            shares = [imperfect_share(r.uids, kind_by_uid) for r in group]
            entry["imperfect_share"] = seed_stats(shares, cfg.confidence)["mean"]
            counts = [imperfect_counts(r.uids, kind_by_uid) for r in group]
            kinds = sorted(set().union(*counts))
            entry["imperfect_picked"] = {k: math.fsum(c.get(k, 0) for c in counts) / len(counts) for k in kinds}
        walls = [r.selection_wall_s for r in group if r.selection_wall_s is not None]
        entry["selection_wall_s"] = math.fsum(walls) / len(walls) if walls else None
        entry["scoring"] = group[0].scoring
        trains = [r.train.get("wall_s") for r in group if r.train.get("wall_s") is not None]
        entry["train_wall_s"] = math.fsum(trains) / len(trains) if trains else None
        steps = [r.train.get("steps") for r in group if r.train.get("steps") is not None]
        entry["train_steps"] = math.fsum(steps) / len(steps) if steps else None
        rows[method][_bkey(budget)] = entry
    # Ranks per budget among methods (controls excluded); the reference method competes only at its budget.
    winners, resolution = {}, {}
    for b in sorted({budget for _, budget in groups}):
        contenders = {m: rows[m][_bkey(b)]["metrics"]["overall"]["mean"]
                      for (m, bb) in groups if bb == b and not rows[m][_bkey(b)]["control"]}
        for m, rk in ranks(contenders).items():
            rows[m][_bkey(b)]["rank"] = rk
        if contenders:
            winners[_bkey(b)] = min(contenders, key=lambda m: (rows[m][_bkey(b)]["rank"], m))
        resolution[_bkey(b)] = grid_resolution([rows[m][_bkey(b)]["metrics"]["overall"]
                                                for (m, bb) in groups if bb == b], cfg.confidence)
    return {"reference_overall": ref_overall, "methods": dict(rows), "winners": winners, "resolution": resolution}


def grid_resolution(overall: Sequence[Mapping[str, float]], confidence: float) -> dict[str, float]:
    """What one budget of the grid can resolve: the pooled seed std of ``overall`` over its
    (method) groups and the minimum detectable difference between two methods at the grid's
    number of seeds (the smallest group's, the conservative choice)."""
    std, dof = pooled_std(overall)
    seeds = min((int(g["n"]) for g in overall), default=0)
    return {"pooled_std": std, "dof": dof, "n_seeds": seeds,
            "mdd": min_detectable_difference(std, seeds, confidence), "confidence": confidence}


def _bkey(budget: float) -> str:
    return f"{float(budget):g}"


def imperfect_counts(uids: Sequence[int], kind_by_uid: Mapping[int, str]) -> dict[str, int]:
    """How many selected records carry each known imperfection (``clean`` not counted)."""
    missing = [u for u in uids if u not in kind_by_uid]
    if missing:
        raise ValueError(f"uid={missing[0]}: no hidden imperfection label")
    counts: dict[str, int] = defaultdict(int)
    for u in uids:
        if kind_by_uid[u] != "clean":
            counts[kind_by_uid[u]] += 1
    return dict(sorted(counts.items()))


def imperfect_share(uids: Sequence[int], kind_by_uid: Mapping[int, str]) -> float:
    """Share of selected records whose hidden label is not ``clean``."""
    if not uids:
        return float("nan")
    missing = [u for u in uids if u not in kind_by_uid]
    if missing:
        raise ValueError(f"uid={missing[0]}: no hidden imperfection label")
    return sum(1 for u in uids if kind_by_uid[u] != "clean") / len(uids)


def question_types(bench: Mapping[str, Sequence[Mapping[str, Any]]],
                   diagnostic: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Each question type of the embedded benchmarks with the metric that scores it, the
    accuracy of always giving its most common answer (normalised like the scorer does), and
    whether its task is diagnostic (outside ``overall`` and the calibration)."""
    out: dict[str, dict[str, Any]] = {}
    for name, task in (("vqa", "shapes_vqa"), ("binding", "shapes_binding")):
        by_qtype: dict[str, list] = defaultdict(list)
        for row in bench.get(name, ()):
            by_qtype[row["qtype"]].append(row["answer"])
        for qtype, answers in sorted(by_qtype.items()):
            out[f"{name}/{qtype}"] = {"metric": f"{task}/acc_{qtype}", "answers": answers}
    if bench.get("count"):
        out["count"] = {"metric": "shapes_count/exact_match", "answers": [r["answer"] for r in bench["count"]]}
    by_split: dict[str, list] = defaultdict(list)
    for row in bench.get("pope", ()):
        by_split[row["split"]].append(row["answer"])
    for split, answers in sorted(by_split.items()):
        out[f"pope/{split}"] = {"metric": f"shapes_pope/accuracy_{split}", "answers": answers}
    skip = set(diagnostic)
    for qt in out.values():
        answers = qt.pop("answers")
        qt["majority_answer"], qt["majority_accuracy"] = majority_baseline(answers)
        qt["n"] = len(answers)
        qt["diagnostic"] = qt["metric"].split("/", 1)[0] in skip
    return out


def calibration_checks(summary: Mapping[str, Any], qtypes: Mapping[str, Mapping[str, Any]],
                       cfg: CompareConfig) -> list[dict[str, Any]]:
    """The testbed's calibration (issue 4), each ``{"name", "status": pass|fail|skipped, "detail"}``:
    full beats random at the calibration budget by > k seed std on overall; so does the clean
    control; every question type trained on full beats its most-common-answer baseline."""
    methods = summary["methods"]
    b = _bkey(cfg.calibration_budget)
    k = cfg.std_multiple

    def group(method, budget=None):
        per_budget = methods.get(method, {})
        if budget is None:  # the reference runs at its own budget (1.0)
            return next(iter(per_budget.values()), None)
        return per_budget.get(budget)

    checks = []
    baseline = group(cfg.baseline_method, b)
    for name, method, budget in [("full_beats_random", cfg.reference_method, None),
                                 ("clean_control_beats_random", cfg.clean_control, b)]:
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


# ---------------------------------------------------------------- markdown

def _pm(s: Mapping[str, float] | None, digits: int = 3) -> str:
    if s is None:
        return "-"
    if not math.isfinite(s.get("half_width", float("nan"))):
        return f"{s['mean']:.{digits}f} (n={s['n']})"
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


def _budget_label(b: str) -> str:
    return f"{float(b) * 100:g}%"


def verdict_lines(summary: Mapping[str, Any], cfg: CompareConfig) -> list[str]:
    """Plain sentences: who wins at each budget (even when Self-Filter loses), and whether the
    winner's interval separates it from the runner-up."""
    methods = summary["methods"]
    lines = []
    for b, winner in sorted(summary["winners"].items(), key=lambda kv: float(kv[0])):
        ranked = sorted((m for m in methods if b in methods[m] and not methods[m][b]["control"]),
                        key=lambda m: methods[m][b]["rank"])
        if winner == cfg.reference_method and len(ranked) == 1:
            continue  # the full-data reference alone at its budget: nothing to compare
        w = methods[winner][b]["metrics"]["overall"]
        text = (f"At {_budget_label(b)}: **{winner}** wins on the overall score ({_pm(w)}, "
                f"{_num(methods[winner][b]['relative_to_full'], '{:.1f}')}% of full data)")
        if len(ranked) > 1:
            runner = ranked[1]
            r = methods[runner][b]["metrics"]["overall"]
            overlap = (math.isfinite(w["ci_low"]) and math.isfinite(r["ci_high"]) and w["ci_low"] <= r["ci_high"])
            text += (f"; runner-up {runner} ({_pm(r)})"
                     + (" - the 95% intervals overlap, so the order of these two is not established." if overlap
                        else " - separated at 95%."))
            mdd = summary.get("resolution", {}).get(b, {}).get("mdd", float("nan"))
            if math.isfinite(mdd):
                gap = w["mean"] - r["mean"]
                text += (f" Gap {gap:.3f} {'>' if gap > mdd else '<='} minimum detectable difference {mdd:.3f}"
                         + (": resolved." if gap > mdd else ": not resolved by this grid."))
        lines.append(text)
        sf = [m for m in ranked if m.startswith("self_filter")]
        if sf and winner not in sf:
            best = min(sf, key=lambda m: methods[m][b]["rank"])
            lines.append(f"  Self-Filter does not win at {_budget_label(b)}: its best variant, {best}, ranks "
                         f"{methods[best][b]['rank']} of {len(ranked)} ({_pm(methods[best][b]['metrics']['overall'])}).")
    # The paper's headline claim: a small subset beats training on the full data.
    beat = [(m, b) for m in methods for b, g in methods[m].items()
            if m != cfg.reference_method and not g["control"] and g["relative_to_full"] > 100]
    if math.isfinite(summary.get("reference_overall", float("nan"))):
        lines.append("No selected subset beats full-data training on the overall score." if not beat else
                     "Subsets that beat full-data training on the overall score: "
                     + ", ".join(f"{m} at {_budget_label(b)} ({methods[m][b]['relative_to_full']:.1f}%)" for m, b in beat) + ".")
    return lines


def render_markdown(summary: Mapping[str, Any], qtypes: Mapping[str, Mapping[str, Any]],
                    checks: Sequence[Mapping[str, Any]], costs: Mapping[str, Mapping[str, Any]],
                    recipe: Mapping[str, Any], cfg: CompareConfig, plots: Sequence[str] = ()) -> str:
    methods = summary["methods"]
    budgets = sorted({b for m in methods.values() for b in m}, key=float)
    tasks = sorted({k.split("/", 1)[0] for m in methods.values() for g in m.values()
                    for k in g["metrics"] if "/" in k})
    primaries = [f"{t}/{cfg.primary_metrics[t]}" for t in tasks if t in cfg.primary_metrics]
    out = ["# Data selection comparison", ""]
    out += ["## Verdict", ""] + [f"- {line}" if not line.startswith("  ") else line for line in verdict_lines(summary, cfg)]
    failed = [c for c in checks if c["status"] == "fail"]
    out += ["", f"Calibration: {sum(c['status'] == 'pass' for c in checks)} passed, {len(failed)} failed, "
                f"{sum(c['status'] == 'skipped' for c in checks)} skipped"
                + (" - **the testbed is not calibrated; read the comparison with that in mind.**" if failed else "."), ""]
    out += ["## Recipe", "", f"- Fine-tuning recipe: **{recipe.get('recipe', 'unknown')}**"
            + (f" ({recipe['detail']})" if recipe.get("detail") else "") + ".",
            (f"- Scores: mean ± half-width of the {cfg.confidence:.0%} t-interval over seeds; "
            f"overall = mean of each task's primary metric "
            f"({', '.join(x for x in primaries if x.split('/', 1)[0] not in cfg.diagnostic_tasks)}); "
            f"relative to full = overall / {cfg.reference_method}'s overall."),
            "- Controls (read the hidden imperfection labels) are shown for calibration and never ranked.", ""]
    base = cfg.baseline_method
    head = ["method", "seeds", "overall", f"vs {base}", "% of full", "rank", *primaries, "imperfect picked (share)"]
    resolution = summary.get("resolution", {})
    for b in budgets:
        res = resolution.get(b, {})
        mdd = res.get("mdd", float("nan"))
        out += [f"## Budget {_budget_label(b)}", ""]
        if math.isfinite(mdd):
            out += [(f"Minimum detectable difference of this grid at {_budget_label(b)}: **{mdd:.3f}** on overall "
                     f"({res['confidence']:.0%}, two-sided t-test of two methods with {res['n_seeds']} seeds each; "
                     f"pooled seed std {res['pooled_std']:.3f}). A gap smaller than it is not resolved; "
                     f"`vs {base}` marks resolved gaps with *."), ""]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rows = [(m, methods[m][b]) for m in methods if b in methods[m]]
        rows.sort(key=lambda mg: (mg[1]["control"], mg[1].get("rank", 10**6), mg[0]))
        ref = methods.get(base, {}).get(b)
        for m, g in rows:
            name = f"{m} (control)" if g["control"] else m
            gap = "-"
            if ref is not None and m != base:
                d = g["metrics"]["overall"]["mean"] - ref["metrics"]["overall"]["mean"]
                gap = f"{d:+.3f}" + ("*" if math.isfinite(mdd) and abs(d) > mdd else "")
            cells = [name, str(len(g["seeds"])), _pm(g["metrics"]["overall"]), gap,
                     _num(g["relative_to_full"], "{:.1f}"), "-" if g["control"] else str(g.get("rank", "-")),
                     *[_pm(g["metrics"].get(p)) for p in primaries], _picked(g)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if qtypes:
        cb = _bkey(cfg.calibration_budget)
        shown = [m for m in methods if cb in methods[m]]
        out += ["## Question types vs their most-common-answer baseline", "",
                (f"Accuracy per question type; baseline = always giving the type's most common answer. "
                f"Methods at {_budget_label(cb)} unless named full. Types marked (diagnostic) belong to "
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
            out.append(f"| {m} | {_budget_label(b)} | {_num(g['selection_wall_s'], '{:.3f}')} | "
                       f"{c.get('requests', '-')} | {c.get('tokens', '-')} | {_num(g['train_wall_s'])} | "
                       f"{_num(g['train_steps'], '{:.0f}')} | {scoring} |")
    out += ["", "## Calibration checks", ""]
    for c in checks:
        out.append(f"- **{c['status'].upper()}** `{c['name']}`: {c['detail']}")
    out += [""]
    for b in budgets:
        names = [m for m in methods if b in methods[m]]
        keys = sorted(set().union(*(methods[m][b]["metrics"] for m in names)))
        out += [f"## All metrics at {_budget_label(b)}", "", "| metric | " + " | ".join(names) + " |",
                "|" + "---|" * (1 + len(names))]
        for k in keys:
            out.append(f"| {k} | " + " | ".join(_pm(methods[m][b]["metrics"].get(k)) for m in names) + " |")
        out.append("")
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(out)


# ---------------------------------------------------------------- reading the pipeline's files

def load_runs(selections: Path, runs: Path, evals: Path, primary: Mapping[str, str],
              diagnostic: Iterable[str] = ()) -> list[Run]:
    """Every (method, budget, seed) of ``selections/*/b*_s*/meta.json`` joined with its
    checkpoint and evaluation; a missing piece is an error naming the path."""
    metas = sorted(Path(selections).glob("*/b*_s*/meta.json"))
    if not metas:
        raise FileNotFoundError(f"{selections}: no selections (*/b*_s*/meta.json)")
    out = []
    for meta_path in metas:
        meta = read_json(meta_path)
        method, name = meta_path.parent.parent.name, meta_path.parent.name
        ckpt = Path(runs) / method / name
        if not (ckpt / "config.json").is_file():
            raise FileNotFoundError(f"{ckpt}: no checkpoint for {meta_path}")
        metrics_path = Path(evals) / method / name / "metrics.json"
        if not metrics_path.is_file():
            raise FileNotFoundError(f"{metrics_path}: no evaluation for {ckpt}")
        metrics = {k: float(v) for k, v in read_json(metrics_path).items()}
        metrics["overall"] = overall_score(metrics, primary, where=str(metrics_path), diagnostic=diagnostic)
        train_path = ckpt / "train_log.json"
        train = {k: v for k, v in read_json(train_path).items() if k != "log"} if train_path.is_file() else {}
        trace = meta_path.parent / "trace.parquet"
        uids = None
        if trace.is_file():
            import pandas as pd

            uids = [int(u) for u in pd.read_parquet(trace, columns=["uid"])["uid"]]
        out.append(Run(method=meta.get("method", method), budget=float(meta["budget"]), seed=int(meta["seed"]),
                       n_selected=int(meta["n_selected"]), selection=str(meta_path.parent / "subset.json"),
                       checkpoint=str(ckpt), eval=str(metrics_path.parent / "results.json"), metrics=metrics,
                       control=bool(meta.get("control", False)), n_pool=meta.get("n_pool"),
                       selection_wall_s=meta.get("wall_seconds"), scoring=meta.get("scoring"), train=train,
                       uids=uids))
    return out


def load_hidden_kinds(hidden: Path, records: Path) -> dict[int, str]:
    """{uid: imperfection kind} by joining the hidden labels (by ``id``) through records.jsonl."""
    kinds = {}
    for i, row in enumerate(read_jsonl(hidden), 1):
        if "id" not in row or "kind" not in row:
            raise ValueError(f"{hidden}:{i}: needs 'id' and 'kind'")
        kinds[row["id"]] = row["kind"]
    out = {}
    for i, rec in enumerate(read_jsonl(records), 1):
        if rec.get("id") not in kinds:
            raise ValueError(f"{records}:{i}: id={rec.get('id')!r} (uid={rec.get('uid')}) has no hidden label in {hidden}")
        out[int(rec["uid"])] = kinds[rec["id"]]
    return out


def load_bench(bench: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: read_jsonl(Path(bench) / f"{name}.jsonl")
            for name in ("vqa", "pope", "count", "binding") if (Path(bench) / f"{name}.jsonl").is_file()}


def judge_costs(usage: Mapping[str, Any] | None, methods: Iterable[str], cfg: CompareConfig) -> dict[str, dict[str, Any]]:
    """Judge requests/tokens charged to each method that reads the ratings (the ratings are
    computed once and shared, so each such method is charged the whole judge run)."""
    if not usage:
        return {}
    tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
    return {m: {"requests": int(usage.get("requests", 0)), "tokens": tokens}
            for m in methods if m in cfg.judge_methods}


def _finite(x: float, digits: int = 4) -> float | None:
    """Rounded for a table, None (JSON null) where undefined - e.g. one seed's interval."""
    return round(float(x), digits) if math.isfinite(x) else None


def recipe_of(runs: Sequence[Run]) -> dict[str, Any]:
    """Which fine-tuning recipe produced the runs (from their train logs), with steps per budget."""
    recipes = sorted({r.train.get("recipe") for r in runs if r.train.get("recipe")})
    steps: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        if r.train.get("steps") is not None:
            steps[_bkey(r.budget)].append(r.train["steps"])
    detail = ", ".join(f"{_budget_label(b)}: {sum(v) / len(v):.0f} steps" for b, v in sorted(steps.items(), key=lambda kv: float(kv[0])))
    return {"recipe": " + ".join(recipes) if recipes else "unknown", "detail": detail}


@dataclass
class Report:
    runs: list[Run]
    summary: dict[str, Any]
    qtypes: dict[str, Any]
    checks: list[dict[str, Any]]
    costs: dict[str, Any]
    recipe: dict[str, Any]
    cfg: CompareConfig

    def markdown(self, plots: Sequence[str] = ()) -> str:
        """comparison.md; ``plots`` are image paths relative to it."""
        return render_markdown(self.summary, self.qtypes, self.checks, self.costs, self.recipe, self.cfg, plots)

    @property
    def calibrated(self) -> bool:
        return not any(c["status"] == "fail" for c in self.checks)

    def dvc_metrics(self) -> dict[str, Any]:
        """The compact summary DVC shows (``dvc metrics show``, ``dvc exp show``): per budget, each
        method's overall mean and 95% half-width over seeds and the winner; the calibration
        verdict; a few cost totals. Tens of columns, not thousands: the full index of every
        statistic stays in metrics.json, which is not a DVC metric."""
        out: dict[str, Any] = {"calibrated": self.calibrated}
        methods = self.summary["methods"]
        for b in sorted({b for groups in methods.values() for b in groups}, key=float):
            key = f"{float(b) * 100:g}%"
            row: dict[str, Any] = {}
            if b in self.summary["winners"] and float(b) < 1.0:
                row["winner"] = self.summary["winners"][b]
            for m in sorted(methods):
                if b in methods[m]:
                    o = methods[m][b]["metrics"]["overall"]
                    row[m] = _finite(o["mean"])
                    row[f"{m}_ci"] = _finite(o["half_width"])
            out[key] = row
        trains = [r.train["wall_s"] for r in self.runs if r.train.get("wall_s") is not None]
        selections = [r.selection_wall_s for r in self.runs if r.selection_wall_s is not None]
        out["cost"] = {"runs": len(self.runs), "finetune_s": _finite(math.fsum(trains)),
                       "selection_s": _finite(math.fsum(selections)),
                       "judge_requests": max((c["requests"] for c in self.costs.values()), default=0)}
        return out

    def metrics_json(self) -> dict[str, Any]:
        return {"runs": [r.manifest() for r in self.runs],
                "summary": {**self.summary, "calibration": {c["name"]: c["status"] for c in self.checks},
                            "question_types": self.qtypes}}


def build_report(selections: Path, runs: Path, evals: Path, cfg: CompareConfig, *, hidden: Path | None = None,
                 records: Path | None = None, bench: Path | None = None,
                 judge_usage: Path | None = None) -> Report:
    """Read the pipeline's outputs and compute everything the report shows."""
    run_list = load_runs(selections, runs, evals, cfg.primary_metrics, cfg.diagnostic_tasks)
    kinds = load_hidden_kinds(hidden, records) if hidden and records and Path(hidden).is_file() else None
    summary = summarize(run_list, cfg, kinds)
    qtypes = question_types(load_bench(bench), cfg.diagnostic_tasks) if bench else {}
    checks = calibration_checks(summary, qtypes, cfg)
    usage = read_json(judge_usage) if judge_usage and Path(judge_usage).is_file() else None
    costs = judge_costs(usage, summary["methods"], cfg)
    return Report(run_list, summary, qtypes, checks, costs, recipe_of(run_list), cfg)
