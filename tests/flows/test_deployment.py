"""The `smoke` deployment of prefect.yaml, end to end against a real Prefect server.

Starts `prefect server start` on 127.0.0.1 inside the test, creates the process work pool,
`prefect deploy`s `smoke` exactly as prefect.yaml defines it, triggers a run and runs one worker
with `--run-once`. The worker's checkout (SELFILTER_ROOT) is a fresh `git clone` of this
repository's committed HEAD, so the real pipeline - every DVC stage of dvc.yaml, with
profiles/smoke.yaml - runs there and never in the developer's working copy. The test checks that
the flow run reached Completed, that reports/metrics.json holds a run for every method, and that
the clone's MLflow store holds the parent run and one run per (method, budget, seed). The server
is always killed at the end. About 3 minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flow_fixtures import REPO, mlflow_runs

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 900  # the whole smoke pipeline: ~3 min on 2 idle cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A Prefect server on a free 127.0.0.1 port with a private PREFECT_HOME; yields its env."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("PREFECT_"):
            env.pop(key)
    env.pop("MLFLOW_TRACKING_URI", None)  # the clone's default store: <clone>/mlruns.db
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_CLI_PROMPT="false", DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = open(home / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not become healthy:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield env
    finally:
        # The server runs its own children (uvicorn, services): end its whole process group.
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def _cli(args: list[str], env: dict, cwd: Path, timeout: float = 180) -> str:
    proc = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"`prefect {' '.join(args)}` exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def test_prefect_yaml_defines_smoke_gpu_and_regimes_deployments():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["smoke"]["work_pool"]["name"] == "selfilter-cpu"
    assert deployments["smoke"]["parameters"]["profile"] == "smoke"
    assert deployments["gpu"]["work_pool"]["name"] == "selfilter-gpu"
    assert deployments["gpu"]["parameters"]["profile"] == "gpu-llava7b"
    assert deployments["regimes"]["entrypoint"] == "flows/regimes.py:selfilter_regimes"
    assert (REPO / deployments["regimes"]["parameters"]["sweep"]).is_file()
    import importlib
    import inspect

    for d in deployments.values():
        path, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d.get("parameters", {})) <= accepted, (d["name"], set(d.get("parameters", {})) - accepted)
    (step,) = spec["pull"]
    assert "selfilter.checkout.use_checkout" in step  # no SELFILTER_ROOT needed (tests/flows/test_checkout.py)


def _clone_head(dest: Path) -> Path:
    """A fresh clone of the repository's committed HEAD (uncommitted work is not in it)."""
    proc = subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"git clone {REPO} failed:\n{proc.stderr}")
    return dest


@pytest.fixture(scope="module")
def smoke_run(prefect_server, tmp_path_factory):
    """The smoke deployment run to its end by a process worker; yields (clone, run id, worker log)."""
    env = prefect_server
    tmp_path = tmp_path_factory.mktemp("deployment")
    clone = _clone_head(tmp_path / "selfilter")
    _cli(["work-pool", "create", "selfilter-cpu", "--type", "process"], env, clone)
    # The deployment as prefect.yaml defines it: profile smoke, workdir "." (the worker's checkout).
    _cli(["deploy", "--name", "smoke", "--no-prompt"], env, clone)
    out = _cli(["deployment", "run", "selfilter-pipeline/smoke"], env, clone)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, out
    run_id = match.group(1)

    # The worker is started the Prefect way - `prefect worker start --pool ...` from inside the
    # checkout, no SELFILTER_ROOT (PWD is what a shell exports there) - takes the run and exits.
    worker_env = {k: v for k, v in env.items() if k != "SELFILTER_ROOT"}
    worker_env["PWD"] = str(clone)
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "w") as log:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "selfilter-cpu", "--run-once"],
                                  cwd=clone, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            worker.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)  # the worker, its flow run and the stage it runs
            worker.wait(timeout=30)
            pytest.fail(f"worker still running after {RUN_TIMEOUT_S} s:\n{worker_log.read_text()[-6000:]}")
    return clone, run_id, worker_log


def test_smoke_deployment_runs_the_real_pipeline_to_completed_on_a_process_worker(prefect_server, smoke_run):
    env = prefect_server
    clone, run_id, worker_log = smoke_run
    state = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", timeout=10).json()["state"]
    assert state["type"] == "COMPLETED", f"flow run {run_id}: {state}\nworker:\n{worker_log.read_text()[-8000:]}"

    # The smoke profile was applied in the clone, over its committed params.yaml.
    params_text = (clone / "params.yaml").read_text()
    assert params_text.startswith("# selfilter: generated by flows.pipeline") and "profiles/smoke.yaml" in params_text
    params = yaml.safe_load(params_text)
    smoke = yaml.safe_load((clone / "profiles" / "smoke.yaml").read_text())
    assert params["data"]["shapes"]["pool_size"] == smoke["data"]["shapes"]["pool_size"]
    methods = set(params["select"]["methods"])

    # Every DVC stage ran for real: outputs exist and DVC finds nothing left to do.
    for settings in params["stage1"]["settings"]:
        assert (clone / "stage1" / settings / "difficulty.parquet").is_file()
    for path in ("models/base/config.json", "features/clip.npy", "judge/ratings.parquet", "el2n/scores.parquet",
                 "reports/comparison.md", "metrics/tracking.json"):
        assert (clone / path).is_file(), path
    for folder in ("selections", "runs", "evals"):
        assert {p.name for p in (clone / folder).iterdir() if p.is_dir()} >= methods, folder
    status = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=clone, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr

    # reports/metrics.json: a run for every method, at the profile's budget(s) and seed(s).
    report = json.loads((clone / "reports" / "metrics.json").read_text())
    compared = {(r["method"], float(r["budget"]), int(r["seed"])) for r in report["runs"]}
    assert {m for m, _, _ in compared} == methods
    assert {s for _, _, s in compared} == set(params["select"]["seeds"])

    # MLflow (the clone's mlruns.db): this flow run's parent, a run per stage, and one run per
    # (method, budget, seed) with those params.
    runs = mlflow_runs(clone)
    (parent,) = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == run_id]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stage_runs = {r.info.run_name for r in children if r.data.tags.get("selfilter.kind") == "stage"}
    assert stage_runs >= {"prepare", "base", "features", "judge", "stage1", "el2n", "select", "finetune",
                          "evaluate", "compare"}
    tracked = {(r.data.params["method"], float(r.data.params["budget"]), int(r.data.params["seed"]))
               for r in children if r.data.tags.get("selfilter.kind") == "comparison"}
    assert tracked == compared

    artifacts = httpx.post(f"{env['PREFECT_API_URL']}/artifacts/filter", timeout=10,
                           json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    assert {"selfilter-comparison", "selfilter-runs", "selfilter-params"} <= {a["key"] for a in artifacts}


EXPS_DROP = re.search(r"--drop '([^']+)'", (REPO / "Makefile").read_text()).group(1).replace("$$", "$")  # make's $$


def _dvc(args: list[str], env: dict, cwd: Path, timeout: float = 900) -> str:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"`dvc {' '.join(args)}` exit {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("key, value", [("select.k_nearest", 5), ("select.n_clusters", 3)])
def test_dvc_experiment_reruns_only_what_reads_the_changed_key(prefect_server, smoke_run, key, value):
    """`dvc exp run -S key=value` on the finished smoke pipeline: only the select stages of the
    methods that read the key run again (plus the grid stages after them, which retrain and
    re-evaluate only the changed runs), and `dvc exp show --only-changed` is a few columns."""
    from selfilter.selection import registry as reg

    env = dict(prefect_server)
    clone = smoke_run[0]
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    if subprocess.run(["git", "status", "--porcelain", "params.yaml", "dvc.lock"], cwd=clone,
                      capture_output=True, text=True).stdout.strip():
        # the baseline: the smoke params and lock the flow run left behind
        subprocess.run(["git", "add", "params.yaml", "dvc.lock", "reports/summary.json"], cwd=clone, check=True)
        subprocess.run([*git, "commit", "-qm", "smoke baseline"], cwd=clone, check=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    methods = params["select"]["methods"]
    option = key.split(".", 1)[1]
    readers = {m for m in methods if option in reg.METHODS[m].options}
    assert readers and readers != set(methods)

    out = _dvc(["exp", "run", "-S", f"{key}={value}"], env, clone)
    ran = set(re.findall(r"Running stage '([^']+)'|Stage '([^']+)' is cached", out))
    ran = {a or b for a, b in ran}
    assert {s for s in ran if s.startswith("select@")} == {f"select@{m}" for m in readers}, out[-3000:]
    assert "select_params" in ran and not ran & {"prepare", "base", "features", "judge", "el2n",
                                                 *(f"stage1@{s}" for s in params["stage1"]["settings"])}
    n_runs = len(readers) * len(params["select"]["budgets"]) * len(params["select"]["seeds"])
    if "finetune" in ran:  # only the changed subsets retrain and are evaluated again
        retrained = re.search(r"finetune: (\d+) run\(s\) of", out)
        assert retrained is None or int(retrained.group(1)) <= n_runs, out[-3000:]
        evaluated = re.search(r"evaluate: (\d+) checkpoint\(s\) evaluated", out)
        assert evaluated is not None and int(evaluated.group(1)) <= n_runs, out[-3000:]

    table = _dvc(["exp", "show", "--only-changed", "--csv"], env, clone)
    header = table.splitlines()[0].split(",")
    assert key in header, header
    assert len(header) < 60, header  # tens of columns, not thousands
    assert any(c.endswith("%.winner") or c.startswith("cost.") for c in header), header  # the metrics
    # `make exps`: the same without the hashes of the outputs that changed - params and metrics only
    table = _dvc(["exp", "show", "--only-changed", "--csv", "--drop", EXPS_DROP], env, clone)
    header = table.splitlines()[0].split(",")
    assert key in header and not [c for c in header if "/" in c or c in ("runs", "evals", "selections")], header
