"""A prepared smoke checkout for the soak: a fresh clone of HEAD, the smoke profile applied by
the Prefect flow (ephemeral server, private PREFECT_HOME), the judge on the openai backend against
the fake endpoint with the canary key, every console line kept. Plus what the crash cases
compare: every output file, field by field (JSON keys, the report's table cells), with only
wall-clock fields exempt, and the fields derived from those checked against what they derive from."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
OUTPUT_DIRS = ("data", "models", "features", "judge", "stage1", "el2n", "selections", "runs", "evals",
               "reports", "metrics")
# Wall-clock time - seconds a step took, or when it ran - is the only thing two runs of the same
# work may differ in. These are every such field the smoke run writes (JSON keys; comparison.md's
# cost columns, whose number is masked); every other field of every output file is compared.
TIMING_FIELDS = frozenset({
    "seconds",                                                   # features/summary.json, judge/usage.json (+ sidecars)
    "wall_s", "train_s", "save_s",                               # stage1, el2n, runs/*/train_log.json
    "wall_seconds", "seconds_index", "seconds_lists", "seconds_total",  # selections/*/meta.json (+ stats)
    "selection_wall_s", "train_wall_s", "selection_s", "finetune_s",  # reports/metrics.json, summary.json
    "tokenizer_s", "clip_s", "lm_s", "align_s", "probe_s", "total_s", "cpu_s",  # metrics/base.json
    "date", "start_time", "end_time", "total_evaluation_time_seconds",  # evals/*/results.json (lmms-eval)
    "selection s", "training s", "scoring s (passes)",          # reports/comparison.md, cost table columns
})
# Not timing, yet not the same in two clean runs, each compared as said here instead:
# - evals/*/results.json, configs.<task>.dataset_kwargs.{data_files.*, cache_dir}: evaluate builds
#   the benchmark in a tempfile.TemporaryDirectory("selfilter-eval-...", deleted when the stage
#   ends; stages/evaluate.py), so the path holds a random name: compared with that name masked.
# - evals/*/results.json, git_hash / git_branch / lmms_eval_version: lmms-eval's `git describe` of
#   the folder it is installed in (here a venv inside another git checkout), not of the code that
#   ran: it moves whenever that checkout gets a commit. Not compared.
# - a field computed from other outputs that hold wall times (DERIVED: sidecars' and selections'
#   inputs.*.sha256 - e.g. of stage1/, whose metrics.json has wall_s; evals sidecars'
#   checkpoint_sha256, of the checkpoint folder with train_log.json; metrics/tracking.json's
#   pipeline_digest, of dvc.lock, which holds those files' md5; reports/comparison.html, which is
#   comparison.md rendered) and metrics/tracking.json's parent_run_id (MLflow draws run ids at
#   random): equal to the reference's, or else recomputed from what it derives from now (whose
#   own fields are compared) - not left stale, and not exempt.
LMMS_INSTALL_FIELDS = frozenset({"git_hash", "git_branch", "lmms_eval_version"})
EVAL_TMP = re.compile(r"/selfilter-eval-[^/]+/")
MD_CELL_NUMBER = re.compile(r"^-?[0-9][0-9.e+-]*")
# A resumed run reports its own work, not the work an uninterrupted run did: compared for what it
# must add up to instead (test_soak.resume_accounting), in the kill cases of that group only.
RESUME_ACCOUNTING = {
    "judge": {  # requests answered from the cache the killed run filled
        "judge/usage.json": {"requests", "completed", "cache_hits", "prompt_tokens", "completion_tokens"},
        "judge/ratings.parquet.meta.json": {"requests", "completed", "cache_hits", "prompt_tokens",
                                            "completion_tokens"},
        "reports/summary.json": {"judge_requests"},
        "reports/comparison.md": {"judge requests", "judge tokens"},
    },
    "track": {"metrics/tracking.json": {"runs_created", "runs_skipped"}},  # runs the killed attempt finished
}


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
    """SIGKILL the whole session; True when it was still running."""
    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    time.sleep(0.5)  # let the kernel release its file locks
    return alive


@dataclass(frozen=True)
class Derived:
    """A field computed from other outputs: its value, and whether it matches them now."""
    value: object
    fresh: bool


def _derive(root: Path, rel: str, obj: dict, key: str, cache: dict) -> Derived:
    from selfilter.io import file_digest

    def digest(path: str) -> str | None:
        if path not in cache:
            cache[path] = file_digest(root / path) if (root / path).exists() else None
        return cache[path]

    value = obj[key]
    if key == "sha256":
        return Derived(value, digest(obj["path"]) == value)
    if key == "checkpoint_sha256":
        return Derived(value, digest(obj["checkpoint"]) == value)
    if key == "pipeline_digest":
        from selfilter.lineage import pipeline_digest, read_dvc_lock

        return Derived(value, pipeline_digest(read_dvc_lock(root / "dvc.lock")) == value)
    # parent_run_id: the FINISHED pipeline run of this pipeline digest in the store
    from mlflow.exceptions import MlflowException
    from services import fresh_client

    if not (root / "mlruns.db").is_file():
        return Derived(value, False)
    try:
        run = fresh_client(f"sqlite:///{root / 'mlruns.db'}").get_run(value)
    except MlflowException:
        return Derived(value, False)
    return Derived(value, (run.info.status, run.data.tags.get("selfilter.pipeline_digest")) ==
                   ("FINISHED", obj.get("pipeline_digest")))


def _is_derived(rel: str, obj: dict, key: str) -> bool:
    return ((key == "sha256" and set(obj) == {"path", "sha256"})
            or (key == "checkpoint_sha256" and "checkpoint" in obj)
            or (rel == "metrics/tracking.json" and key in ("pipeline_digest", "parent_run_id")))


def _masked(root: Path, rel: str, obj, cache: dict):
    """``obj`` with timing values replaced by a marker (kept, so that a field that goes missing
    still counts), lmms-eval's temp folder name masked, and derived fields as :class:`Derived`."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in TIMING_FIELDS and not isinstance(v, (dict, list)):
                out[k] = "<timing>"
            elif rel.startswith("evals/") and k in LMMS_INSTALL_FIELDS:
                out[k] = "<not compared>"
            elif _is_derived(rel, obj, k):
                out[k] = _derive(root, rel, obj, k, cache)
            else:
                out[k] = _masked(root, rel, v, cache)
        return out
    if isinstance(obj, list):
        return [_masked(root, rel, v, cache) for v in obj]
    if isinstance(obj, str) and rel.startswith("evals/") and rel.endswith("results.json"):
        return EVAL_TMP.sub("/selfilter-eval-<tmp>/", obj)
    return obj


def _markdown(text: str) -> list:
    """comparison.md as lines, each table row as {column: cell} (timing cells' numbers masked)."""
    out, header = [], None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            out.append(line)
            header = None
        elif header is None:
            header = cells
            out.append(line)
        elif set(line) <= set("|-: "):
            out.append(line)
        else:
            out.append({h: MD_CELL_NUMBER.sub("<timing>", c) if h in TIMING_FIELDS else c
                        for h, c in zip(header, cells)})
    return out


def read_outputs(root: Path) -> dict[str, object]:
    """Every output file as it is compared: JSON parsed (``_masked``), comparison.md by table
    cell, comparison.html as :class:`Derived` from it, anything else its sha256."""
    out: dict[str, object] = {}
    cache: dict[str, str | None] = {}
    for d in OUTPUT_DIRS:
        for p in sorted((root / d).rglob("*")) if (root / d).is_dir() else ():
            rel = str(p.relative_to(root))
            if not p.is_file():
                continue
            if p.suffix == ".json":
                try:
                    out[rel] = _masked(root, rel, json.loads(p.read_bytes()), cache)
                    continue
                except ValueError:
                    pass
            if rel == "reports/comparison.md":
                out[rel] = _markdown(p.read_text())
            elif rel == "reports/comparison.html":
                from selfilter.report.markdown import to_html

                md = (root / "reports/comparison.md").read_text().removesuffix("\n")
                out[rel] = Derived(hashlib.sha256(p.read_bytes()).hexdigest(),
                                   p.read_text() == to_html(md, root / "reports"))
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _leaves(a, b, path: str = ""):
    """(path, last key, a, b) of every leaf where ``a`` and ``b`` differ (NaN equals NaN; a
    derived field differs when its value changed and it does not match its source now)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            yield from _leaves(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _leaves(x, y, f"{path}[{i}]")
    elif isinstance(a, Derived) and isinstance(b, Derived):
        if a.value != b.value and not b.fresh:
            yield path, path.rsplit("/", 1)[-1], a.value, f"{b.value} (not recomputed)"
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        yield path, path.rsplit("/", 1)[-1], a, b


def differences(ref: dict[str, object], now: dict[str, object],
                exempt: dict[str, set[str]] | None = None) -> list[str]:
    """``file: field: reference -> now`` for every field that differs (``exempt``: per file, the
    keys / column names a case does not compare)."""
    out = []
    for rel in sorted(set(ref) | set(now)):
        if rel not in ref or rel not in now:
            out.append(f"{rel}: {'missing' if rel not in now else 'new'}")
            continue
        skip = (exempt or {}).get(rel, set())
        out += [f"{rel}: {path or '(bytes)'}: {str(a)[:60]} -> {str(b)[:60]}"
                for path, key, a, b in _leaves(ref[rel], now[rel]) if key not in skip]
    return out


def marker_mtimes(root: Path) -> dict[str, int]:
    """The completion markers of fine-tunes (done.json) and evaluations (metrics sidecar)."""
    marks = list((root / "runs").rglob("done.json")) + list((root / "evals").rglob("metrics.json.meta.json"))
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in marks}
