"""The grid on 1 and 2 Prefect workers vs the one-machine stages, on the same units.

    python -m benchmarks.bench_grid --workspace .regimes/noisy-uniform --units random/b0.15_s0 \\
        random/b0.15_s1 random/b0.3_s0 random/b0.3_s1 --workers 1 2 --out benchmarks/results/grid.json

``--workspace`` is a workspace whose pipeline has run through ``select`` at the default params
(``make run`` leaves one; ``make regimes`` leaves seven). Every arm works on its own copy of it,
with this checkout's code and the named units' runs and evaluations removed, so each arm
trains and evaluates exactly those units from scratch:
- ``stages``: the one-machine path ``make run`` takes - ``stages.finetune`` (finetune.workers
  forked processes) then ``stages.evaluate`` (evaluate.workers processes), no server;
- ``grid-k``: a private Prefect server, the ``unit`` deployment and k process workers (one torch
  thread each) taking the units through ``flows.grid.fan_out``.
Afterwards every arm's checkpoints are compared byte for byte with the ``stages`` arm's. The
result names the CPU (``lscpu``), the load average before each arm, each arm's wall time, the
per-unit overhead (unit wall time minus its fine-tune's own) and the speed-up of k workers over
one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CODE = ("selfilter", "stages", "evaluation", "flows")


def _cpu() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(info.get("Flags", "").split())
    return {"model": info.get("Model name", platform.processor()).strip(), "cpus": os.cpu_count(),
            "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma", "f16c"})}


def _copy(src: Path, dst: Path, units: list[str]) -> Path:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "mlruns.db", "mlartifacts",
                                                                          ".grid", "cache"))
    for d in CODE:
        shutil.rmtree(dst / d, ignore_errors=True)
        shutil.copytree(REPO / d, dst / d, ignore=shutil.ignore_patterns("__pycache__"))
    for u in units:
        shutil.rmtree(dst / "runs" / u, ignore_errors=True)
        shutil.rmtree(dst / "evals" / u, ignore_errors=True)
    return dst


def _stage_cmds(ws: Path) -> tuple[list[str], list[str]]:
    sys.path.insert(0, str(REPO))
    from flows.pipeline import _stage_command

    return _stage_command(ws, "finetune"), _stage_command(ws, "evaluate")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SELFILTER_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    return env


def _stages_arm(ws: Path, units: list[str]) -> float:
    finetune_cmd, evaluate_cmd = _stage_cmds(ws)
    only = [a for u in units for a in ("--only", u)]
    t0 = time.perf_counter()
    for cmd in (finetune_cmd, evaluate_cmd):
        subprocess.run([sys.executable, "-P", *cmd[1:], *only, "--no-progress"] if "finetune" in cmd[2]
                       else [sys.executable, "-P", *cmd[1:], *only], cwd=ws, env=_env(PYTHONPATH=str(ws)), check=True,
                       capture_output=True)
    return time.perf_counter() - t0


def _grid_arm(ws: Path, units: list[str], k: int, api: str, env: dict[str, str], logs: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from flows.grid import fan_out, run_units

    workers = [subprocess.Popen([sys.executable, "-m", "flows.grid", "worker", "--workspace", str(ws), "--pool",
                                 "bench-units", "--name", f"w{i}", "--checkout", str(REPO)], cwd=REPO, env=env,
                                stdout=open(logs / f"grid{k}-w{i}.log", "w"), stderr=subprocess.STDOUT,
                                start_new_session=True) for i in range(1, k + 1)]
    try:
        time.sleep(5)  # workers polling
        finetune_cmd, evaluate_cmd = _stage_cmds(ws)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        t0 = time.perf_counter()
        with temporary_settings({PREFECT_API_URL: api}):  # prefect was imported before the server existed
            planned = run_units(ws, finetune_cmd, evaluate_cmd, _env(PREFECT_API_URL=api))
            out = fan_out(ws, "selfilter-unit/unit", {u: planned[u] for u in units}, poll_s=1.0,
                          log=lambda s: None)
        wall = time.perf_counter() - t0
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGKILL)
    records = [json.loads(p.read_text()) for p in (ws / ".grid" / out["grid"] / "units").glob("*.json")]
    done = [r for r in records if r["status"] == "done"]
    overhead = []
    for r in done:
        train = json.loads((ws / "runs" / r["unit"] / "train_log.json").read_text())["wall_s"]
        overhead.append(r["wall_s"] - train)
    return {"wall_s": round(wall, 1), "workers": out["workers"],
            "unit_wall_s": sorted(round(r["wall_s"], 1) for r in done),
            "unit_minus_train_s": sorted(round(x, 1) for x in overhead)}


def _start_server(home: Path, logs: Path) -> tuple[subprocess.Popen, str, dict]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    env = _env(PREFECT_HOME=str(home), PREFECT_API_URL=api)
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    for _ in range(300):
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    for cmd in (["work-pool", "create", "bench-units", "--type", "process"],
                ["deploy", "--name", "unit", "--pool", "bench-units", "--no-prompt"]):
        subprocess.run([str(BIN / "prefect"), *cmd], cwd=REPO, env=env, check=True, capture_output=True)
    return server, api, env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_grid", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", required=True, type=Path)
    p.add_argument("--units", nargs="+", required=True, help="<method>/<run> units (selections must exist)")
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    result = {"cpu": _cpu(), "units": args.units, "arms": {}}
    ref = _copy(args.workspace, tmp / "stages", args.units)
    result["arms"]["stages"] = {"load_before": os.getloadavg()[0], "wall_s": round(_stages_arm(ref, args.units), 1)}
    print(json.dumps(result["arms"]["stages"]), flush=True)
    server, api, env = _start_server(tmp / "prefect", tmp)
    try:
        for k in args.workers:
            ws = _copy(args.workspace, tmp / f"grid{k}", args.units)
            load = os.getloadavg()[0]
            arm = _grid_arm(ws, args.units, k, api, env, tmp)
            same = all((ws / "runs" / u / "model.safetensors").read_bytes()
                       == (ref / "runs" / u / "model.safetensors").read_bytes() for u in args.units)
            result["arms"][f"grid-{k}"] = {"load_before": load, **arm, "weights_equal_stages_arm": same}
            print(json.dumps(result["arms"][f"grid-{k}"]), flush=True)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
    arms = result["arms"]
    if "grid-1" in arms:
        for k in args.workers:
            arms[f"grid-{k}"]["speedup_vs_grid_1"] = round(arms["grid-1"]["wall_s"] / arms[f"grid-{k}"]["wall_s"], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
