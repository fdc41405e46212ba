"""Tracking to a real `mlflow server` on 127.0.0.1, through the real track stage: the lineage
equals the sqlite store's; with the server down, track fails with one line and every other
output stays as it was; once the server is back, a rerun adds the missing runs exactly once;
a track process killed with SIGKILL mid-way (held at a named point, so the kill lands inside the
work on any machine) leaves nothing that its rerun duplicates."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fake_pipeline import build_fake_pipeline, fresh_sqlite_store
from holds import hold_env, wait_held
from services import MlflowServer, snapshot
from stages import track

pytestmark = pytest.mark.slow


def _argv(root: Path) -> list[str]:
    return ["--params", str(root / "params.yaml"), "--root", str(root), "--records", str(root / "data/pool/records.jsonl"),
            "--report", str(root / "reports/metrics.json"), "--out", str(root / "metrics/tracking.json"), "--no-progress"]


def _digests(root: Path, skip: str = "metrics/tracking.json") -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and str(p.relative_to(root)) != skip and not str(p.relative_to(root)).startswith(("mlruns", "mlartifacts"))}


def _rerun_pipeline(root: Path) -> None:
    """A second pipeline run: new eval numbers and lock entries, so a new pipeline digest."""
    import yaml

    report = json.loads((root / "reports/metrics.json").read_text())
    for run in report["runs"]:
        run["metrics"]["overall"] = round(run["metrics"]["overall"] + 0.01, 4)
    (root / "reports/metrics.json").write_text(json.dumps(report))
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    lock["stages"]["compare"]["outs"][0]["md5"] = "2" * 32
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    s = MlflowServer(fresh_sqlite_store(tmp_path / "server/mlflow.db"), tmp_path / "server/artifacts",
                     tmp_path / "server.log")
    s.start()
    yield s
    s.stop()


def test_server_lineage_outage_and_recovery(tmp_path, server, monkeypatch, capsys, ledger):
    monkeypatch.delenv("SELFILTER_MLFLOW_PARENT", raising=False)
    a, b = build_fake_pipeline(tmp_path / "a"), build_fake_pipeline(tmp_path / "b")  # the same outputs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_sqlite_store(tmp_path / "sqlite/mlruns.db"))
    assert track.main(_argv(a)) == 0
    reference = snapshot(os.environ["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    assert track.main(_argv(b)) == 0
    served = snapshot(server.uri)
    assert served == reference  # same lineage, whichever store
    capsys.readouterr()

    _rerun_pipeline(b)
    before = _digests(b)
    summary_before = (b / "metrics/tracking.json").read_bytes()
    server.stop()
    started = time.monotonic()
    rc = track.main(_argv(b))
    down_s = time.monotonic() - started
    err = capsys.readouterr().err
    error_lines = [ln for ln in err.splitlines() if ln.startswith("track: error:")]
    assert rc == 1 and len(error_lines) == 1 and "Traceback" not in err and server.uri in err, err
    assert _digests(b) == before and (b / "metrics/tracking.json").read_bytes() == summary_before
    assert down_s < 60

    server.start()
    assert track.main(_argv(b)) == 0
    first = json.loads((b / "metrics/tracking.json").read_text())
    assert track.main(_argv(b)) == 0
    again = json.loads((b / "metrics/tracking.json").read_text())
    after = snapshot(server.uri)  # raises on any duplicate key
    new = {k for k in after if k[0] == first["pipeline_digest"]}
    expected = first["stage_runs"] + first["aggregate_runs"] + first["comparison_runs"] + 1
    lost = expected - len(new)
    ledger("MLflow server down during track", "track (mlflow server)",
           f"one line, exit 1 in {down_s:.1f} s, other outputs unchanged; after restart {len(new)} runs added once",
           lost=lost, calls=len(after), bound=len(reference) + expected)
    assert lost == 0 and first["runs_created"] == expected - 1 and again["status"] == "already_tracked"
    assert len(after) == len(reference) + expected
    assert all(v["status"] == "FINISHED" for v in after.values())


@pytest.mark.parametrize("seed", [0])
def test_sigkill_mid_track_leaves_nothing_to_duplicate(tmp_path, server, ledger, seed):
    """track holds right after opening its k-th child run (selfilter/holdpoints.py), so the kill
    lands with k-1 children finished, the k-th open and the parent open - on any machine."""
    root = build_fake_pipeline(tmp_path / "p", tracking={"experiment": f"crash-{seed}"})
    env = dict(os.environ, MLFLOW_TRACKING_URI=server.uri, OMP_NUM_THREADS="1")
    env.pop("SELFILTER_MLFLOW_PARENT", None)
    cmd = [sys.executable, "-m", "stages.track", *_argv(root)]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    kill_at = int(np.random.default_rng(seed).integers(1, 10))  # the child run open at the kill
    marker = tmp_path / "held"
    proc = subprocess.Popen(cmd, env=env | hold_env("track.run_opened", kill_at, marker),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = wait_held(marker, proc, timeout=180)
    exp = client.get_experiment_by_name(f"crash-{seed}")
    at_kill = [r.info.status for r in client.search_runs([exp.experiment_id], max_results=1000)] if exp else []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert held is not None and proc.returncode == -signal.SIGKILL, \
        f"track did not reach child run {kill_at} before it ended: the kill would have tested nothing"
    # the store at the kill: the parent and child k open (RUNNING), children 1..k-1 finished
    assert sorted(at_kill) == sorted(["RUNNING"] * 2 + ["FINISHED"] * (kill_at - 1)), at_kill
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((root / "metrics/tracking.json").read_text())
    after = snapshot(server.uri, f"crash-{seed}")  # raises on a duplicate key
    expected = summary["stage_runs"] + summary["aggregate_runs"] + summary["comparison_runs"] + 1
    orphans = [k for k, v in after.items() if v["parent"] is None and k[1] != "pipeline"]
    lost = expected - len(after)
    ledger(f"SIGKILL held with child run {kill_at} of {expected - 1} open ({kill_at - 1} finished)",
           "track (subprocess, mlflow server)",
           f"rerun reopened the parent, relogged the open run and finished; no duplicate, orphan or RUNNING run; "
           f"{summary['runs_skipped']} finished runs kept", lost=lost + len(orphans), calls=len(after), bound=expected)
    assert lost == 0 and not orphans and all(v["status"] == "FINISHED" for v in after.values())
    assert summary["runs_skipped"] == kill_at - 1  # finished before the kill: kept, not logged again


@pytest.mark.parametrize("seed", [0])
def test_sigkill_while_the_sqlite_store_is_created(tmp_path, ledger, seed):
    """track's first run creates mlruns.db; MLflow migrates its schema in ~1,700 SQL statements.
    The creating process holds after statement k (selfilter/holdpoints.py) and is killed there;
    the store it leaves must not be one that every later run fails on."""
    from selfilter.tracking import connect

    db = tmp_path / "store" / "mlruns.db"
    kill_at = int(np.random.default_rng(seed).integers(20, 1000))  # of ~1,700 with mlflow 3.x
    marker = tmp_path / "held"
    code = f"from selfilter.tracking import connect; connect('sqlite:///{db}', 'e')"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1") | hold_env("tracking.store_statement", kill_at,
                                                                                 marker))
    held = wait_held(marker, proc, timeout=120)
    left = sorted(p.name for p in db.parent.iterdir()) if db.parent.is_dir() else []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert held is not None and proc.returncode == -signal.SIGKILL, \
        f"the store was created before statement {kill_at}: the kill would have landed after the work"
    # at the kill: a half-migrated temporary store, and no mlruns.db for the next run to trip on
    assert "mlruns.db" not in left and f".mlruns.db.{held['pid']}.tmp" in left, left
    try:
        connect(f"sqlite:///{db}", "e")
        outcome, lost = "the next run creates the store", 0
    except Exception as e:  # noqa: BLE001 - any failure here is the finding
        outcome, lost = f"store unusable: {str(e)[:80]}", 1
    ledger(f"SIGKILL held at SQL statement {kill_at} of the creation of mlruns.db", "track (sqlite store)",
           f"{outcome}; the killed run's half-migrated temporary file stays beside it", lost=lost)
    assert lost == 0
