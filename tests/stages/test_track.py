"""stages/track.py: the DVC stage end to end on a fake finished pipeline, and its failure policy."""
from __future__ import annotations

import json
import os
import socket

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fake_pipeline import BUDGETS, METHODS, SEEDS, build_fake_pipeline, fresh_sqlite_store

from stages import track


def _argv(root):
    return ["--params", str(root / "params.yaml"), "--root", str(root),
            "--records", str(root / "data/pool/records.jsonl"), "--report", str(root / "reports/metrics.json"),
            "--out", str(root / "metrics/tracking.json"), "--no-progress"]


def test_track_stage_logs_once_and_writes_its_summary(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SELFILTER_MLFLOW_PARENT", raising=False)
    root = build_fake_pipeline(tmp_path / "proj")
    fresh_sqlite_store(root / "mlruns.db")  # at the default location, already migrated (saves seconds)
    assert track.main(_argv(root)) == 0
    out = json.loads((root / "metrics/tracking.json").read_text())
    assert out["status"] == "logged" and out["comparison_runs"] == len(METHODS) * len(BUDGETS) * len(SEEDS)
    assert out["tracking_uri"] == f"sqlite:///{root.resolve()}/mlruns.db"  # the default store
    assert (root / "mlartifacts").is_dir() and (root / "metrics/tracking.json.meta.json").is_file()
    # its own output is not read back as a stage's metrics
    assert out["stage_runs"] == 6

    import mlflow
    mlflow.set_tracking_uri(out["tracking_uri"])
    df = mlflow.search_runs(experiment_names=["selfilter"], filter_string="tags.selfilter.kind = 'comparison'")
    # the documented one-liner gives method, budget, seed and each benchmark metric as columns
    assert {"params.method", "params.budget", "params.seed", "metrics.shapes_vqa/exact_match",
            "metrics.shapes_pope/f1/adversarial", "metrics.overall"} <= set(df.columns)
    assert len(df) == out["comparison_runs"]

    assert track.main(_argv(root)) == 0  # dvc repro -f track: same outputs, nothing new
    again = json.loads((root / "metrics/tracking.json").read_text())
    assert again["status"] == "already_tracked" and again["parent_run_id"] == out["parent_run_id"]
    assert len(mlflow.search_runs(experiment_names=["selfilter"])) == 1 + out["runs_created"]


def test_unreachable_store_fails_before_work_and_writes_nothing(tmp_path, monkeypatch, capsys):
    root = build_fake_pipeline(tmp_path / "proj")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:pw@127.0.0.1:{port}")
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace(
        "tracking: {}", "tracking: {probe_timeout_s: 2}"))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert track.main(_argv(root)) == 1
    err = capsys.readouterr().err
    assert "is not usable" in err and "was not written" in err and "pw" not in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # no output, no store files


def test_disabled_tracking_writes_a_skipped_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # would fail if contacted
    root = build_fake_pipeline(tmp_path / "proj", tracking={"enabled": False})
    assert track.main(_argv(root)) == 0
    assert json.loads((root / "metrics/tracking.json").read_text()) == {"status": "disabled"}


def test_bad_params_key_is_named(tmp_path, capsys):
    root = build_fake_pipeline(tmp_path / "proj", tracking={"experimnt": "x"})
    assert track.main(_argv(root)) == 1
    assert "tracking.experimnt" in capsys.readouterr().err


def test_parent_run_comes_from_the_flow_environment(monkeypatch):
    monkeypatch.setenv("SELFILTER_MLFLOW_PARENT", "abc123")
    assert track.parse_args([]).parent == "abc123"
    assert track.parse_args(["--parent", "x"]).parent == "x"
