"""``selfilter calibration``: fail when the benchmark is not shown to be calibrated.

The ``compare`` stage writes every check to ``reports/calibration.json``. The gate runs *after*
``dvc repro`` has finished every stage (MLflow lineage included), so a failed calibration still
leaves the full report, plots and runs to inspect, and still fails the run.

Exit codes (the same as ``selfilter verdict``): 0 calibrated (every check ran and passed), 1 not
calibrated (a check failed), 2 no calibration file, 3 not established (a check was skipped -
e.g. fewer seeds than ``compare.min_seeds``, as on the smoke and GPU profiles - so nothing shows
the benchmark separates the methods; a skipped check never counts as passed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfilter.io import read_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("calibration", nargs="?", default="reports/calibration.json",
                   help="calibration checks written by the compare stage (default: %(default)s)")


EXIT = {"calibrated": 0, "not calibrated": 1, "not established": 3}


def failed_checks(report: dict) -> list[dict]:
    return [c for c in report.get("checks", []) if c.get("status") == "fail"]


def status_of(report: dict) -> str:
    from selfilter.report.calibration import calibration_status

    return calibration_status(report.get("checks", []))


def run(args: argparse.Namespace) -> int:
    path = Path(args.calibration)
    if not path.is_file():
        print(f"selfilter calibration: {path}: not found (run the compare stage first)", file=sys.stderr)
        return 2
    report = read_json(path)
    checks = report.get("checks", [])
    failed = failed_checks(report)
    for c in checks:
        print(f"{c.get('status', '?').upper():7} {c.get('name')}: {c.get('detail', '')}")
    status = status_of(report)
    if failed:
        print(f"selfilter calibration: {len(failed)} of {len(checks)} checks FAILED ({path}); "
              "the comparison is not trustworthy on this benchmark", file=sys.stderr)
    elif status != "calibrated":
        skipped = [c.get("name") for c in checks if c.get("status") != "pass"]
        print(f"selfilter calibration: not established ({path}): "
              + (f"skipped {', '.join(skipped)}" if skipped else "no check applies"), file=sys.stderr)
    else:
        print(f"selfilter calibration: all {len(checks)} checks passed")
    return EXIT[status]
