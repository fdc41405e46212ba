"""The comparison: which subset should I train on, with evidence.

Reading (``load_runs`` and friends) is kept apart from the pure parts: ``summarize`` (mean and
t-based CI over seeds for every metric, relative-to-full, ranks), ``question_types`` (each
question type next to its most-common-answer baseline); the checks are ``calibration``'s, the
text ``markdown``'s. ``build_report`` ties them together for the stage.

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
from selfilter.report.budgets import bkey, budget_label
from selfilter.report.calibration import (
    CALIBRATED,
    calibration_checks,
    calibration_status,
)
from selfilter.report.config import CompareConfig
from selfilter.report.markdown import render_markdown
from selfilter.report.metric_info import metric_range
from selfilter.report.stats import (
    clip_interval,
    min_detectable_difference,
    pooled_std,
    ranks,
    relative_to,
    seed_stats,
)

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
    # overall is a mean of the tasks' primary metrics: a rate when every one of them is
    primaries = {f"{k.split('/', 1)[0]}/{cfg.primary_metrics.get(k.split('/', 1)[0], '')}"
                 for r in runs for k in r.metrics if "/" in k and k.split("/", 1)[0] not in cfg.diagnostic_tasks}
    overall_range = (0.0, 1.0) if primaries and all(metric_range(k) for k in primaries) else None
    for (method, budget), group in groups.items():
        keys = sorted(set().union(*(r.metrics for r in group)))
        entry: dict[str, Any] = {
            "control": any(r.control for r in group),
            "seeds": [r.seed for r in group],
            "n_selected": group[0].n_selected,
            "metrics": {k: clip_interval(seed_stats([r.metrics[k] for r in group if k in r.metrics], cfg.confidence),
                                         overall_range if k == "overall" else metric_range(k)) for k in keys},
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
        rows[method][bkey(budget)] = entry
    # Ranks per budget among methods (controls excluded); the reference method competes only at its budget.
    winners, ties, resolution = {}, {}, {}
    for b in sorted({budget for _, budget in groups}):
        # rounded so that equal means (identical subsets, a benchmark every method scores the same
        # on) rank equal instead of being ordered by the last bit of a float sum
        contenders = {m: round(rows[m][bkey(b)]["metrics"]["overall"]["mean"], 9)
                      for (m, bb) in groups if bb == b and not rows[m][bkey(b)]["control"]}
        for m, rk in ranks(contenders).items():
            rows[m][bkey(b)]["rank"] = rk
        if contenders:
            first = sorted(m for m in contenders if rows[m][bkey(b)]["rank"] == 1)
            winners[bkey(b)] = first[0]
            if len(first) > 1:
                ties[bkey(b)] = first  # a tie has no winner; ``winners`` keeps a name for the tables
        resolution[bkey(b)] = grid_resolution([rows[m][bkey(b)]["metrics"]["overall"]
                                                for (m, bb) in groups if bb == b], cfg.confidence)
    return {"reference_overall": ref_overall, "methods": dict(rows), "winners": winners, "ties": ties,
            "resolution": resolution}


def grid_resolution(overall: Sequence[Mapping[str, float]], confidence: float) -> dict[str, float]:
    """What one budget of the grid can resolve: the pooled seed std of ``overall`` over its
    (method) groups and the minimum detectable difference between two methods at the grid's
    number of seeds (the smallest group's, the conservative choice)."""
    std, dof = pooled_std(overall)
    seeds = min((int(g["n"]) for g in overall), default=0)
    # the t quantile takes the pooled std's own degrees of freedom (sum of n_i - 1 over the groups)
    return {"pooled_std": std, "dof": dof, "n_seeds": seeds,
            "mdd": min_detectable_difference(std, seeds, confidence, dof=dof), "confidence": confidence}



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
            steps[bkey(r.budget)].append(r.train["steps"])
    detail = ", ".join(f"{budget_label(b)}: {sum(v) / len(v):.0f} steps" for b, v in sorted(steps.items(), key=lambda kv: float(kv[0])))
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
    left_out: dict[str, str] = field(default_factory=dict)  # part -> why it did not run on this data
    benchmark: dict[str, Any] | None = None                 # evals/benchmark.json: what was measured
    notes: list[str] = field(default_factory=list)          # what the pipeline could not check, and why

    def markdown(self, plots: Sequence[str] = ()) -> str:
        """comparison.md; ``plots`` are image paths relative to it."""
        from selfilter.report.notes import anomaly_notes

        return render_markdown(self.summary, self.qtypes, self.checks, self.costs, self.recipe, self.cfg, plots,
                               left_out=self.left_out, benchmark=self.benchmark,
                               notes=[*anomaly_notes(self.summary), *self.notes],
                               machine_time=self.finetune_s_by_machine())

    @property
    def calibration(self) -> str:
        """calibrated | not calibrated | not established (``calibration_status``)."""
        return calibration_status(self.checks)

    @property
    def calibrated(self) -> bool:
        """True only when every check ran and passed: a skipped check is not a passed one."""
        return self.calibration == CALIBRATED

    def dvc_metrics(self) -> dict[str, Any]:
        """The compact summary DVC shows (``dvc metrics show``, ``dvc exp show``): per budget, each
        method's overall mean and 95% half-width over seeds and the winner; the calibration
        verdict; a few cost totals. Tens of columns, not thousands: the full index of every
        statistic stays in metrics.json, which is not a DVC metric."""
        out: dict[str, Any] = {"calibrated": self.calibrated, "calibration": self.calibration}
        if self.benchmark:
            out["benchmark"] = self.benchmark.get("name")
        methods = self.summary["methods"]
        for b in sorted({b for groups in methods.values() for b in groups}, key=float):
            key = f"{float(b) * 100:g}%"
            row: dict[str, Any] = {}
            if b in self.summary["winners"] and float(b) < 1.0:
                tied = self.summary.get("ties", {}).get(b)
                row["winner"] = f"tie: {', '.join(tied)}" if tied else self.summary["winners"][b]
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
        by_machine = self.finetune_s_by_machine()
        if len(by_machine) > 1:  # a grid over several workers (flows/grid.py): machine time per worker
            out["cost"]["finetune_s_by_worker"] = by_machine

        return out

    def finetune_s_by_machine(self) -> dict[str, float]:
        """Fine-tuning seconds summed per ``worker@host`` (train_log.json): on a grid, the
        machine time each worker spent; the total is ``cost.finetune_s``."""
        out: dict[str, float] = {}
        for r in self.runs:
            if r.train.get("wall_s") is None:
                continue
            key = f"{r.train.get('worker', 'local')}@{r.train.get('host', '?')}"
            out[key] = round(out.get(key, 0.0) + float(r.train["wall_s"]), 3)
        return dict(sorted(out.items()))

    def metrics_json(self) -> dict[str, Any]:
        return {"runs": [r.manifest() for r in self.runs],
                "summary": {**self.summary, "calibration": {c["name"]: c["status"] for c in self.checks},
                            "calibration_status": self.calibration, "left_out": self.left_out,
                            "benchmark": self.benchmark,
                            "question_types": self.qtypes}}


def build_report(selections: Path, runs: Path, evals: Path, cfg: CompareConfig, *, hidden: Path | None = None,
                 records: Path | None = None, bench: Path | None = None,
                 judge_usage: Path | None = None) -> Report:
    """Read the pipeline's outputs and compute everything the report shows."""
    run_list = load_runs(selections, runs, evals, cfg.primary_metrics, cfg.diagnostic_tasks)
    kinds = load_hidden_kinds(hidden, records) if hidden and records and Path(hidden).is_file() else None
    summary = summarize(run_list, cfg, kinds)
    qtypes = question_types(load_bench(bench), cfg.diagnostic_tasks) if bench else {}
    usage = read_json(judge_usage) if judge_usage and Path(judge_usage).is_file() else None
    left_out = load_left_out(selections, usage)
    benchmark = read_json(Path(evals) / "benchmark.json") if (Path(evals) / "benchmark.json").is_file() else None
    base = load_base_overall(Path(evals), cfg.primary_metrics, cfg.diagnostic_tasks)
    checks = calibration_checks(summary, qtypes, cfg, left_out=left_out, base=base)
    costs = judge_costs(usage if usage and "left_out" not in usage else None, summary["methods"], cfg)
    notes = [f"The base model before fine-tuning could not be scored on this benchmark ({base}): whether "
             "fine-tuning moves the benchmark is not checked."] if isinstance(base, str) else []
    return Report(run_list, summary, qtypes, checks, costs, recipe_of(run_list), cfg, left_out, benchmark, notes)


BASE_EVAL = "_base"  # evals/_base: the base model before fine-tuning (stages/evaluate.py BASE_DIR)


def load_left_out(selections: Path, judge_usage: Mapping[str, Any] | None) -> dict[str, str]:
    """{part: reason} of every part left out for what the data lacks: selection methods
    (``selections/<method>/left_out.json``) and the judge (``judge/usage.json``'s ``left_out``)."""
    from selfilter.needs import read_left_out

    out = {}
    if judge_usage and judge_usage.get("left_out"):
        out["judge"] = str(judge_usage["left_out"])
    for folder in sorted(p for p in Path(selections).iterdir() if p.is_dir()) if Path(selections).is_dir() else ():
        reason = read_left_out(folder)
        if reason:
            out[folder.name] = reason
    return out


def load_base_overall(evals: Path, primary: Mapping[str, str], diagnostic: Iterable[str] = ()) -> float | str | None:
    """The base model's overall score on the same benchmark (``evals/_base/metrics.json``), the
    reason it has none (its evaluation failed), or None when the base was not evaluated."""
    path = evals / BASE_EVAL / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path)
    if "error" in metrics:
        return f"the base model's evaluation failed ({str(metrics['error'])[:120]})"
    try:
        return overall_score({k: float(v) for k, v in metrics.items()}, primary, where=str(path), diagnostic=diagnostic)
    except ValueError as e:
        return str(e)
