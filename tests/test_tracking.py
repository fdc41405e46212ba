"""selfilter.tracking: logging a pipeline's lineage into a real sqlite MLflow store."""
from __future__ import annotations

import json
import os
import socket

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fake_pipeline import BUDGETS, METHODS, SEEDS, build_fake_pipeline, fresh_sqlite_store

from selfilter import lineage as L
from selfilter import tracking as T

N_COMPARED = len(METHODS) * len(BUDGETS) * len(SEEDS)


# ------------------------------------------------------------------ logging into a real store
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return build_fake_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    return fresh_sqlite_store(d / "mlruns.db"), (d / "mlartifacts").as_uri()


def _tracker(store, experiment):
    return T.connect(store[0], experiment, store[1])


def test_log_lineage_parent_nested_runs_params_metrics_inputs(pipeline, store):
    tracker = _tracker(store, "full")
    result = T.log_lineage(tracker, L.collect_lineage(pipeline), progress=False)
    assert result.status == "logged"
    c = tracker.client
    runs = c.search_runs([tracker.experiment_id], "tags.`selfilter.kind` = 'comparison'", max_results=1000)
    assert len(runs) == N_COMPARED
    assert {r.data.tags[T.PARENT_TAG] for r in runs} == {result.parent_run_id}
    assert {(r.data.params["method"], r.data.params["budget"], r.data.params["seed"]) for r in runs} == {
        (m, str(b), str(s)) for m in METHODS for b in BUDGETS for s in SEEDS}
    run = next(r for r in runs if r.data.params["method"] == "random" and r.data.params["budget"] == "0.15"
               and r.data.params["seed"] == "1")
    assert set(run.data.metrics) == {"shapes_vqa/exact_match", "shapes_pope/f1/adversarial",
                                     "shapes_count/acc", "overall", "train/loss", "train/epoch"}
    assert run.info.status == "FINISHED"
    hist = c.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in hist] == [(0, 3.0), (1, 2.5), (2, 2.0)]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    from selfilter.io import file_digest
    subset = pipeline / "selections/random/b0.15_s1/subset.json"
    assert inputs["random_b0.15_s1"].dataset.digest == file_digest(subset)[:32]
    assert inputs["random_b0.15_s1"].tags[0].value == "training"
    assert json.loads(inputs["pool"].dataset.profile)["num_rows"] == 40
    arts = {a.path for a in c.list_artifacts(run.info.run_id)} | {
        a.path for d in ("eval", "selection") for a in c.list_artifacts(run.info.run_id, d)}
    assert {"selected_uids.json", "eval/results.json", "selection/meta.json", "key_names.json"} <= arts

    parent = c.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[T.COMPLETE] == "true"
    assert parent.data.tags[L.DIGEST] == result.pipeline_digest
    assert "dvc.stage.stage1" in parent.data.tags and "git.commit" in parent.data.tags
    assert {a.path for a in c.list_artifacts(result.parent_run_id, "pipeline")} >= {
        "pipeline/metrics.json", "pipeline/comparison.md", "pipeline/params.yaml", "pipeline/dvc.lock", "pipeline/plots"}

    # one aggregate per (method, budget) of the summary, no seed param, logging the same mean; the
    # parent logs a handful of headline metrics, not the flattened summary; no run has > 200
    aggs = c.search_runs([tracker.experiment_id], "tags.`selfilter.kind` = 'aggregate'", max_results=1000)
    summary = json.loads((pipeline / "reports/metrics.json").read_text())["summary"]["methods"]
    assert {(r.data.params["method"], r.data.params["budget"]) for r in aggs} == {
        (m, b) for m in summary for b in summary[m]}
    for r in aggs:
        assert "seed" not in r.data.params and r.data.tags[T.PARENT_TAG] == result.parent_run_id
        mean = summary[r.data.params["method"]][r.data.params["budget"]]["metrics"]["overall"]["mean"]
        assert r.data.metrics["overall"] == pytest.approx(mean) and r.data.metrics["n_seeds"] == 1
        assert "overall_ci_low" not in r.data.metrics  # one seed: no interval, not a NaN
    sf = next(r for r in aggs if r.data.params["method"] == "self_filter_scores" and r.data.params["budget"] == "0.15")
    assert sf.data.metrics["gap_to_random"] == pytest.approx(-0.05) and "separated_from_random" not in sf.data.metrics
    assert set(parent.data.metrics) == {"calibrated", "runs", "best_overall_b0.05", "best_overall_b0.15"}
    every = c.search_runs([tracker.experiment_id], "", max_results=1000)
    assert max(len(r.data.metrics) for r in every) <= 200

    s1 = c.search_runs([tracker.experiment_id], "tags.`selfilter.key` = 'stage/stage1'")[0]
    assert s1.data.tags[T.PARENT_TAG] == result.parent_run_id
    assert [m.value for m in c.get_metric_history(s1.info.run_id, "scores/loss")] == [2.0, 1.9, 1.8, 1.7, 1.6]
    s1_arts = {a.path for d in ("plots", "stage1/scores") for a in c.list_artifacts(s1.info.run_id, d)}
    assert {"plots/difficulty_scores.png", "stage1/scores/score_net.safetensors"} <= s1_arts


def test_retracking_same_outputs_creates_no_duplicates(pipeline, store):
    tracker = _tracker(store, "idem")
    first = T.log_lineage(tracker, L.collect_lineage(pipeline), progress=False)
    again = T.log_lineage(tracker, L.collect_lineage(pipeline), progress=False)
    assert again.status == "already_tracked" and again.parent_run_id == first.parent_run_id
    assert len(tracker.client.search_runs([tracker.experiment_id], "")) == 1 + len(first.created)


def test_interrupted_tracking_resumes_without_duplicates(pipeline, store, monkeypatch):
    tracker = _tracker(store, "resume")
    lineage = L.collect_lineage(pipeline)
    real_log, calls = T.Tracker.log, []

    def failing_log(self, run_id, record):  # the store dies after the parent and 3 children
        calls.append(record.key)
        if len(calls) == 5:
            raise ConnectionError("store went away")
        return real_log(self, run_id, record)

    monkeypatch.setattr(T.Tracker, "log", failing_log)
    with pytest.raises(ConnectionError):
        T.log_lineage(tracker, lineage, progress=False)
    monkeypatch.setattr(T.Tracker, "log", real_log)
    result = T.log_lineage(tracker, lineage, progress=False)
    children = len(lineage.stages) + len(lineage.aggregates) + N_COMPARED
    assert len(result.skipped) == 3 and len(result.created) == children - 3
    active = tracker.client.search_runs([tracker.experiment_id], "")
    assert len(active) == 1 + children  # the half-logged child was replaced
    assert all(r.info.status == "FINISHED" for r in active)


def test_pipeline_run_shares_its_parent_with_track(pipeline, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    monkeypatch.delenv(T.PARENT_ENV, raising=False)
    (pipeline / "params_flow.yaml").write_text("tracking: {experiment: flow}\n")
    with T.pipeline_run(pipeline, "params_flow.yaml", run_name="prefect flow") as parent_id:
        assert os.environ[T.PARENT_ENV] == parent_id  # what the track subprocess will read
        tracker = _tracker(store, "flow")
        result = T.log_lineage(tracker, L.collect_lineage(pipeline), parent_run_id=os.environ[T.PARENT_ENV],
                               progress=False)
        assert tracker.client.get_run(parent_id).info.status == "RUNNING"  # the flow closes it
    assert T.PARENT_ENV not in os.environ
    parent = tracker.client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[L.DIGEST] == result.pipeline_digest
    children = tracker.client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(children) == len(result.created) > N_COMPARED


# ------------------------------------------------------------------ failure policy: fail first
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_http_store_fails_fast_before_any_work(tmp_path):
    with pytest.raises(T.TrackingUnavailable, match=r"http://127\.0\.0\.1:\d+ is not usable"):
        T.connect(f"http://127.0.0.1:{_closed_port()}", "x", timeout_s=2)


def test_unwritable_sqlite_store_fails(tmp_path):
    (tmp_path / "file").write_text("not a folder")  # root can write anywhere; a file can't hold a db
    with pytest.raises(T.TrackingUnavailable, match="is not usable"):
        T.connect(f"sqlite:///{tmp_path / 'file' / 'mlruns.db'}", "x")


def test_credentials_are_redacted():
    assert T.redact_uri("https://me:secret@host/x") == "https://***@host/x"
    assert T.redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"


def test_uri_resolution_env_over_params_over_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert T.resolve_uri("http://h:5000", tmp_path) == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert T.resolve_uri("http://h:5000", tmp_path) == "sqlite:///elsewhere.db"


def test_deleted_experiment_is_reported_not_silently_recreated(store):
    tracker = _tracker(store, "gone")
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(T.TrackingUnavailable, match="'gone' .* is deleted"):
        _tracker(store, "gone")


def test_ui_links_rank_the_aggregates_and_never_print_credentials():
    from urllib.parse import parse_qs, urlsplit

    links = T.ui_links("http://user:secret@mlflow.example:5000/", "7")
    assert "secret" not in links["ranking"] and links["ranking"].startswith("http://mlflow.example:5000/#/experiments/7/runs?")
    query = parse_qs(urlsplit(links["ranking"].split("#", 1)[1]).query)
    assert query == {"searchFilter": ["tags.`selfilter.kind` = 'aggregate'"], "orderByKey": ["metrics.`overall`"],
                     "orderByAsc": ["false"]}
    assert "comparison" in T.ui_links("sqlite:///mlruns.db", "1")["seeds"]
    assert T.ui_links("sqlite:///mlruns.db", "1")["ranking"].startswith(T.LOCAL_UI)
