"""The grid's units on many machines: the `selfilter-unit` flow and the fan-out that feeds it.

One machine (the host) runs the pipeline flow with ``fan_out="selfilter-unit/unit"``: before
``dvc repro finetune`` it lists the units still to do (``--plan`` of the finetune and evaluate
stages), submits one flow run of the ``unit`` deployment per unit to the work pool, and watches
them (selfilter.grid.supervise) until every unit is done. Workers on other machines - each in
its own checkout of this repository, at the host's commit - take units one at a time; a unit
runs the stage commands exactly as dvc.yaml resolves them, with ``--only <unit>``, in the shared
workspace. Then the host's ``dvc repro finetune`` and ``dvc repro evaluate`` find every unit
finished, redo nothing, and write ``dvc.lock`` - so the workspace ends exactly as a
single-machine ``dvc repro`` leaves it.

Start a worker with the checks a unit needs done up front (shared workspace visible and
writable, a GPU when the profile trains on cuda)::

    python -m flows.grid worker --workspace /shared/selfilter --pool selfilter-units --name gpu-07

It refuses with one line when something is missing, else becomes ``prefect worker start``.
docs/prefect.md ("The grid on N GPU machines") has the whole recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from selfilter.grid import (WORKER_ENV, GridFailed, Lease, UnitRefused, code_digest, machine,
                            preflight, profile_needs_gpu, read_records, record_path, supervise, unit_done,
                            write_record)
from selfilter.holdpoints import hold

UNIT_DEPLOYMENT = "selfilter-unit/unit"
DEFAULT_LEASE_TIMEOUT_S = 120.0
ACCELERATE_ENV = "SELFILTER_ACCELERATE_CONFIG"  # set by `worker --accelerate-config`
TRAINING_STAGES = frozenset({"stages.finetune", "stages.stage1", "stages.el2n"})  # they work under accelerate launch


def _python_argv(cmd: list[str], checkout: Path) -> tuple[list[str], dict[str, str]]:
    """A stage command (``python -m stages.x ...``) as this interpreter running this checkout's
    code in another folder: ``-P`` keeps the working folder off sys.path. Nothing but a stage
    module runs: a unit's commands arrive as flow-run parameters. With $SELFILTER_ACCELERATE_CONFIG
    (``python -m flows.grid worker --accelerate-config``), a training stage runs under
    ``accelerate launch`` with that config: one unit on all of the machine's GPUs."""
    if len(cmd) < 3 or Path(cmd[0]).name not in ("python", "python3") or cmd[1] != "-m" \
            or not cmd[2].startswith("stages."):
        raise UnitRefused(f"unit command {' '.join(cmd[:3])}...: expected `python -m stages.<name> ...`")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [env.get("PYTHONPATH")])])
    config = env.get(ACCELERATE_ENV)
    if config and cmd[2] in TRAINING_STAGES:
        if not Path(config).is_file():
            raise UnitRefused(f"{ACCELERATE_ENV}={config}: no such accelerate config on this machine")
        # accelerate starts its ranks as `python -m stages.x` in the workspace: the workspace's
        # code, which the host's code digest check has shown to be this checkout's
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, *cmd[1:]], env
    return [sys.executable, "-P", *cmd[1:]], env


def _run_step(cmd: list[str], workspace: Path, checkout: Path, unit: str, log) -> None:
    argv, env = _python_argv(cmd, checkout)
    proc = subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines()[-20:]:
        log.info("%s", line)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"unit {unit}: `{' '.join(cmd[:3])}` exit {proc.returncode}: {tail[0]}")


def _remove_outputs(workspace: Path, paths: list[str]) -> None:
    """What DVC does before it runs a stage: its (non-persistent) outputs go first."""
    import shutil

    root = workspace.resolve()
    for rel in paths:
        target = (workspace / rel).resolve()
        if target == root or root not in target.parents:
            raise UnitRefused(f"output {rel!r} is not inside the workspace {workspace}")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


@flow(name="selfilter-unit", flow_run_name="{unit}", log_prints=True)
def selfilter_unit(workspace: str, unit: str, grid_id: str, host_code: str, steps: list[list[str]],
                   remove: list[str] | None = None, attempt: int = 1,
                   lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S) -> dict[str, Any]:
    """One unit of the grid: its ``steps`` (stage commands as dvc.yaml resolves them) in order.

    ``<method>/<run>``: the fine-tune and the evaluation of one run (``--only``); ``_base``: the
    base model's evaluation; ``stage:<name>``: one whole DVC stage (``stage1@scores``,
    ``el2n``, ``score@ifd``), its outputs in ``remove`` cleared first as DVC would;
    ``shard:<i>of<n>``: one feature shard. Runs in the worker's own checkout (prefect.yaml's pull
    step) on the shared ``workspace``. Refuses, with one line and before any work, when the
    workspace is not visible or writable here, when the profile needs a GPU this machine lacks,
    or when this checkout's code differs from the host's (``host_code``)."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    ws = Path(workspace)
    checkout = Path.cwd()
    where = machine()
    run_id = str(flow_run.get_id() or uuid.uuid4())
    record = record_path(ws, grid_id, unit, run_id) if ws.is_dir() else None
    base = {"unit": unit, "grid": grid_id, "attempt": attempt, "flow_run_id": run_id, **where}
    started = time.time()
    try:
        from selfilter.config import parse_yaml

        params = parse_yaml((ws / "params.yaml").read_text(encoding="utf-8")) if (ws / "params.yaml").is_file() else {}
        preflight(ws, needs_gpu=profile_needs_gpu(params or {}))
        mine = code_digest(checkout)
        if mine != host_code:
            raise UnitRefused(f"{where['host']}: checkout {checkout} has other code than the grid's host "
                              f"(digest {mine[:12]} vs {host_code[:12]}); check out the host's commit there")
        for cmd in steps:
            _python_argv(cmd, checkout)  # every command checked before any runs
        write_record(record, {**base, "status": "started", "started": started})
        with Lease.for_unit(ws, unit, lease_timeout_s).held(base):
            _remove_outputs(ws, list(remove or []))
            for i, cmd in enumerate(steps):
                _run_step(cmd, ws, checkout, unit, logger)
                if i == 0 and len(steps) > 1:
                    hold("grid.between_steps")  # test-only kill point (selfilter/holdpoints.py); off unless the suite sets it
    except UnitRefused as e:
        if record is not None and record.parent.parent.is_dir():
            write_record(record, {**base, "status": "refused", "why": str(e)})
        logger.error("%s", e)
        raise
    except Exception as e:
        if record is not None:
            write_record(record, {**base, "status": "failed", "why": str(e)[:2000]})
        raise
    done = {**base, "status": "done", "started": started, "wall_s": round(time.time() - started, 3)}
    write_record(record, done)  # last: the host counts the unit done from this record
    logger.info("unit %s done on %s/%s in %.1f s", unit, where["host"], where["worker"], done["wall_s"])
    return done


# --------------------------------------------------------------------------- host side: what the units are

def _plan(cmd: list[str], root: Path, env: dict[str, str]) -> list[str]:
    argv = [sys.executable, *cmd[1:], "--plan"]
    proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[:3])} --plan` exit {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    if not lines:
        raise RuntimeError(f"`{' '.join(cmd[:3])} --plan` printed no plan:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


def run_units(root: Path, finetune_cmd: list[str], evaluate_cmd: list[str],
              env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Runs still to train (then evaluate), trained runs not yet evaluated, the base model's
    evaluation: ``{unit: {"steps": [...]}}``."""
    to_train = _plan(finetune_cmd, root, env)
    units = {u: {"steps": [[*finetune_cmd, "--only", u], [*evaluate_cmd, "--only", u]]} for u in to_train}
    for u in _plan(evaluate_cmd, root, env):
        units.setdefault(u, {"steps": [[*evaluate_cmd, "--only", u]]})
    return units


def stage_units(stages: dict[str, tuple[list[str], list[str]]]) -> dict[str, dict[str, Any]]:
    """``{stage name: (command, outputs to clear)}`` -> one unit per whole stage."""
    return {f"stage:{name}": {"steps": [cmd], "remove": outs} for name, (cmd, outs) in stages.items()}


def shard_units(command: list[str], num_shards: int) -> dict[str, dict[str, Any]]:
    """Feature extraction as ``num_shards`` units; the ``dvc repro features`` after merges."""
    return {f"shard:{i}of{num_shards}": {"steps": [[*command, "--shard-index", str(i), "--num-shards",
                                                    str(num_shards)]]} for i in range(num_shards)}


# --------------------------------------------------------------------------- host side: the fan-out

def fan_out(root: Path, deployment: str, units: dict[str, dict[str, Any]], *, grid_id: str | None = None,
            lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S, max_attempts: int = 3, poll_s: float = 2.0,
            log=print) -> dict[str, Any]:
    """Submit every unit to ``deployment``'s work pool and wait for all; returns a summary.
    Raises GridFailed when a unit ran out of attempts."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    grid_id = grid_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if not units:
        log("grid: every unit is up to date")
        return {"grid": grid_id, "units": [], "workers": {}}
    _check_deployment(deployment)
    host_code = code_digest(root)
    log(f"grid {grid_id}: {len(units)} unit(s) to {deployment}")
    client = get_client(sync_client=True)
    client.__enter__()
    try:
        def submit(unit: str, attempt: int) -> str:
            run = run_deployment(deployment, timeout=0, as_subflow=True, parameters={
                "workspace": str(root), "unit": unit, "grid_id": grid_id, "host_code": host_code,
                "steps": units[unit]["steps"], "remove": units[unit].get("remove"), "attempt": attempt,
                "lease_timeout_s": lease_timeout_s})
            return str(run.id)

        def state_of(run_id: str) -> tuple[str, str]:
            try:
                run = client.read_flow_run(uuid.UUID(run_id))
            except Exception as e:  # httpx errors while the server is away
                raise ConnectionError(str(e)) from e
            return (run.state.type.value if run.state else "PENDING"), (run.state.message or "") if run.state else ""

        def mark_crashed(run_id: str, why: str) -> None:
            client.set_flow_run_state(uuid.UUID(run_id), Crashed(message=why), force=True)

        outcome = supervise(list(units), submit=submit, state_of=state_of,
                            is_done=lambda u: unit_done(root, grid_id, u),
                            lease_of=lambda u: Lease.for_unit(root, u, lease_timeout_s),
                            mark_crashed=mark_crashed, max_attempts=max_attempts, poll_s=poll_s, log=log)
    finally:
        client.__exit__(None, None, None)
    workers: dict[str, int] = {}
    for rec in read_records(root, grid_id):
        if rec.get("status") == "done":
            key = f"{rec.get('worker')}@{rec.get('host')}"
            workers[key] = workers.get(key, 0) + 1
    log(f"grid {grid_id}: {len(outcome.done)} unit(s) done by {workers}; "
        f"{len(outcome.resubmitted)} resubmitted")
    return {"grid": grid_id, "units": outcome.done, "workers": workers,
            "resubmitted": [list(r) for r in outcome.resubmitted]}


def _check_deployment(deployment: str) -> None:
    """Before any work: a server to talk to, and the unit deployment on it - in one line each."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise RuntimeError("fan_out needs a Prefect server that the workers reach: set PREFECT_API_URL "
                           "(docs/prefect.md, \"The grid on N GPU machines\")")
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise RuntimeError(f"deployment {deployment!r} not found on {api}: run `prefect deploy --name unit` "
                               f"from a checkout, and start workers on its pool") from None


# --------------------------------------------------------------------------- worker start

def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flows.grid worker",
        description="Check that this machine can do the grid's units (shared workspace visible and writable, "
                    "a GPU when the profile trains on cuda), then start a Prefect process worker on the pool "
                    "from this checkout. Refuses with one line otherwise.")
    p.add_argument("--workspace", required=True, help="the host's workspace, on storage every worker sees")
    p.add_argument("--pool", required=True, help="work pool of the unit deployment")
    p.add_argument("--name", default=None, help="worker name (default: <host>-<pid>); units record it")
    p.add_argument("--limit", type=int, default=1, help="units this worker runs at once (default: 1)")
    p.add_argument("--checkout", default=".", help="this machine's checkout of the repository (default: .)")
    p.add_argument("--accelerate-config", default=None,
                   help="run the units' training stages (finetune, stage1, el2n) under `accelerate launch` with "
                        "this config, e.g. configs/accelerate/zero3.yaml: one unit on all of this machine's GPUs "
                        "(the profile then needs finetune.workers: 1)")
    p.add_argument("--check-only", action="store_true", help="run the checks and exit")
    args, rest = p.parse_known_args(argv)
    checkout = Path(args.checkout).resolve()
    try:
        from selfilter.config import parse_yaml

        if args.accelerate_config and not (checkout / args.accelerate_config).is_file():
            raise UnitRefused(f"--accelerate-config {args.accelerate_config}: not found in {checkout}")
        ws = Path(args.workspace)
        params = parse_yaml((ws / "params.yaml").read_text(encoding="utf-8")) if (ws / "params.yaml").is_file() else {}
        preflight(ws, needs_gpu=profile_needs_gpu(params or {}))
    except UnitRefused as e:
        print(f"grid worker: refused: {e}", file=sys.stderr)
        return 2
    if args.check_only:
        print(f"grid worker: {Path(args.workspace)} usable here")
        return 0
    import socket

    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    env = dict(os.environ, **{WORKER_ENV: name, "SELFILTER_ROOT": str(checkout), "PWD": str(checkout)})
    # a worker that just finished a unit waits this long before it asks for the next (Prefect's
    # default is 10 s: measured as ~13 s of idle time per unit on a one-worker grid)
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    if args.accelerate_config:
        env[ACCELERATE_ENV] = str((checkout / args.accelerate_config).resolve())
    prefect = Path(sys.executable).parent / "prefect"
    cmd = [str(prefect) if prefect.exists() else "prefect", "worker", "start", "--pool", args.pool,
           "--name", name, "--limit", str(args.limit), *rest]
    os.chdir(checkout)
    os.execvpe(cmd[0], cmd, env)
    return 0  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    print("usage: python -m flows.grid worker --workspace PATH --pool POOL [--name NAME] [--limit N]",
          file=sys.stderr)
    return 2


__all__ = ["selfilter_unit", "fan_out", "run_units", "stage_units", "shard_units", "GridFailed", "UNIT_DEPLOYMENT"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
