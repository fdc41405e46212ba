"""A real `mlflow server` on 127.0.0.1 that a test can stop and start again (same port, same
backend store), and a run-id-free snapshot of what a store holds, to compare two stores."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120  # ~7 s idle; a busy 2-core box needs more


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, backend_uri: str, artifacts: Path, log: Path):
        self.backend_uri, self.artifacts, self.log = backend_uri, artifacts, log
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", self.backend_uri, "--default-artifact-root", self.artifacts.as_uri()],
            env=env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:  # the server runs uvicorn workers: end its whole process group
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


def snapshot(uri: str, experiment: str = "selfilter") -> dict:
    """What the store holds, without run ids or times: per ``selfilter.key`` (per digest), the
    kind, parent's key, status, params, latest metrics, tags (selfilter.* and others, ids and
    MLflow-internal ones left out) and artifact paths. Raises if a key appears twice."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=10_000) if exp else []
    key_of = {r.info.run_id: (r.data.tags.get("selfilter.pipeline_digest"), r.data.tags.get("selfilter.key", "pipeline"))
              for r in runs}
    out: dict = {}
    for r in runs:
        k = key_of[r.info.run_id]
        if k in out:
            raise AssertionError(f"duplicate run for {k}")

        def files(path=None):
            for f in client.list_artifacts(r.info.run_id, path):
                yield from (files(f.path) if f.is_dir else [f.path])

        out[k] = {"status": r.info.status, "parent": key_of.get(r.data.tags.get("mlflow.parentRunId")),
                  "params": dict(r.data.params), "metrics": dict(r.data.metrics),
                  "tags": {t: v for t, v in r.data.tags.items() if not t.startswith("mlflow.")},
                  "artifacts": sorted(files())}
    return out
