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


def log_map(m: Mapping[str, Any], root: str | Path, params: str | Path, reports: str | Path) -> dict[str, Any]:
    """Log the map; return ``{"run_id", "link", "logged"}`` (``logged`` False: already there),
    or ``{"skipped": why}`` when tracking is off."""
    from selfilter.config import load_section
    from selfilter.tracking import KIND, PARENT_TAG, TrackingConfig, connect_config, ui_link

    cfg = load_section("tracking", TrackingConfig, params)
    if not cfg.enabled:
        return {"skipped": "tracking.enabled is false"}
    tracker = connect_config(cfg, root)
    digest = hashlib.sha256(json.dumps(m, sort_keys=True, default=str).encode()).hexdigest()[:16]
    link = ui_link(tracker.uri, tracker.experiment_id, "regime", order_by=None)
    found = tracker.find_runs(**{KIND: "regimes", MAP_DIGEST_TAG: digest})
    if found:
        return {"run_id": found[0].info.run_id, "link": link, "logged": False}
    h = m["hypothesis"]
    parent = tracker.create_run("regimes", {KIND: "regimes", MAP_DIGEST_TAG: digest,
                                            "selfilter.hypothesis": h["status"]})
    client = tracker.client
    client.log_metric(parent, "regimes_mapped", float(len(m["regimes"])))
    client.log_metric(parent, "hypothesis_cells_won", float(h["cells_won"]))
    client.log_metric(parent, "hypothesis_cells_tested", float(h["cells_tested"]))
    reports = Path(reports)
    for path in (reports / "regimes.md", reports / "regimes.json", reports / "regimes" / "map.png"):
        if path.is_file():
            client.log_artifact(parent, str(path))
    for name, r in m["regimes"].items():
        run = tracker.create_run(f"regime-{name}", {KIND: "regime", "selfilter.regime": name,
                                                    "selfilter.noise": str(r.get("noise")), PARENT_TAG: parent})
        for key, value in sorted((r.get("overrides") or {}).items()):
            client.log_param(run, key, json.dumps(value) if not isinstance(value, str) else value)
        for key, value in regime_metrics(r).items():
            client.log_metric(run, key, value)
        tracker.finish(run)
    tracker.finish(parent)
    return {"run_id": parent, "link": link, "logged": True}
