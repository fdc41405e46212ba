"""Real servers on 127.0.0.1 that a test can stop and start again on the same port (`mlflow
server`, `prefect server`), and a run-id-free snapshot of what an MLflow store holds."""
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


class Service:
    """A server process in its own session, healthy when ``health`` answers 200."""

    def __init__(self, argv: list[str], health: str, log: Path, env: dict[str, str]):
        self.argv, self.health, self.log, self.env = argv, health, log, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Service":
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(self.health, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv[:2]} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:  # servers run worker processes: end the whole process group
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


class MlflowServer(Service):
    def __init__(self, backend_uri: str, artifacts: Path, log: Path):
        port = free_port()
        self.uri = f"http://127.0.0.1:{port}"
        super().__init__([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--backend-store-uri", backend_uri, "--default-artifact-root", artifacts.as_uri()],
                         f"{self.uri}/health", log, dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1"))


class PrefectServer(Service):
    def __init__(self, home: Path, log: Path):
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(PREFECT_HOME=str(home), PREFECT_API_URL=self.api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                        PREFECT_LOGGING_LEVEL="WARNING", PREFECT_CLI_PROMPT="false", DVC_NO_ANALYTICS="1",
                        DO_NOT_TRACK="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        super().__init__([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                         f"{self.api}/health", log, self.env)


def fresh_client(uri: str):
    """An MlflowClient that reads ``uri`` as it is now. MLflow keeps one store and one SQLAlchemy
    engine - open connections included - per URI for the life of a process: once a test deletes
    an sqlite store and a subprocess creates it again, a cached client goes on reading the deleted
    file (the soak's track checks did, before this)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    if uri.startswith("sqlite:"):
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
        _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    return MlflowClient(tracking_uri=uri)


def snapshot(uri: str, experiment: str = "selfilter") -> dict:
    """What the store holds, without run ids or times: per ``selfilter.key`` (per digest), the
    kind, parent's key, status, params, latest metrics, tags (selfilter.* and others, ids and
    MLflow-internal ones left out) and artifact paths. Raises if a key appears twice."""
    client = fresh_client(uri)
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
                  # NaN (a CI over one seed) != NaN: compare it as a string
                  "params": dict(r.data.params), "metrics": {m: repr(v) for m, v in r.data.metrics.items()},
                  "tags": {t: v for t, v in r.data.tags.items() if not t.startswith("mlflow.")},
                  "artifacts": sorted(files())}
    return out
