"""Two flow runs of one deployment (prefect.yaml's `smoke`, concurrency_limit 1) against a real
Prefect server, taken by one worker that could run both at once: they must not overlap in time,
and both must complete. The worker's checkout is a tiny DVC project (a stage that sleeps), so
the case costs the server and the flow, not the pipeline; it carries the flow's code (a worker
runs its checkout's flows/). Soak: about 2 minutes."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from services import BIN, PrefectServer
from smoke_checkout import REPO

pytestmark = [pytest.mark.soak, pytest.mark.slow]

DVC_YAML = """stages:
  prepare:
    cmd: python -c "import time, pathlib; time.sleep(8); pathlib.Path('out.txt').write_text('done')"
    params: [prepare]
    outs: [out.txt]
"""


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _project(root: Path, env: dict) -> Path:
    root.mkdir(parents=True)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("prepare:\n  n: 1\ntracking:\n  enabled: false\n")
    (root / "profiles").mkdir()
    (root / "profiles/smoke.yaml").write_text("prepare:\n  n: 2\n")
    # a worker runs the flow from its own checkout (prefect.yaml: no build, no push)
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@example.com")
    _git(root, "config", "user.name", "t")
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, env=env, check=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "tiny")
    return root


def test_deployment_concurrency_limit_holds(tmp_path, ledger):
    server = PrefectServer(tmp_path / "prefect-home", tmp_path / "server.log").start()
    worker = None
    try:
        env = server.env
        clone = tmp_path / "selfilter"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        project = _project(tmp_path / "project", env)

        def cli(*args: str) -> str:
            p = subprocess.run([str(BIN / "prefect"), *args], cwd=clone, env=env, capture_output=True, text=True,
                               timeout=300)
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
            return p.stdout + p.stderr

        cli("work-pool", "create", "selfilter-cpu", "--type", "process")
        cli("deploy", "--name", "smoke", "--no-prompt")
        ids = [re.search(r"UUID:\s*([0-9a-f-]{36})", cli("deployment", "run", "selfilter-pipeline/smoke",
                                                          "--param", "force=true")).group(1) for _ in range(2)]
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "selfilter-cpu"],
                                  cwd=tmp_path, env=dict(env, SELFILTER_ROOT=str(project)),
                                  stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline, runs = time.monotonic() + 600, []
        while time.monotonic() < deadline:
            runs = [httpx.get(f"{server.api}/flow_runs/{i}", timeout=10).json() for i in ids]
            if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
                break
            time.sleep(2)
        spans = sorted((datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"]))
                       for r in runs if r.get("start_time") and r.get("end_time"))
        completed = sum(r["state"]["type"] == "COMPLETED" for r in runs)
        overlap = len(spans) == 2 and spans[1][0] < spans[0][1]
        ledger("two flow runs of one deployment (limit 1)", "Prefect server + 1 process worker",
               f"{completed} of 2 completed; " + ("overlapped" if overlap else "ran one after the other"),
               lost=(2 - completed) + int(overlap))
        assert completed == 2 and len(spans) == 2 and not overlap, (runs, (tmp_path / "worker.log").read_text()[-4000:])
    finally:
        if worker is not None:
            from smoke_checkout import kill_group

            kill_group(worker)
        server.stop()
