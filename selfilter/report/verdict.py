"""``selfilter verdict``: what a finished pipeline found, on the console.

Prints the verdict of ``reports/comparison.md`` (per budget: the winner, its interval, the
runner-up and whether the grid resolves the gap; whether Self-Filter wins), the calibration
verdict, and where the report, plots and MLflow store are. Exit codes as ``selfilter calibration``
(the gate ``make run`` ends with): 0 calibrated, 1 a calibration check failed, 2 the report is
missing, 3 calibration not established (a check was skipped, e.g. too few seeds).

Example:
    selfilter verdict                    # after dvc repro, in the checkout
    selfilter verdict --reports reports --mlflow sqlite:///mlruns.db
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from selfilter.io import read_json
from selfilter.report.gate import EXIT, failed_checks, status_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reports", default="reports", help="the compare stage's folder (default: %(default)s)")
    p.add_argument("--tracking", default="metrics/tracking.json",
                   help="the track stage's summary: the MLflow deep links (default: %(default)s)")
    p.add_argument("--params", default="params.yaml", help="the params of the run: the data regime it was measured in")
    p.add_argument("--mlflow", default=None,
                   help="tracking URI to point at (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")


def verdict_section(markdown: str) -> list[str]:
    """The lines of the ``## Verdict`` section and the Calibration line after it, as plain text."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            if inside:
                break
            inside = line.strip() == "## Verdict"
            continue
        if inside and line.strip():
            lines.append(re.sub(r"\*\*(.+?)\*\*", r"\1", line))
    return lines


def _regime(params: Path) -> str | None:
    """The data regime line, or None when the params cannot be read (the verdict still prints)."""
    import yaml

    from selfilter.config import parse_yaml
    from selfilter.regimes.describe import regime_line

    try:
        return regime_line(parse_yaml(params.read_text(encoding="utf-8")) or {})
    except (OSError, ValueError, AttributeError, TypeError, yaml.YAMLError):
        return None


def run(args: argparse.Namespace) -> int:
    import os

    reports = Path(args.reports)
    md, cal = reports / "comparison.md", reports / "calibration.json"
    if not md.is_file() or not cal.is_file():
        print(f"selfilter verdict: {md if not md.is_file() else cal}: not found (run `dvc repro` first)",
              file=sys.stderr)
        return 2
    print("Verdict")
    regime = _regime(Path(args.params))
    if regime:
        print(f"  Regime: {regime}.")
    for line in verdict_section(md.read_text(encoding="utf-8")):
        print(f"  {line}")
    calibration = read_json(cal)
    failed = failed_checks(calibration)
    for c in failed:
        print(f"  calibration FAILED {c.get('name')}: {c.get('detail', '')}")
    status = status_of(calibration)
    uri = args.mlflow or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"
    plots = sorted(p.name for p in (reports / "plots").glob("*.png")) if (reports / "plots").is_dir() else []
    print(f"Report:  {md}")
    if plots:
        print(f"Plots:   {reports / 'plots'}/ ({', '.join(plots)})")
    print(f"MLflow:  {uri}  (browse: make mlflow-ui)")
    links = read_json(args.tracking).get("links") if Path(args.tracking).is_file() else None
    if links:
        print(f"         methods ranked by overall: {links['ranking']}")
    print("DVC:     dvc metrics show   |   dvc exp show --only-changed")
    return EXIT[status]
