"""``track`` stage: log the finished pipeline's lineage to MLflow (runs last, after ``compare``).

    python -m stages.track --params params.yaml --root . \
        --records data/pool/records.jsonl --report reports/metrics.json --out metrics/tracking.json

Failure policy (docs/mlflow.md): the store is probed before anything is read or logged; if it
is unreachable or unwritable the stage exits 1 without writing ``--out``, so DVC reruns it next
time. No other stage's outputs are at risk: tracking is a stage of its own.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from selfilter import console
from selfilter.config import ConfigError, load_section
from selfilter.io import write_json, write_sidecar
from selfilter.lineage import collect_lineage
from selfilter.tracking import (
    PARENT_ENV,
    TrackingConfig,
    TrackingUnavailable,
    connect_config,
    log_lineage,
    redact_uri,
    ui_links,
)
from stages._common import StageParser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = StageParser("stages.track", __doc__)
    p.add_argument("--params", default="params.yaml", help="params file (section: tracking)")
    p.add_argument("--root", default=".", help="project root holding the pipeline's outputs and dvc.lock")
    p.add_argument("--records", default="data/pool/records.jsonl", help="the pool (logged as a dataset)")
    p.add_argument("--report", default="reports/metrics.json", help="the comparison index")
    p.add_argument("--out", default="metrics/tracking.json", help="summary of what was logged")
    p.add_argument("--parent", default=os.environ.get(PARENT_ENV),
                   help=f"nest under this MLflow run (default: env {PARENT_ENV}, set by a Prefect flow)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    console.setup()
    args = parse_args(argv)
    root = Path(args.root)
    # CLI paths are relative to the working directory; paths inside reports/metrics.json and
    # the contract folders (stage1/, judge/, metrics/) are relative to --root.
    params, records, report, out = (Path(p).resolve() for p in (args.params, args.records, args.report, args.out))
    try:
        cfg = load_section("tracking", TrackingConfig, params)
        if not cfg.enabled:
            print("track: tracking.enabled is false - nothing logged to MLflow", file=sys.stderr)
            summary = {"status": "disabled"}
        else:
            tracker = connect_config(cfg, root)  # fail before doing any work
            lineage = collect_lineage(root, params_path=params, records=records, report=report,
                                      exclude=(out,))
            result = log_lineage(tracker, lineage, parent_run_id=args.parent or None,
                                 progress=not args.no_progress)
            summary = {"status": result.status, "tracking_uri": redact_uri(tracker.uri),
                       "experiment": cfg.experiment, "parent_run_id": result.parent_run_id,
                       "pipeline_digest": result.pipeline_digest, "runs_created": len(result.created),
                       "runs_skipped": len(result.skipped),
                       "comparison_runs": len(lineage.comparisons), "stage_runs": len(lineage.stages),
                       "aggregate_runs": len(lineage.aggregates),
                       "links": ui_links(tracker.uri, tracker.experiment_id)}
    except TrackingUnavailable as e:
        print(f"track: error: {e}\n  nothing was logged and {args.out} was not written; fix the store "
              f"(tracking.uri / MLFLOW_TRACKING_URI) and rerun, or set tracking.enabled: false",
              file=sys.stderr)
        return 1
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"track: error: {e}", file=sys.stderr)
        return 1
    write_json(out, summary)
    write_sidecar(out, params=cfg, inputs={"report": report} if report.is_file() else None)
    print(f"track: {summary['status']}" + (f" (parent run {summary['parent_run_id']}, "
          f"{summary['runs_created']} runs created, {summary['runs_skipped']} already there)"
          if "parent_run_id" in summary else ""), file=sys.stderr)
    if "links" in summary:
        print(f"track: methods ranked by overall (mean of seeds, with intervals): {summary['links']['ranking']}\n"
              f"track: every seed's run: {summary['links']['seeds']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
