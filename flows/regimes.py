"""Prefect flow ``selfilter-regimes``: the selector map - the grid run in several data regimes.

For each regime of a sweep file (sweeps/regimes.yaml), in order:

1. its workspace ``.regimes/<name>/`` is created or refreshed from this checkout (same code,
   base params, DVC cache shared with the checkout: selfilter.regimes.workspace);
2. the ``selfilter-pipeline`` flow runs there as a subflow with the sweep's and the regime's
   overrides - ``dvc repro`` decides what is stale, so a sweep that stopped resumes;
3. its results and what the regime measurably was are collected into
   ``reports/regimes/<name>/`` (selfilter.regimes.collect).

Then the map is built from every collected regime: ``reports/regimes.md``, ``.json`` and
``reports/regimes/map.png`` (``selfilter regimes`` rebuilds it without running anything).
A regime that fails is reported and the sweep goes on to the next; the flow fails at the end
if any did.

    python -m flows.regimes [--sweep sweeps/regimes.yaml] [--only REGIME ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import PipelineError, base_params_text, run_and_print, selfilter_pipeline
from selfilter.config import ConfigError

REGIMES_DIR = ".regimes"


@task(cache_policy=NO_CACHE)
def prepare(root: str, ws: str, base_params: str, start_from: str | None) -> dict[str, int]:
    from selfilter.regimes.workspace import prepare_workspace

    return prepare_workspace(Path(root), Path(ws), base_params, Path(start_from) if start_from else None)


@task(cache_policy=NO_CACHE)
def collect(ws: str, dest: str, name: str, regime: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    from selfilter.regimes.collect import collect_regime

    return collect_regime(Path(ws), Path(dest), name, regime, overrides)


@task(cache_policy=NO_CACHE)
def build_map(sweep: str, reports: str) -> dict[str, Any]:
    from selfilter.regimes.report import write_map

    return write_map(sweep, reports)


@task(cache_policy=NO_CACHE)
def track_map(m: dict[str, Any], root: str, reports: str) -> dict[str, Any]:
    from selfilter.regimes.tracking import log_map
    from selfilter.tracking import TrackingUnavailable

    try:
        return log_map(m, root, Path(root) / "params.yaml", reports)
    except TrackingUnavailable as e:  # the map is on disk either way
        return {"skipped": str(e)}


@flow(name="selfilter-regimes", log_prints=True)
def selfilter_regimes(sweep: str = "sweeps/regimes.yaml", workdir: str = ".", only: list[str] | None = None,
                      regimes_dir: str = REGIMES_DIR, reports: str = "reports") -> dict[str, Any]:
    """Run each regime of ``sweep`` in its own DVC workspace, collect, and build the map.

    sweep: the sweep file (relative to workdir). only: run just these regimes (the map still
    shows every collected one). regimes_dir: where the workspaces live (relative to workdir).
    """
    from selfilter.regimes.spec import load_spec

    logger = get_run_logger()
    root = Path(workdir).expanduser().resolve()
    spec = load_spec(root / sweep)
    unknown = [n for n in (only or []) if n not in spec.regimes]
    if unknown:
        raise PipelineError(f"--only {unknown}: not regimes of {sweep} ({list(spec.regimes)})")
    base_params, base_from = base_params_text(root)
    failed, timings = {}, {}
    for name, regime in spec.regimes.items():
        if only and name not in only:
            continue
        ws = root / regimes_dir / name
        start = None if regime.start_from is None else (root if regime.start_from == "." else root / regimes_dir / regime.start_from)
        overrides = spec.params_overrides(name)
        logger.info("regime %s: %s (workspace %s, overrides %s)", name, regime.describe, ws, overrides)
        t0 = time.perf_counter()
        try:
            prepare(str(root), str(ws), base_params, str(start) if start else None)
            selfilter_pipeline.with_options(flow_run_name=f"regime-{name}")(
                profile=spec.profile, overrides=overrides, workdir=str(ws))
            collect(str(ws), str(root / reports / "regimes" / name), name,
                    regime.model_dump(exclude={"overrides", "start_from"}), overrides)
        except Exception as e:  # noqa: BLE001 - one regime's failure is reported, the others still run
            failed[name] = f"{type(e).__name__}: {e}"
            logger.error("regime %s failed: %s (its workspace %s keeps what finished; rerun resumes)", name, e, ws)
        timings[name] = round(time.perf_counter() - t0, 1)
    result: dict[str, Any] = {"base": base_from, "timings_s": timings, "failed": failed}
    try:
        m = build_map(sweep=str(root / sweep), reports=str(root / reports))
    except FileNotFoundError as e:
        logger.error("no map: %s", e)
    else:
        h = m["hypothesis"]
        result.update(mapped=list(m["regimes"]), not_run=m["not_run"], hypothesis=h["status"])
        md = (root / reports / "regimes.md").read_text(encoding="utf-8")
        create_markdown_artifact(key="selfilter-regimes", markdown=md, description="the selector map")
        logger.info("hypothesis %s (%d of %d calibrated cells won); map: %s/regimes.md",
                    h["status"], h["cells_won"], h["cells_tested"], reports)
        tracked = track_map(m, str(root), str(root / reports))
        result["mlflow"] = tracked
        if "link" in tracked:
            logger.info("MLflow: the regimes side by side: %s", tracked["link"])
        else:
            logger.warning("MLflow: the map was not logged (%s)", tracked.get("skipped"))
    if failed:
        raise PipelineError(f"{len(failed)} regime(s) failed: {failed}")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.regimes``: run the sweep once, without a Prefect server."""
    parser = argparse.ArgumentParser(prog="python -m flows.regimes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default="sweeps/regimes.yaml", help="sweep file (default: %(default)s)")
    parser.add_argument("--only", nargs="*", default=None, metavar="REGIME", help="run just these regimes")
    parser.add_argument("--workdir", default=".", help="the checkout (default: %(default)s)")
    parser.add_argument("--regimes-dir", default=REGIMES_DIR, help="workspaces, relative to workdir (default: %(default)s)")
    parser.add_argument("--reports", default="reports", help="where regimes/<name>/ and the map go (default: %(default)s)")
    args = parser.parse_args(argv)
    # checked before the flow starts, so a typo is one line rather than a flow-run traceback
    from selfilter.regimes.spec import load_spec

    try:
        spec = load_spec(Path(args.workdir) / args.sweep)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    unknown = [n for n in (args.only or []) if n not in spec.regimes]
    if unknown:
        print(f"error: --only {unknown}: not regimes of {args.sweep} ({list(spec.regimes)})", file=sys.stderr)
        return 1
    return run_and_print(lambda: selfilter_regimes(sweep=args.sweep, workdir=args.workdir, only=args.only,
                                                   regimes_dir=args.regimes_dir, reports=args.reports),
                         errors=(PipelineError, ConfigError))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
