"""compare stage: the comparison report over every (method, budget, seed).

    python -m stages.compare --params params.yaml --selections selections --runs runs \
        --evals evals --hidden data/shapes/imperfections.jsonl --records data/pool/records.jsonl \
        --bench data/shapes/bench [--judge-usage judge/usage.json] --out reports

Writes ``reports/summary.json`` (the compact DVC metrics: per budget each method's overall mean and
95% half-width, the winner, the calibration verdict, cost totals), ``reports/metrics.json`` (the
full index: ``{"runs": [...manifest...], "summary": {...}}``),
``reports/calibration.json``, ``reports/comparison.md`` (and ``comparison.html``, the same with
the plots embedded: MLflow's artifact preview shows it), ``reports/plots/*.png`` and the DVC
plots data ``reports/plots/score_vs_budget.csv``. The calibration checks of the embedded testbed
are written into the report first; then, with ``compare.fail_on_calibration``, a failed check
makes the stage exit 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from selfilter import console
from selfilter.config import ConfigError, load_section
from selfilter.io import atomic_path, write_json, write_text
from selfilter.report.config import CompareConfig
from stages._common import StageParser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--selections", required=True, help="selections/: <method>/b<budget>_s<seed>/meta.json")
    p.add_argument("--runs", required=True, help="runs/: fine-tuned checkpoints")
    p.add_argument("--evals", required=True, help="evals/: <method>/<run>/metrics.json")
    p.add_argument("--hidden", help="imperfections.jsonl hidden labels (shapes only)")
    p.add_argument("--records", help="records.jsonl (joins hidden labels by id -> uid)")
    p.add_argument("--bench", help="benchmark jsonl folder (most-common-answer baselines); default: the shapes "
                                   "benchmark when --source says the pool has it")
    p.add_argument("--source", help="the pool's source.json: which side files and benchmark the data has")
    p.add_argument("--judge-usage", default="judge/usage.json", help="judge usage counts (cost table)")
    p.add_argument("--out", required=True, help="output folder, reports/")


def _run(args: argparse.Namespace) -> int:
    from selfilter.report.compare import build_report
    from selfilter.report.plots import (
        plot_metric_bars,
        plot_score_vs_budget,
        score_vs_budget_rows,
    )

    cfg = load_section("compare", CompareConfig, args.params)
    out = Path(args.out)
    plots = ["plots/score_vs_budget.png"]
    hidden, bench = args.hidden, args.bench
    if args.source:
        from selfilter.data.source import read_source

        info = read_source(args.source)
        hidden = hidden if info.hidden_labels else None
        bench = bench or (info.benchmark["dir"] if info.benchmark_kind == "shapes" else None)
    report = build_report(Path(args.selections), Path(args.runs), Path(args.evals), cfg,
                          hidden=Path(hidden) if hidden else None,
                          records=Path(args.records) if args.records else None,
                          bench=Path(bench) if bench else None,
                          judge_usage=Path(args.judge_usage) if args.judge_usage else None)
    summary = report.summary
    budgets = sorted({b for g in summary["methods"].values() for b in g if float(b) < 1.0}, key=float)
    primaries = [f"{t}/{m}" for t, m in cfg.primary_metrics.items()
                 if any(f"{t}/{m}" in g["metrics"] for mg in summary["methods"].values() for g in mg.values())]
    plot_score_vs_budget(summary, out / "plots" / "score_vs_budget.png", reference=cfg.reference_method)
    for b in budgets:
        name = f"plots/metrics_b{b}.png"
        plot_metric_bars(summary, b, primaries + ["overall"], out / name)
        plots.append(name)
    with atomic_path(out / "plots" / "score_vs_budget.csv", suffix=".csv") as tmp:
        pd.DataFrame(score_vs_budget_rows(summary)).to_csv(tmp, index=False)
    markdown = report.markdown(plots)
    # metrics.json and calibration.json are written whether or not calibration passes: a failed
    # check must leave the evidence behind.
    write_json(out / "metrics.json", report.metrics_json())
    write_json(out / "summary.json", report.dvc_metrics())
    write_json(out / "calibration.json", {"calibrated": report.calibrated, "status": report.calibration,
                                          "checks": report.checks})
    write_text(out / "comparison.md", markdown + "\n")
    from selfilter.report.markdown import to_html

    write_text(out / "comparison.html", to_html(markdown, out))
    print(f"compare: {len(report.runs)} runs, {len(summary['methods'])} methods -> {out}/comparison.md")
    for b, w in summary["winners"].items():
        tied = summary["ties"].get(b)
        print(f"compare: budget {b}: " + (f"tie between {', '.join(tied)}" if tied else f"winner {w}"))
    print(f"compare: calibration {report.calibration}")
    for name, why in report.left_out.items():
        print(f"compare: {name}: left out - {why}")
    failed = [c for c in report.checks if c["status"] == "fail"]
    for c in failed:
        print(f"compare: calibration FAILED: {c['name']}: {c['detail']}", file=sys.stderr)
    return 1 if failed and cfg.fail_on_calibration else 0


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, KeyError, FileNotFoundError, ConfigError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"compare: error: {msg}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    console.setup()
    p = StageParser("stages.compare", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
