"""A throwaway DVC project (git + dvc; stages are small python commands) for the flow tests.

Prefect reads its settings when first imported: importing this module (conftest does, first)
points it at a private, quiet, offline home.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path


_PREFECT_HOME = tempfile.mkdtemp(prefix="selfilter-prefect-test-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)  # ephemeral: no server
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The ephemeral API server is a subprocess; on 2 busy cores it can take longer than the 20 s default.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

VENV_BIN = Path(sys.executable).parent

# Every stage appends its name to runs.log (not a DVC output), so a test can see what DVC
# actually ran. `judge` fails while a file `judge.fail` holds a positive count, decrementing it:
# a transient failure that a Prefect retry gets past.
TOOL = '''
import json, os, pathlib, sys, yaml
stage, *rest = sys.argv[1:]
p = yaml.safe_load(open("params.yaml"))
with open("runs.log", "a") as f:
    device = os.environ.get("CUDA_VISIBLE_DEVICES")
    f.write(" ".join([stage, *rest] + ([f"device={device}"] if device else [])) + "\\n")
if stage == "prepare":
    pathlib.Path("data").mkdir(exist_ok=True)
    pathlib.Path("data/pool.txt").write_text("x" * p["prepare"]["n"])
    pathlib.Path("data/records.jsonl").write_text("".join(
        json.dumps({"uid": i, "conversations": []}) + "\\n" for i in range(p["prepare"]["n"])))
elif stage == "features":
    # like stages.features: --shard-index/--num-shards compute a slice into --work-dir and
    # exit; without them, compute what is missing and merge, in shard order
    args = dict(zip(rest[::2], rest[1::2]))
    work = pathlib.Path(args["--work-dir"])
    work.mkdir(parents=True, exist_ok=True)
    n = 4
    if "--shard-index" in args:
        for s in range(int(args["--shard-index"]), n, int(args["--num-shards"])):
            (work / f"shard-{s}").write_text("precomputed")
        sys.exit(0)
    pathlib.Path("features").mkdir(exist_ok=True)
    parts = [(work / f"shard-{s}").read_text() if (work / f"shard-{s}").exists() else "merge" for s in range(n)]
    pathlib.Path("features/all.txt").write_text(" ".join(parts))
elif stage == "judge":
    fail = pathlib.Path("judge.fail")
    if fail.exists() and int(fail.read_text()) > 0:
        fail.write_text(str(int(fail.read_text()) - 1))
        sys.exit("judge endpoint unavailable (simulated)")
    pathlib.Path("judge").mkdir(exist_ok=True)
    pathlib.Path("judge/ratings.txt").write_text(str(p["judge"]["scale"]))
elif stage == "select":
    (method,) = rest
    out = pathlib.Path("selections") / method
    out.mkdir(parents=True, exist_ok=True)
    (out / "subset.txt").write_text(pathlib.Path("data/pool.txt").read_text()[: p["select"]["k"]])
elif stage == "compare":
    runs = [{"method": m, "budget": 0.5, "seed": 0, "n_selected": p["select"]["k"],
             "metrics": {"overall": len(pathlib.Path(f"selections/{m}/subset.txt").read_text()) / 10}}
            for m in p["select"]["methods"]]
    pathlib.Path("reports").mkdir(exist_ok=True)
    pathlib.Path("reports/metrics.json").write_text(json.dumps({"runs": runs}))
    pathlib.Path("reports/comparison.md").write_text("| method | overall |\\n|---|---|\\n" + "".join(
        f"| {r['method']} | {r['metrics']['overall']} |\\n" for r in runs))
'''

DVC_YAML = '''
vars:
  - params.yaml
stages:
  prepare:
    cmd: python tool.py prepare
    deps: [tool.py]
    params: [prepare]
    outs: [data]
  features:
    cmd: python tool.py features --work-dir .cache/shards
    deps: [tool.py, data]
    outs: [features]
  judge:
    cmd: python tool.py judge
    deps: [tool.py, data]
    params: [judge]
    outs: [judge]
  select:
    foreach: ${select.methods}
    do:
      cmd: python tool.py select ${item}
      deps: [tool.py, data]
      params: [select.k]
      outs: ["selections/${item}"]
  compare:
    cmd: python tool.py compare
    deps: [tool.py, selections, judge]
    params: [select]
    outs:
      - reports/comparison.md:
          cache: false
    metrics:
      - reports/metrics.json:
          cache: false
  track:
    cmd: PYTHONPATH={repo} python -m stages.track --params params.yaml --root . --records data/records.jsonl --report reports/metrics.json --out metrics/tracking.json --no-progress
    deps: [reports/metrics.json, data]
    params: [tracking]
    outs:
      - metrics/tracking.json:
          cache: false
'''
REPO = Path(__file__).resolve().parents[2]

PARAMS = '''
prepare:
  n: 8
judge:
  scale: 10
select:
  methods: [random, self_filter]
  k: 3
tracking: {}
'''

PROFILE = '''
# a profile overlays params.yaml: only the keys it names change
prepare:
  n: 12
select:
  k: 5
'''


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")


def make_dvc_project(root: Path) -> Path:
    """A committed git + DVC project at ``root`` with the four stages above and a profile."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tool.py").write_text(textwrap.dedent(TOOL))
    (root / "dvc.yaml").write_text(textwrap.dedent(DVC_YAML).lstrip().replace("{repo}", str(REPO)))
    (root / "params.yaml").write_text(textwrap.dedent(PARAMS).lstrip())
    (root / "profiles").mkdir(exist_ok=True)
    (root / "profiles" / "tiny.yaml").write_text(textwrap.dedent(PROFILE).lstrip())
    (root / ".gitignore").write_text("runs.log\njudge.fail\nmlruns.db\nmlartifacts/\n.cache/\n")
    _run(["git", "init", "-q"], root)
    _run(["git", "config", "user.email", "test@example.com"], root)
    _run(["git", "config", "user.name", "test"], root)
    _run([str(VENV_BIN / "dvc"), "init", "-q"], root)
    _run([str(VENV_BIN / "dvc"), "config", "core.analytics", "false"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "throwaway project"], root)
    return root


def _stage_runs(root: Path) -> list[str]:
    log = root / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def mlflow_runs(root: Path) -> list:
    """Every run in the project's default MLflow store (``root/mlruns.db``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(exps, max_results=1000)) if exps else []
