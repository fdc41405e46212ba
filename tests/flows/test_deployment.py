"""The `smoke` deployment of prefect.yaml, end to end against a real Prefect server.

Starts `prefect server start` on 127.0.0.1 inside the test, creates the process work pool,
`prefect deploy`s `smoke` (pointed at a throwaway DVC project: the deployment's `workdir`
parameter), triggers a run, runs one worker with `--run-once`, and checks that the flow run
reached Completed and that its MLflow runs exist. The server is always killed at the end.
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

from flow_fixtures import REPO, make_dvc_project, mlflow_runs

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 420


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


def test_prefect_yaml_defines_smoke_and_gpu_deployments():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["smoke"]["work_pool"]["name"] == "selfilter-cpu"
    assert deployments["smoke"]["parameters"]["profile"] == "smoke"
    assert deployments["gpu"]["work_pool"]["name"] == "selfilter-gpu"
    assert deployments["gpu"]["parameters"]["profile"] == "gpu-llava7b"
    for d in deployments.values():
        assert d["entrypoint"] == "flows/pipeline.py:selfilter_pipeline"
    (step,) = spec["pull"]
    assert "prefect.deployments.steps.set_working_directory" in step


def test_smoke_deployment_runs_to_completed_on_a_process_worker(prefect_server, tmp_path):
    env = prefect_server
    project = make_dvc_project(tmp_path / "project")
    _cli(["work-pool", "create", "selfilter-cpu", "--type", "process"], env, REPO)
    params = json.dumps({"workdir": str(project), "profile": "tiny"})
    _cli(["deploy", "--name", "smoke", "--params", params, "--no-prompt"], env, REPO)
    out = _cli(["deployment", "run", "selfilter-pipeline/smoke"], env, REPO)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, out
    run_id = match.group(1)

    # The worker takes the run from its checkout (SELFILTER_ROOT, the pull step) and exits.
    worker_env = dict(env, SELFILTER_ROOT=str(REPO))
    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "selfilter-cpu", "--run-once"],
                            cwd=tmp_path, env=worker_env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    state = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{run_id}", timeout=10).json()["state"]
    assert state["type"] == "COMPLETED", (f"flow run {run_id}: {state}\nworker:\n{worker.stdout[-4000:]}\n"
                                          f"{worker.stderr[-4000:]}")

    # The stages really ran in the project, under the profile, and MLflow holds the lineage.
    assert (project / "reports" / "metrics.json").is_file()
    assert yaml.safe_load((project / "params.yaml").read_text())["select"]["k"] == 5
    runs = mlflow_runs(project)
    (parent,) = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == run_id]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.data.params.get("method") for r in children} >= {"random", "self_filter"}
    artifacts = httpx.post(f"{env['PREFECT_API_URL']}/artifacts/filter", timeout=10,
                           json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    assert {"selfilter-comparison", "selfilter-runs", "selfilter-params"} <= {a["key"] for a in artifacts}
