"""The smoke grid spread over three Prefect process workers (flows/grid.py), with faults.

A real Prefect server on 127.0.0.1 with basic auth; a one-worker reference: the smoke pipeline
run straight through in a fresh clone of HEAD. The grid's workspace is a copy of that clone
with the features, stage-1 and EL2N outputs and every fine-tune and evaluation removed (and
DVC's run-cache, which would otherwise restore them); three workers, each in its own clone with
one torch thread, take its units from the `unit` deployment: 2 feature shards, one unit per
stage-1 setting and EL2N, then one per fine-tune run (with its evaluation) and the base model's
evaluation. Faults:
- worker w1 is SIGKILLed (with its flow run and stage) inside its first run unit, after the
  fine-tune and before the evaluation: the hold point `grid.between_steps`
  (selfilter/holdpoints.py) stops it there and writes a marker, so the kill lands inside the
  work on any machine;
- a worker started without the credential gets 401 and takes no unit;
- a worker that cannot see the shared workspace refuses to start, in one line;
- right after the kill the Prefect server is stopped for 10 s and started again on the same
  port and database, while units run on the other workers and the host polls.
Checked against the reference: every unit done exactly once, on at least 2 workers; the
features, difficulty and EL2N tables, every checkpoint and evaluation byte-equal to the
one-worker run's; the killed unit's fine-tune not
redone; `dvc status` clean afterwards; MLflow runs naming their worker. About 6 minutes on 2 cores.
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from holds import hold_env
from services import BIN, PrefectServer
from smoke_checkout import REPO

pytestmark = pytest.mark.slow
AUTH = f"selfilter:{secrets.token_hex(16)}"  # drawn per session: the scan must not find this source file
HOLD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 1500
# outputs the grid recomputes besides the fine-tunes and evaluations: feature shards, then the
# stage-1 settings and EL2N as one unit per stage
RECOMPUTED = ("features/clip.npy", "features/scores.parquet", "features/summary.json", "stage1", "el2n")
OUTAGE_S = 10


def _quiet_env(base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("MLFLOW_TRACKING", "SELFILTER_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true", PREFECT_LOGGING_LEVEL="INFO")
    return env


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, capture_output=True)
    return dest


def _kill_tree(pid: int) -> list[str]:
    """SIGKILL a worker and everything it started (its flow runs are in sessions of their own)."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    names = [" ".join(p.cmdline()[:4]) for p in procs]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    return names


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    server = PrefectServer(tmp / "prefect-home", tmp / "server.log")
    server.env.update(PREFECT_SERVER_API_AUTH_STRING=AUTH, PREFECT_API_AUTH_STRING=AUTH)
    server.start()
    procs: list[subprocess.Popen] = []
    try:
        env = _quiet_env(server.env)

        def sh(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
            p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
            assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
            return p

        # the one-worker reference: the whole smoke pipeline in one checkout
        ref = _clone(tmp / "reference")
        sh([str(BIN / "python"), "-m", "flows.pipeline", "--profile", "smoke"], ref, timeout=1500)

        # the grid's shared workspace: the reference minus everything fine-tune/evaluate made
        ws = tmp / "shared"
        shutil.copytree(ref, ws, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        for rel in (*RECOMPUTED, "runs", "evals", ".cache/features", "reports/comparison.md", "reports/metrics.json",
                    "mlruns.db", "mlartifacts", ".dvc/cache/runs", ".dvc/tmp", "metrics/tracking.json"):
            p = ws / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

        sh([str(BIN / "prefect"), "work-pool", "create", "selfilter-units", "--type", "process"], ws)
        sh([str(BIN / "prefect"), "deploy", "--name", "unit", "--no-prompt"], ws)

        def worker(name: str, checkout: Path, extra: dict[str, str] | None = None, drop_auth: bool = False,
                   workspace: Path = ws) -> subprocess.Popen:
            wenv = dict(env, **(extra or {}))
            if drop_auth:
                wenv.pop("PREFECT_API_AUTH_STRING")
            proc = subprocess.Popen([str(BIN / "python"), "-m", "flows.grid", "worker", "--workspace", str(workspace),
                                     "--pool", "selfilter-units", "--name", name, "--checkout", str(checkout)],
                                    cwd=checkout, env=wenv, stdout=open(tmp / f"{name}.log", "w"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(proc)
            return proc

        marker = tmp / "held.json"
        clones = [_clone(tmp / f"checkout-{i}") for i in (1, 2, 3)]
        w1 = worker("w1", clones[0], hold_env("grid.between_steps", 1, marker))
        worker("w2", clones[1])
        worker("w3", clones[2])
        nocred = worker("nocred", clones[1], drop_auth=True)
        blind = worker("blind", clones[2], workspace=tmp / "not-mounted")

        host = subprocess.Popen([str(BIN / "python"), "-m", "flows.pipeline", "--fan-out", "selfilter-unit/unit",
                                 "--feature-shards", "2", "--lease-timeout", "15"], cwd=ws, env=env, stdout=open(tmp / "host.log", "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(host)
        deadline = time.monotonic() + HOLD_TIMEOUT_S
        while not marker.is_file():
            assert host.poll() is None, f"host ended before w1 held a unit:\n{(tmp / 'host.log').read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"w1 never held a unit:\n{(tmp / 'w1.log').read_text()[-4000:]}"
            time.sleep(1)
        held = json.loads(marker.read_text())
        killed = _kill_tree(w1.pid)
        # then the server goes away mid-grid (units running on w2/w3, the host polling) and comes back
        time.sleep(3)
        running_at_outage = sum(1 for p in (ws / ".grid").glob("*/units/*.json")  # live workers' units
                                if json.loads(p.read_text()).get("status") == "started"
                                and json.loads(p.read_text()).get("worker") != "w1")
        server.stop()
        time.sleep(OUTAGE_S)
        server.start()
        host.wait(timeout=RUN_TIMEOUT_S)
        return {"tmp": tmp, "ref": ref, "ws": ws, "env": env, "host_rc": host.returncode, "held": held,
                "killed": killed, "nocred": nocred.wait(timeout=120), "blind": blind.wait(timeout=120),
                "running_at_outage": running_at_outage}
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_tree(p.pid)
        server.stop()


def _records(ws: Path) -> list[dict]:
    """Every unit attempt of every grid the flow ran (feature shards, stages, runs)."""
    return [json.loads(p.read_text()) for p in sorted((ws / ".grid").glob("*/units/*.json"))]


def test_the_grid_finishes_every_unit_once_over_several_workers_equal_to_one_worker(grid, ledger):
    ws, ref, tmp = grid["ws"], grid["ref"], grid["tmp"]
    assert grid["host_rc"] == 0, (tmp / "host.log").read_text()[-6000:]
    records = _records(ws)
    done = [r for r in records if r["status"] == "done"]
    units = {f"{m.parent.name}/{m.name}" for m in (ref / "runs").glob("*/*") if (m / "done.json").is_file()}
    units |= {"_base", "shard:0of2", "shard:1of2", "stage:el2n"}
    units |= {f"stage:stage1@{d.name}" for d in (ref / "stage1").iterdir() if d.is_dir()}
    assert sorted(r["unit"] for r in done) == sorted(units)  # each exactly once
    assert len({r["worker"] for r in done}) >= 2

    # the killed unit: w1 began it and was killed inside it (the hook proves where); another worker finished it
    assert grid["held"]["point"] == "grid.between_steps"
    (first,) = [r for r in records if r["worker"] == "w1" and r["status"] != "done"]  # the unit w1 died in
    held_unit = first["unit"]
    assert first["status"] == "started" and "/" in held_unit, first
    (finished,) = [r for r in done if r["unit"] == held_unit]
    assert finished["worker"] in {"w2", "w3"} and finished["attempt"] == 2
    assert any("prefect.engine" in k for k in grid["killed"]), grid["killed"]
    trained_by = json.loads((ws / "runs" / held_unit / "train_log.json").read_text())["worker"]
    assert trained_by == "w1"  # its fine-tune, finished before the kill, was not redone

    # outputs: byte-equal checkpoints and evaluations; nothing half-written left
    differ = []
    compared = [*sorted((ref / "runs").rglob("*.safetensors")), *sorted((ref / "evals").rglob("metrics.json")),
                ref / "features/clip.npy", ref / "features/scores.parquet", *sorted((ref / "stage1").rglob("*.parquet")),
                *sorted((ref / "el2n").rglob("*.parquet"))]
    for f in compared:
        rel = f.relative_to(ref)
        if not (ws / rel).is_file() or (ws / rel).read_bytes() != f.read_bytes():
            differ.append(str(rel))
    assert len(compared) >= 20 and not differ, differ
    assert not list((ws / "runs").rglob("checkpoint"))
    ref_runs = {(r["method"], r["budget"], r["seed"]): r["metrics"]
                for r in json.loads((ref / "reports/metrics.json").read_text())["runs"]}
    ws_runs = {(r["method"], r["budget"], r["seed"]): r["metrics"]
               for r in json.loads((ws / "reports/metrics.json").read_text())["runs"]}
    assert ws_runs == ref_runs

    # DVC is still the judge: nothing left to do
    status = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=ws, env=grid["env"], capture_output=True,
                            text=True)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr

    # MLflow: every per-run record names the worker that trained it
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlruns.db'}")
    exp = client.get_experiment_by_name("selfilter")
    runs = client.search_runs([exp.experiment_id], "tags.`selfilter.kind` = 'comparison'")
    assert runs and {r.data.tags.get("selfilter.worker") for r in runs} <= {"w1", "w2", "w3"}
    assert all(r.data.tags.get("selfilter.host") for r in runs)

    ledger(f"Prefect server stopped for {OUTAGE_S} s mid-grid, then restarted", "grid (server)",
           f"{grid['running_at_outage']} unit(s) running on live workers at the outage; every unit done once, "
           "host exit 0",
           lost=len(differ), repeat_calls=len(done) - len({r['unit'] for r in done}), calls=len(done),
           bound=len(units))
    ledger("worker SIGKILLed inside a unit (after its fine-tune, before its evaluation)", "grid (3 process workers)",
           f"unit resubmitted after its lease went stale, finished by {finished['worker']}; "
           f"{len(done)} units done once each on {len({r['worker'] for r in done})} workers", lost=len(differ),
           repeat_calls=int(trained_by != "w1"), calls=len(done), bound=len(units))


def test_a_worker_without_the_credential_is_refused_and_takes_no_unit(grid, ledger):
    log = (grid["tmp"] / "nocred.log").read_text()
    assert grid["nocred"] != 0 and "401" in log, log[-2000:]
    taken = [r for r in _records(grid["ws"]) if r["worker"] == "nocred"]
    assert not taken
    ledger("worker without the Prefect credential", "grid worker", "401 from the server, worker exited",
           calls=len(taken), bound=0)


def test_the_credential_is_in_no_file_the_grid_wrote(grid, ledger):
    """PREFECT_API_AUTH_STRING lives only in the environment: not in the workspace, the worker
    checkouts, the logs, the server's home (its database included) or any unit's output."""
    secret = AUTH.split(":", 1)[1].encode()
    scanned, found = 0, []
    for path in grid["tmp"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            scanned += 1
            if secret in path.read_bytes():
                found.append(str(path.relative_to(grid["tmp"])))
    assert scanned > 100 and not found, found
    ledger("Prefect credential in the environment of host and workers", f"{scanned} files: workspace, checkouts, "
           "logs, server home", f"found in {len(found)} files", lost=len(found))


def test_a_worker_that_cannot_see_the_shared_workspace_refuses_in_one_line(grid, ledger):
    log = (grid["tmp"] / "blind.log").read_text().strip().splitlines()
    assert grid["blind"] == 2 and len(log) == 1, log
    assert log[0].startswith("grid worker: refused:") and "is not visible here" in log[0]
    taken = [r for r in _records(grid["ws"]) if r["worker"] == "blind"]
    assert not taken
    ledger("worker cannot see the shared workspace", "grid worker", "refused at start, one line",
           calls=len(taken), bound=0)
