"""flows/grid.py without a server: the one-line refusals a user meets before any work.

The grid itself (server, deployment, three workers, a killed worker) is
tests/reliability/test_grid_workers.py; the supervisor's logic is tests/test_grid.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)


def test_a_worker_checks_the_shared_workspace_before_it_starts(tmp_path):
    p = _run(["-m", "flows.grid", "worker", "--workspace", str(tmp_path / "absent"), "--pool", "p"])
    assert p.returncode == 2 and p.stdout == ""
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("grid worker: refused:") and "absent is not visible here" in line
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("finetune:\n  device: cuda\n")
    p = _run(["-m", "flows.grid", "worker", "--workspace", str(tmp_path), "--pool", "p", "--check-only"],
             CUDA_VISIBLE_DEVICES="")
    assert p.returncode == 2 and "trains on cuda and this machine has no usable GPU" in p.stderr
    (tmp_path / "params.yaml").write_text("finetune:\n  device: cpu\n")
    p = _run(["-m", "flows.grid", "worker", "--workspace", str(tmp_path), "--pool", "p", "--check-only"])
    assert p.returncode == 0 and "usable here" in p.stdout


def test_fan_out_without_a_server_is_one_line_before_any_work(tmp_path):
    code = ("from flows.grid import _check_deployment\n"
            "try:\n    _check_deployment('selfilter-unit/unit')\n"
            "except RuntimeError as e:\n    print(e)\n")
    p = _run(["-c", code], PREFECT_HOME=str(tmp_path))
    assert p.returncode == 0 and "fan_out needs a Prefect server" in p.stdout and "PREFECT_API_URL" in p.stdout


def test_a_unit_runs_nothing_but_a_stage_module(tmp_path):
    import pytest

    from flows.grid import _python_argv, _remove_outputs
    from selfilter.grid import UnitRefused

    for bad in (["bash", "-c", "echo"], ["python", "-c", "print(1)"], ["python", "-m", "os"], ["python"]):
        with pytest.raises(UnitRefused, match="expected `python -m stages.<name> ...`"):
            _python_argv(bad, REPO)
    argv, env = _python_argv(["python", "-m", "stages.select", "--method", "random"], REPO)
    assert argv[1:] == ["-P", "-m", "stages.select", "--method", "random"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    (tmp_path / "stage1" / "scores").mkdir(parents=True)
    _remove_outputs(tmp_path, ["stage1/scores"])
    assert not (tmp_path / "stage1" / "scores").exists() and (tmp_path / "stage1").is_dir()
    for outside in ("..", "../x", "/etc", "."):
        with pytest.raises(UnitRefused, match="is not inside the workspace"):
            _remove_outputs(tmp_path, [outside])
