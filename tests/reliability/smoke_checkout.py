"""A prepared smoke checkout for the soak: a fresh clone of HEAD, the smoke profile applied by
the Prefect flow (ephemeral server, private PREFECT_HOME), the judge on the openai backend against
the fake endpoint with the canary key, every console line kept. Plus what the crash cases
compare: a digest of every output file, with the wall-clock fields of JSON files left out."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
OUTPUT_DIRS = ("data", "models", "features", "judge", "stage1", "el2n", "selections", "runs", "evals",
               "reports", "metrics")
# JSON keys that hold wall-clock times or run ids: they differ between two uninterrupted runs
VOLATILE_KEYS = {"wall_s", "wall_seconds", "seconds", "train_s", "parent_run_id", "load_s", "encode_s",
                 "eval_s", "time_s", "elapsed_s", "started", "finished", "timestamp", "date",
                 # the judge's cost accounting of *this* run: a resumed run answers from its cache
                 "requests", "completed", "cache_hits", "retries", "failed", "skipped", "prompt_tokens",
                 "completion_tokens", "tokens"}
# ... and the same accounting as text: the comparison report's cost table
ACCOUNTING_TEXT = {"judge": {"reports/comparison.md"}}


def stage_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "SELFILTER_MLFLOW"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PREFECT_HOME=str(home / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", DVC_NO_ANALYTICS="1",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict, console: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run to completion; stdout+stderr appended to ``console`` (the secrets case greps it)."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with open(console, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc


def start(cmd: list[str], cwd: Path, env: dict, console: Path) -> subprocess.Popen:
    """Start in a session of its own, so SIGKILL reaches dvc and the stage it runs."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(console, "a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_stage(proc: subprocess.Popen, timeout: float = 600) -> float | None:
    """Block until ``proc`` (a `dvc repro`) has started a stage process (``python -m stages.*``);
    its monotonic time, or None when ``proc`` ended first. Kill points are measured from here,
    so that they land in the stage and not in DVC's own start-up (hashing deps, locking)."""
    import psutil

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for kid in kids:
            try:
                if "stages." in " ".join(kid.cmdline()):
                    return time.monotonic()
            except psutil.Error:
                continue
        time.sleep(0.05)
    return None


def kill_group(proc: subprocess.Popen) -> bool:
    """SIGKILL the whole session; True when it was still running (the kill landed mid-run)."""
    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    time.sleep(0.5)  # let the kernel release its file locks
    return alive


def _strip(obj):
    if isinstance(obj, dict):  # and any "<what>_s": seconds, by this codebase's naming (save_s, ...)
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS and not k.endswith("_s")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every output file; JSON files without their wall-clock and run-id keys."""
    out = {}
    for d in OUTPUT_DIRS:
        for p in sorted((root / d).rglob("*")) if (root / d).is_dir() else ():
            if not p.is_file():
                continue
            data = p.read_bytes()
            if p.suffix == ".json":
                try:
                    data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
                except ValueError:
                    pass
            out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def marker_mtimes(root: Path) -> dict[str, int]:
    """The completion markers of fine-tunes (done.json) and evaluations (metrics sidecar)."""
    marks = list((root / "runs").rglob("done.json")) + list((root / "evals").rglob("metrics.json.meta.json"))
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in marks}
