"""The selector map in MLflow: one ``regimes`` run holding the map (regimes.md, .json and the
heat map) with one nested ``regime`` run per regime - its knobs as params, and as metrics what it
measurably was (broken share, crowded share, the judge's AUC) and, per budget, its MDD, whether
it is calibrated, and each method's gap to random. Logged to the checkout's store (the
``tracking`` section), once per distinct map: a rerun that changed nothing logs nothing."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

MAP_DIGEST_TAG = "selfilter.map_digest"


def regime_metrics(r: Mapping[str, Any]) -> dict[str, float]:
    pool, judge = r.get("pool") or {}, r.get("judge") or {}
    out: dict[str, float] = {}
    for key in ("broken_share", "near_duplicate_share", "crowded_share"):
        if pool.get(key) is not None:
            out[key] = float(pool[key])
    for key in ("auc", "balanced_accuracy"):
        if judge.get(key) is not None:
            out[f"judge_{key}"] = float(judge[key])
    for budget, cell in r["cells"].items():
        b = f"b{float(budget):g}"
        out[f"mdd_{b}"] = float(cell["mdd"])
        out[f"calibrated_{b}"] = float(cell["status"] == "calibrated")
        for method, c in cell["methods"].items():
            if c["gap"] is not None:
                out[f"gap_{method}_{b}"] = float(c["gap"])
                out[f"resolved_{method}_{b}"] = float(bool(c["resolved"]) and cell["status"] == "calibrated")
    return out


def map_records(m: Mapping[str, Any], reports: str | Path) -> tuple[Any, list[Any]]:
    """The parent ``regimes`` run and one ``regime`` run per regime, as RunRecords (pure)."""
    from selfilter.lineage import RunRecord

    h = m["hypothesis"]
    reports = Path(reports)
    files = [(p, "") for p in (reports / "regimes.md", reports / "regimes.json", reports / "regimes" / "map.png")
             if p.is_file()]
    parent = RunRecord(key="regimes", name="regimes", kind="regimes",
                       metrics={"regimes_mapped": float(len(m["regimes"])),
                                "hypothesis_cells_won": float(h["cells_won"]),
                                "hypothesis_cells_tested": float(h["cells_tested"]),
                                "hypothesis_cells_premise_absent": float(h.get("cells_premise_absent", 0))},
                       tags={"selfilter.hypothesis": h["status"]}, artifacts=files)
    children = []
    for name, r in m["regimes"].items():
        params = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in sorted((r.get("overrides") or {}).items())}
        children.append(RunRecord(key=name, name=f"regime-{name}", kind="regime", params=params,
                                  metrics=regime_metrics(r),
                                  tags={"selfilter.regime": name, "selfilter.noise": str(r.get("noise"))}))
    return parent, children


def log_map(m: Mapping[str, Any], root: str | Path, params: str | Path, reports: str | Path) -> dict[str, Any]:
    """Log the map; return ``{"run_id", "link", "logged"}`` (``logged`` False: already there),
    or ``{"skipped": why}`` when tracking is off. MLflow is reached only through
    selfilter.tracking's Tracker."""
    from selfilter.config import load_section
    from selfilter.tracking import KIND, TrackingConfig, connect_config, ui_link

    cfg = load_section("tracking", TrackingConfig, params)
    if not cfg.enabled:
        return {"skipped": "tracking.enabled is false"}
    tracker = connect_config(cfg, root)
    digest = hashlib.sha256(json.dumps(m, sort_keys=True, default=str).encode()).hexdigest()[:16]
    link = ui_link(tracker.uri, tracker.experiment_id, "regime", order_by=None)
    found = tracker.find_runs(**{KIND: "regimes", MAP_DIGEST_TAG: digest})
    if found:
        return {"run_id": found[0].info.run_id, "link": link, "logged": False}
    parent, children = map_records(m, reports)
    parent_id = tracker.create_run(parent.name, {KIND: parent.kind, MAP_DIGEST_TAG: digest})
    tracker.log(parent_id, parent)
    for child in children:
        run_id = tracker.create_run(child.name, {KIND: child.kind}, parent_id=parent_id)
        tracker.log(run_id, child)
        tracker.finish(run_id)
    tracker.finish(parent_id)
    return {"run_id": parent_id, "link": link, "logged": True}
