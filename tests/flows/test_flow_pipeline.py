"""flows.pipeline: profile composition (pure), and the flow run ephemerally on a DVC project."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flow_fixtures import mlflow_runs
from flows import pipeline
from flows.pipeline import (GENERATED_MARKER, PipelineError, apply_profile, compose_params,
                            comparison_rows, deep_merge, nest_overrides, order_stage_groups)


# ------------------------------------------------------------------ pure functions

def test_deep_merge_merges_mappings_and_replaces_lists():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    out = deep_merge(base, {"a": {"y": [3], "z": 4}})
    assert out == {"a": {"x": 1, "y": [3], "z": 4}, "b": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}  # inputs untouched


def test_nest_overrides_dotted_and_nested():
    assert nest_overrides({"select.budgets": [0.15], "select.seeds": 3, "judge": {"backend": "openai"}}) == {
        "select": {"budgets": [0.15], "seeds": 3}, "judge": {"backend": "openai"}}
    with pytest.raises(PipelineError, match="empty component"):
        nest_overrides({"select..k": 1})


def test_compose_params_rejects_unknown_sections_naming_them():
    base = {"select": {"k": 1}, "judge": {}}
    assert compose_params(base, {"select": {"k": 2}}, {"judge.backend": "x"}) == {
        "select": {"k": 2}, "judge": {"backend": "x"}}
    with pytest.raises(PipelineError, match=r"profiles/x.yaml: unknown params section\(s\) \['selct'\]"):
        compose_params(base, {"selct": {"k": 2}}, None, profile_name="profiles/x.yaml")
    with pytest.raises(PipelineError, match=r"overrides: unknown .*\['nope'\]"):
        compose_params(base, None, {"nope.k": 1})


def test_order_stage_groups_follows_pipeline_order_then_file_order():
    names = ["compare", "select@a", "select@b", "zeta", "prepare", "judge", "alpha"]
    assert order_stage_groups(names) == ["prepare", "judge", "select", "compare", "zeta", "alpha"]


def test_comparison_rows_flattens_metrics():
    rows = comparison_rows({"runs": [{"method": "random", "budget": 0.15, "seed": 1, "n_selected": 7,
                                      "metrics": {"overall": 0.123456, "vqa/exact_match": 0.5}}]})
    assert rows == [{"method": "random", "budget": 0.15, "seed": 1, "n_selected": 7,
                     "overall": 0.1235, "vqa/exact_match": 0.5}]


# ------------------------------------------------------------------ applying profiles

def _params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def test_apply_profile_from_committed_base_and_back(dvc_project: Path):
    assert apply_profile(dvc_project, None, None) is None  # nothing asked: nothing written
    summary = apply_profile(dvc_project, "tiny", {"judge.scale": 5})
    text = (dvc_project / "params.yaml").read_text()
    assert text.startswith(GENERATED_MARKER) and "profiles/tiny.yaml" in text
    assert _params(dvc_project)["prepare"]["n"] == 12 and _params(dvc_project)["judge"]["scale"] == 5
    assert summary["changed_keys"] == ["judge.scale", "prepare.n", "select.k"]
    # Switching profile starts from the committed base again: no leftover override.
    apply_profile(dvc_project, "tiny", None)
    assert _params(dvc_project)["judge"]["scale"] == 10
    apply_profile(dvc_project, "default", None)
    assert _params(dvc_project) == yaml.safe_load((dvc_project / "profiles" / "tiny.yaml").read_text()) | {
        "prepare": {"n": 8}, "judge": {"scale": 10}, "select": {"methods": ["random", "self_filter"], "k": 3},
        "tracking": {}}


def test_apply_profile_refuses_uncommitted_hand_edits(dvc_project: Path):
    path = dvc_project / "params.yaml"
    path.write_text(path.read_text().replace("n: 8", "n: 9"))
    with pytest.raises(PipelineError, match="uncommitted edits"):
        apply_profile(dvc_project, "tiny", None)
    assert "n: 9" in path.read_text()  # left alone


def test_apply_profile_unknown_profile_lists_available(dvc_project: Path):
    with pytest.raises(PipelineError, match=r"profile 'nope' not found .* available: \['tiny'\]"):
        apply_profile(dvc_project, "nope", None)


# ------------------------------------------------------------------ the flow, ephemeral

@pytest.mark.slow  # three flow runs, ~20 dvc invocations
def test_flow_runs_dvc_stages_in_order_and_dvc_decides_reruns(dvc_project: Path, stage_runs, monkeypatch):
    monkeypatch.setattr(pipeline, "TRANSIENT_RETRY_DELAYS_S", [0.0, 0.0])
    (dvc_project / "judge.fail").write_text("1")  # the judge endpoint fails once
    # features fan out over 2 mapped shard tasks pinned to "GPUs" 0 and 1; DVC's stage merges
    result = pipeline.selfilter_pipeline(workdir=str(dvc_project), feature_shards=2, shard_devices=["0", "1"])
    assert result["stages"] == ["prepare", "features", "judge", "select", "compare", "track"]
    assert (dvc_project / "features" / "all.txt").read_text() == " ".join(["precomputed"] * 4)
    assert result["artifacts"] == ["selfilter-comparison", "selfilter-runs"]
    first = stage_runs(dvc_project)
    # MLflow: the flow's parent run, with the track stage's runs nested under it
    runs = mlflow_runs(dvc_project)
    (parent,) = [r for r in runs if r.data.tags.get("prefect.flow_run_id")]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.data.params.get("method") for r in children} >= {"random", "self_filter"}
    # judge ran twice (failed, retried by Prefect); everything else once, in pipeline order
    shards = sorted(first[1:3])
    assert shards == ["features --work-dir .cache/shards --shard-index 0 --num-shards 2 device=0",
                      "features --work-dir .cache/shards --shard-index 1 --num-shards 2 device=1"]
    assert first[:1] + first[3:6] + first[8:] == ["prepare", "features --work-dir .cache/shards", "judge",
                                                  "judge", "compare"]
    assert sorted(first[6:8]) == ["select random", "select self_filter"]  # DVC's order within a foreach

    pipeline.selfilter_pipeline(workdir=str(dvc_project), feature_shards=2)
    assert stage_runs(dvc_project) == first  # up to date: DVC ran nothing, no shard fanned out

    # A profile changes prepare.n and select.k: DVC reruns what depends on them, not judge's
    # params (judge reruns only because its dep `data` changed).
    result = pipeline.selfilter_pipeline(profile="tiny", targets=["prepare", "select"], workdir=str(dvc_project))
    assert result["params"]["profile"] == "profiles/tiny.yaml"
    assert sorted(stage_runs(dvc_project)[len(first):]) == ["prepare", "select random", "select self_filter"]
    assert (dvc_project / "params.yaml").read_text().startswith(GENERATED_MARKER)
    metrics = json.loads((dvc_project / "reports" / "metrics.json").read_text())
    assert {r["method"] for r in metrics["runs"]} == {"random", "self_filter"}


@pytest.mark.slow
def test_flow_reports_failed_stage_and_unknown_target(dvc_project: Path, stage_runs, monkeypatch):
    monkeypatch.setattr(pipeline, "TRANSIENT_RETRY_DELAYS_S", [0.0])
    (dvc_project / "judge.fail").write_text("5")  # more failures than retries
    with pytest.raises(PipelineError, match=r"(?s)stage 'judge' failed .*judge endpoint unavailable"):
        pipeline.selfilter_pipeline(workdir=str(dvc_project), targets=["prepare", "judge"])
    assert stage_runs(dvc_project).count("judge") == 2
    with pytest.raises(PipelineError, match=r"targets \['nope'\] not in"):
        pipeline.selfilter_pipeline(workdir=str(dvc_project), targets=["nope"])
