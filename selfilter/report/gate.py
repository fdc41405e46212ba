"""``selfilter calibration``: fail when the embedded testbed is not calibrated.

The ``compare`` stage writes every check to ``reports/calibration.json``. ``make run`` calls this
gate *after* ``dvc repro`` has finished every stage (MLflow lineage included), so a failed
calibration still leaves the full report, plots and runs to inspect, and still fails the run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfilter.io import read_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("calibration", nargs="?", default="reports/calibration.json",
                   help="calibration checks written by the compare stage (default: %(default)s)")


def failed_checks(report: dict) -> list[dict]:
    return [c for c in report.get("checks", []) if c.get("status") == "fail"]


def run(args: argparse.Namespace) -> int:
    path = Path(args.calibration)
    if not path.is_file():
        print(f"selfilter calibration: {path}: not found (run the compare stage first)", file=sys.stderr)
        return 2
    report = read_json(path)
    checks = report.get("checks", [])
    failed = failed_checks(report)
    for c in checks:
        print(f"{c.get('status', '?').upper():5} {c.get('name')}: {c.get('detail', '')}")
    if failed:
        print(f"selfilter calibration: {len(failed)} of {len(checks)} checks FAILED ({path}); "
              "the comparison is not trustworthy on this testbed", file=sys.stderr)
        return 1
    print(f"selfilter calibration: all {len(checks)} checks passed")
    return 0
