"""selfilter.lineage: naming, lineage identity, and reading a finished pipeline (no store)."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fake_pipeline import BENCH_METRICS, BUDGETS, METHODS, SEEDS, build_fake_pipeline

from selfilter import lineage as L

N_COMPARED = len(METHODS) * len(BUDGETS) * len(SEEDS)


# ------------------------------------------------------------------ naming (pure)
@pytest.mark.parametrize("name, key", [
    ("shapes_vqa/exact_match,none", "shapes_vqa/exact_match"),
    ("shapes_pope/f1,adversarial", "shapes_pope/f1/adversarial"),
    ("overall", "overall"),
    ("/a//b/", "a/b"),
    ("../x/./y", "_/x/_/y"),
    ("mme: perception (cog)", "mme_ perception _cog_"),
    ("finetune@random-0.15-0", "finetune_random-0.15-0"),
    ("", "_"),
])
def test_mlflow_key_maps_deterministically_to_valid_names(name, key):
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    assert L.mlflow_key(name) == key
    _validate_metric_name(key)  # raises on a name MLflow would reject
    _validate_param_name(key)


def test_mlflow_keys_disambiguate_collisions_stably():
    names = ["a/acc,none", "a/acc", "b"]
    keys = L.mlflow_keys(names)
    assert keys["b"] == "b"
    assert keys["a/acc,none"] != keys["a/acc"]
    assert all(k.startswith("a/acc_") for n, k in keys.items() if n != "b")
    assert L.mlflow_keys(list(reversed(names))) == keys  # independent of order


def test_long_names_are_truncated_to_mlflow_limit():
    assert len(L.mlflow_key("x" * 600)) == 250


def test_pipeline_digest_ignores_the_track_stage_itself():
    lock = {"a": {"cmd": "1"}, "track": {"cmd": "t1"}}
    d = L.pipeline_digest(lock)
    assert d == L.pipeline_digest({**lock, "track": {"cmd": "t2"}})
    assert d != L.pipeline_digest({**lock, "a": {"cmd": "2"}})
    assert len(d) == 32
    hashes = L.dvc_stage_hashes(lock)
    assert set(hashes) == {"a", "track"} and all(len(h) == 12 for h in hashes.values())


def test_read_train_log_accepts_list_and_hf_trainer_state(tmp_path):
    p = tmp_path / "log.json"
    p.write_text(json.dumps([{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5, "note": "x"}]))
    assert L.read_train_log(p) == {"loss": [(10, 2.0), (20, 1.5)]}
    p.write_text(json.dumps({"log_history": [{"loss": 1.0, "epoch": 0.5}]}))
    assert L.read_train_log(p) == {"loss": [(0, 1.0)], "epoch": [(0, 0.5)]}
    p.write_text(json.dumps({"oops": 1}))
    with pytest.raises(ValueError, match="log.json"):
        L.read_train_log(p)


def test_read_curve_csv_uses_step_column(tmp_path):
    p = tmp_path / "loss.csv"
    p.write_text("step,loss,phase\n5,1.0,warmup\n6,0.5,main\n")
    assert L.read_curve_csv(p) == {"loss": [(5, 1.0), (6, 0.5)]}


# ------------------------------------------------------------------ reading a finished pipeline
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return build_fake_pipeline(tmp_path_factory.mktemp("pipe"))


def test_collect_lineage_reads_every_contract(pipeline):
    lin = L.collect_lineage(pipeline)
    assert len(lin.comparisons) == N_COMPARED
    c = next(r for r in lin.comparisons if r.key == "comparison/random/b0.15/s1")
    assert (c.params["method"], c.params["budget"], c.params["seed"]) == ("random", "0.15", "1")
    assert c.params["finetune.lr"] == "0.0002" and c.params["select.k_nearest"] == "10"
    assert set(c.metrics) == {*BENCH_METRICS, "overall"}
    assert c.curves["train/loss"] == [(0, 3.0), (1, 2.5), (2, 2.0)]
    assert c.json_artifacts["selected_uids.json"] == list(range(1, 7))
    assert [ctx for _, ctx in c.datasets] == ["training", "pool"]
    stages = {r.name: r for r in lin.stages}
    assert set(stages) == {"prepare", "stage1", "finetune", "compare", "base", "judge"}  # no 'track'
    assert stages["stage1"].params == {"stage1.epochs": "1", "stage1.lr": "0.0001"}  # from dvc.lock
    assert stages["stage1"].curves["scores/loss"][-1] == (4, 1.6)
    assert "difficulty_scores.png" in stages["stage1"].histograms
    assert stages["base"].metrics == {"probe_acc": 0.41, "chance": 0.25}
    assert stages["judge"].metrics["usage/calls"] == 40
    assert len(stages["finetune"].json_artifacts["dvc_stages.json"]) == N_COMPARED
    assert any(k.startswith("dvc.stage.finetune_") for k in lin.tags)
    assert "dvc.stage.track" not in lin.tags  # its lock entry is the previous track run's: not this run's lineage
    assert lin.tags["git.commit"] == "unknown"  # tmp dir is not a git repo


def test_track_output_and_sidecars_are_not_read_as_stage_metrics(tmp_path):
    root = build_fake_pipeline(tmp_path / "p")
    (root / "metrics/tracking.json").write_text('{"runs_created": 3}')
    (root / "metrics/tracking.json.meta.json").write_text('{"n": 1}')
    (root / "metrics/base.json.meta.json").write_text('{"n": 1}')
    lin = L.collect_lineage(root, exclude=(root / "metrics/tracking.json",))
    assert {r.name for r in lin.stages} == {"prepare", "stage1", "finetune", "compare", "base", "judge"}


def test_collect_lineage_names_the_bad_record(tmp_path):
    root = build_fake_pipeline(tmp_path / "p")
    data = json.loads((root / "reports/metrics.json").read_text())
    del data["runs"][3]["seed"]
    (root / "reports/metrics.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"metrics.json: runs\[3\]: missing seed"):
        L.collect_lineage(root)
