"""flows/regimes.py on the throwaway DVC project: one workspace per regime with its overrides,
a regime started from another reruns only what its overrides touch, a second sweep is a no-op,
and the map is built from what was collected."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.regimes import selfilter_regimes

SWEEP = """
overrides:
  select.methods: [random, self_filter, oracle_clean]
hypothesis: {text: toy, regimes: [b], methods: [self_filter]}
regimes:
  a: {describe: the toy default, noise: high}
  b: {describe: a toy judge, noise: low, start_from: a, overrides: {judge.scale: 5}}
"""


def _fake_collect(ws: Path, dest: Path, name, regime, overrides):
    """What collect_regime would keep, from the toy project's outputs (it has no pool labels)."""
    dest.mkdir(parents=True, exist_ok=True)
    scale = float((ws / "judge" / "ratings.txt").read_text())
    entry = lambda mean: {"metrics": {"overall": {"mean": mean, "std": 0.01, "n": 3}}}  # noqa: E731
    metrics = {"summary": {"methods": {"random": {"0.5": entry(0.5)}, "oracle_clean": {"0.5": entry(0.9)},
                                       "self_filter": {"0.5": entry(0.5 + scale / 100)}},
                           "resolution": {"0.5": {"mdd": 0.02, "n_seeds": 3}}}}
    (dest / "metrics.json").write_text(json.dumps(metrics))
    record = {"name": name, **regime, "overrides": overrides, "pool": {}, "judge": None}
    (dest / "regime.json").write_text(json.dumps(record))
    return record


def test_each_regime_in_its_own_workspace_sharing_the_cache(dvc_project: Path, monkeypatch):
    import selfilter.regimes.collect as collect_mod

    monkeypatch.setattr(collect_mod, "collect_regime", _fake_collect)
    (dvc_project / "sweeps").mkdir()
    (dvc_project / "sweeps" / "toy.yaml").write_text(SWEEP)
    params_before = (dvc_project / "params.yaml").read_text()

    result = selfilter_regimes(sweep="sweeps/toy.yaml", workdir=str(dvc_project))
    assert result["failed"] == {} and result["mapped"] == ["a", "b"] and result["hypothesis"] == "confirmed"

    ws_a, ws_b = dvc_project / ".regimes" / "a", dvc_project / ".regimes" / "b"
    log_a = (ws_a / "runs.log").read_text().splitlines()
    assert [line.split()[0] for line in log_a][:1] == ["prepare"] and "judge" in log_a
    assert "scale: 5" in (ws_b / "params.yaml").read_text()
    # b started from a's outputs: only the judge and what reads it ran there
    new_in_b = (ws_b / "runs.log").read_text().splitlines()[len(log_a):]
    assert new_in_b and {line.split()[0] for line in new_in_b} <= {"judge", "compare", "track"}, new_in_b
    assert (ws_b / "judge" / "ratings.txt").read_text() == "5"
    # one cache for every workspace; the checkout's own params untouched
    assert any((dvc_project / ".dvc" / "cache").rglob("*"))
    assert not (ws_a / ".dvc" / "cache").exists()
    assert (dvc_project / "params.yaml").read_text() == params_before
    md = (dvc_project / "reports" / "regimes.md").read_text()
    assert "**CONFIRMED**" in md and "| a | 50% | calibrated (oracle_clean) |" in md
    assert (dvc_project / "reports" / "regimes" / "map.png").is_file()
    written = json.loads((dvc_project / "reports" / "regimes.json").read_text())
    assert (written["plot"], written["sweep"]) == ("reports/regimes/map.png", "sweeps/toy.yaml")  # not this machine's paths

    # the map in the checkout's MLflow store: one regimes run, a nested run per regime
    assert result["mlflow"]["logged"] and "selfilter.kind" in result["mlflow"]["link"].replace("%60", "")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{dvc_project / 'mlruns.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "selfilter"]
    regime_runs = client.search_runs([exp.experiment_id], "tags.`selfilter.kind` = 'regime'")
    assert sorted(r.data.tags["selfilter.regime"] for r in regime_runs) == ["a", "b"]
    b_run = next(r for r in regime_runs if r.data.tags["selfilter.regime"] == "b")
    assert b_run.data.metrics["gap_self_filter_b0.5"] == pytest.approx(0.05)
    assert b_run.data.metrics["calibrated_b0.5"] == 1.0 and b_run.data.params["judge.scale"] == "5"
    assert b_run.data.tags["mlflow.parentRunId"] == result["mlflow"]["run_id"]

    # a second sweep: DVC finds nothing stale in either workspace, and MLflow gets no copy
    sizes = {w: (w / "runs.log").read_text() for w in (ws_a, ws_b)}
    again = selfilter_regimes(sweep="sweeps/toy.yaml", workdir=str(dvc_project))
    assert {w: (w / "runs.log").read_text() for w in (ws_a, ws_b)} == sizes
    assert again["mlflow"]["logged"] is False and again["mlflow"]["run_id"] == result["mlflow"]["run_id"]


def test_an_unknown_regime_is_refused_before_any_work(dvc_project: Path):
    from flows.pipeline import PipelineError

    (dvc_project / "sweeps").mkdir()
    (dvc_project / "sweeps" / "toy.yaml").write_text(SWEEP)
    with pytest.raises(PipelineError, match="not regimes"):
        selfilter_regimes(sweep="sweeps/toy.yaml", workdir=str(dvc_project), only=["zzz"])
    assert not (dvc_project / ".regimes").exists()
