"""Bad params and paths: every stage, run with its real command line from dvc.yaml, given a
params.yaml with one fault (a wrong type, an unknown key, a negative budget, a budget over 1, an
empty method list) or a missing/unwritable path. Each must exit non-zero with exactly one line
``<stage>: error: ...`` (or ``error: ...``) naming the key or file, raise nothing (no
traceback), and leave the previous outputs usable: each case runs in a copy of a finished
pipeline (every stage run once, successfully, with good params: ``previous_run``), and after the
failed run every file is byte-identical and the stage's own outputs still load.

(Run by hand, not through DVC: ``dvc repro`` itself removes a stage's non-persistent outputs
before running its command; they come back from .dvc/cache with ``dvc checkout``.)"""
from __future__ import annotations

import copy
import hashlib
import importlib
import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
FOREACH_ITEM = {"stage1": "scores", "select": "random", "score": "ifd", "select_field": "clip_score"}
# The previous run: the smoke profile, smaller still (40 records, one method), so that every stage
# runs for real in ~15 s on 2 cores.
TINY = {"data": {"shapes": {"pool_size": 40, "bench": {"vqa": 4, "pope_per_split": 2, "count": 2, "desc": 2,
                                                     "binding": 8}}},
        "base": {"clip": {"n_pairs": 40}, "align": {"n_pairs": 40},
                 "probe": {"n_pairs": 8, "retrieval_group": 4, "n_questions": 2}},
        "features": {"image_reward": False},
        "select": {"methods": ["random"], "budgets": [0.15]},
        "finetune": {"steps": 2, "workers": 1}, "evaluate": {"limit": 2, "workers": 1}}
ORDER = ["generate", "prepare", "base", "features", "judge", "stage1", "el2n", "select_params", "select",
         "finetune", "evaluate", "compare", "track"]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


GOOD = _merge(_merge(PARAMS, yaml.safe_load((REPO / "profiles/smoke.yaml").read_text())), TINY)


def _template(text: str, item: str | None) -> str:
    return text.replace("${item}", item or "").replace("${data.image_dir}", PARAMS["data"]["image_dir"])


def command(stage: str, item: str | None = None) -> tuple[str, list[str]]:
    """(module, argv) of ``stage``'s dvc.yaml cmd, templating filled from params.yaml."""
    spec = DVC[stage]
    cmd = _template(spec["do"]["cmd"] if "do" in spec else spec["cmd"], item or FOREACH_ITEM.get(stage))
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "-m"], cmd
    return argv[2], argv[3:]


def outputs(stage: str) -> list[str]:
    """The paths dvc.yaml declares as ``stage``'s outputs (foreach: the item the cases run)."""
    spec = DVC[stage].get("do", DVC[stage])
    return [_template(o if isinstance(o, str) else next(iter(o)), FOREACH_ITEM.get(stage))
            for o in spec.get("outs", []) + spec.get("metrics", [])]


def _call(module: str, argv: list[str]) -> int | None:
    try:
        return importlib.import_module(module).main(argv)
    except SystemExit as e:  # argparse and a few stages exit through SystemExit
        return e.code


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory) -> Path:
    """A finished pipeline: every stage's dvc.yaml command, run once with good params (GOOD)."""
    root = tmp_path_factory.mktemp("previous")
    shutil.copytree(REPO / "evaluation", root / "evaluation")  # evaluate's task YAMLs (include_path)
    (root / "params.yaml").write_text(yaml.safe_dump(GOOD))
    items = {"stage1": GOOD["stage1"]["settings"], "select": GOOD["select"]["methods"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for var in ("MLFLOW_TRACKING_URI", "SELFILTER_MLFLOW_PARENT"):
            mp.delenv(var, raising=False)
        for stage in ORDER:
            for item in items.get(stage, [None]):
                rc = _call(*command(stage, item))
                assert rc == 0, f"the previous run's {stage} {item or ''} failed (exit {rc})"
    return root


def load_outputs(root: Path, stage: str) -> int:
    """Load every file of ``stage``'s outputs the way its readers do; the number of files."""
    import numpy as np
    import pandas as pd
    from PIL import Image
    from safetensors.numpy import load_file

    from selfilter.io import read_jsonl
    from selfilter.models.loading import load_clip, load_config, load_vlm

    n = 0
    for out in outputs(stage):
        path = root / out
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        assert files and all(f.is_file() for f in files), f"{stage}: {out} is gone"
        for f in files:
            loader = {".json": lambda f: json.loads(f.read_text()), ".jsonl": read_jsonl,
                      ".parquet": pd.read_parquet, ".npy": np.load, ".safetensors": load_file,
                      ".csv": pd.read_csv, ".png": lambda f: Image.open(f).load()}.get(f.suffix, Path.read_bytes)
            loader(f)
            n += 1
        for model in (p.parent for p in files if p.name == "model.safetensors"):
            (load_clip if load_config(model).model_type == "clip" else load_vlm)(model)
    return n


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _copy(previous_run: Path, tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(previous_run, root)
    return root


def _set(params: dict, dotted: str, value) -> dict:
    params = copy.deepcopy(params)
    *path, last = dotted.split(".")
    node = params
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value
    return params


# (stage, dotted key, bad value, what the message must name)
BAD_PARAMS = [
    ("prepare", "data.shapes.pool_size", "many", "data.shapes.pool_size"),
    ("base", "base.clip.epochs", -1, "base.clip.epochs"),
    ("features", "features.shard_size", "big", "features.shard_size"),
    ("judge", "judge.opneai", {"model": "x"}, "judge.opneai"),
    ("judge", "judge.max_failed_fraction", 2.0, "judge.max_failed_fraction"),
    ("stage1", "stage1.epochs", "one", "stage1.epochs"),
    ("el2n", "el2n.seeds", "zero", "el2n.seeds"),
    ("select", "select.budgets", [-0.1], "select.budgets"),
    ("select", "select.budgets", [1.5], "select.budgets"),
    ("select", "select.budget", [0.1], "select.budget"),
    ("finetune", "select.methods", [], "select.methods"),
    ("finetune", "finetune.steps", "four", "finetune.steps"),
    ("evaluate", "evaluate.limit", "all", "evaluate.limit"),
    ("compare", "compare.fail_on_calibration", "maybe", "compare.fail_on_calibration"),
    ("track", "tracking.enabled", "maybe", "tracking.enabled"),
]


def _run(stage: str, argv: list[str], cwd: Path, capsys, monkeypatch) -> tuple[int, str, list[str]]:
    """Run ``stage`` in ``cwd``: exit code, stderr, and the files it added, removed or changed
    (params.yaml aside: the case writes it)."""
    module, _ = command(stage)
    monkeypatch.chdir(cwd)
    before = _digests(cwd)
    rc = _call(module, argv)
    err = capsys.readouterr().err
    after = _digests(cwd)
    return rc, err, sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and k != "params.yaml")


def _error_lines(err: str) -> list[str]:
    """The error and everything printed after it (log lines before it are progress, not the
    error): one line when the error is one line."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    first = next((i for i, ln in enumerate(lines) if "error:" in ln), len(lines))
    return lines[first:]


@pytest.mark.parametrize("stage,key,value,named", BAD_PARAMS, ids=[f"{s}:{k}={v!r}" for s, k, v, _ in BAD_PARAMS])
def test_bad_param_is_one_line_naming_the_key(tmp_path, previous_run, capsys, monkeypatch, ledger, stage, key, value,
                                              named):
    root = _copy(previous_run, tmp_path)
    (root / "params.yaml").write_text(yaml.safe_dump(_set(GOOD, key, value)))
    rc, err, changed = _run(stage, command(stage)[1], root, capsys, monkeypatch)
    ok = rc not in (0, None) and "Traceback" not in err and len(_error_lines(err)) == 1 and named in err
    loaded = load_outputs(root, stage)
    ledger(f"params: {key}={value!r}", stage, (f"one line naming the key, exit {rc}; its {loaded} previous output files "
           "byte-identical and load" if ok else f"exit {rc}: {err[:120]!r}"), lost=len(changed))
    assert ok, err
    assert not changed, changed


# the first input each stage reads; track opens its MLflow store (mlruns.db) before any input
MISSING = {"judge": "data/pool/source.json",  # the judge reads what the data has first
           "select": "data/pool/records.jsonl",
           "features": "data/pool/records.jsonl", "finetune": "selections", "track": "reports/metrics.json"}


@pytest.mark.parametrize("stage", list(MISSING))
def test_missing_input_is_one_line_naming_the_file(tmp_path, previous_run, capsys, monkeypatch, ledger, stage):
    root = _copy(previous_run, tmp_path)
    gone = root / MISSING[stage]
    shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    rc, err, changed = _run(stage, command(stage)[1], root, capsys, monkeypatch)
    ok = rc not in (0, None) and "Traceback" not in err and len(_error_lines(err)) == 1 and MISSING[stage] in err
    loaded = load_outputs(root, stage)
    ledger("input file missing", stage, (f"one line naming the file, exit {rc}; its {loaded} previous output files "
           "byte-identical and load" if ok else f"exit {rc}: {err[:120]!r}"), lost=len(changed))
    assert ok, err
    assert not changed, changed


def test_missing_params_file_is_one_line(tmp_path, previous_run, capsys, monkeypatch, ledger):
    root = _copy(previous_run, tmp_path)
    (root / "params.yaml").unlink()
    rc, err, changed = _run("select", command("select")[1], root, capsys, monkeypatch)
    ok = rc not in (0, None) and "Traceback" not in err and "params.yaml" in err and len(_error_lines(err)) == 1
    loaded = load_outputs(root, "select")
    ledger("params.yaml missing", "select", (f"one line naming the file; its {loaded} previous output files "
           "byte-identical and load" if ok else f"exit {rc}: {err[:120]!r}"), lost=len(changed))
    assert ok, err
    assert not changed, changed


def test_unwritable_output_folder_is_one_line_and_keeps_old_outputs(tmp_path, capsys, monkeypatch, ledger):
    """The judge's --out lies under a regular file (a folder that cannot be created); the
    annotation backend needs only records and scenes, so the stage gets as far as writing."""
    from judge_env import write_records

    params = _set(PARAMS, "judge.backend", "annotation")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_records(tmp_path / "records.jsonl")
    # real scene annotations: with none the judge refuses before writing (it never rates a constant)
    (tmp_path / "scenes.jsonl").write_text("".join(
        json.dumps({"image": f"{i}.png", "objects": [{"shape": "circle", "color": "red"}]}) + "\n" for i in range(12)))
    (tmp_path / "blocker").write_text("a file where the output folder should go")
    argv = ["--params", "params.yaml", "--records", "records.jsonl", "--scenes", "scenes.jsonl",
            "--out", "blocker/judge", "--no-progress"]
    rc, err, changed = _run("judge", argv, tmp_path, capsys, monkeypatch)
    ok = rc not in (0, None) and "Traceback" not in err and len(_error_lines(err)) == 1 and "blocker" in err
    ledger("output folder unwritable", "judge", "one line naming the path" if ok else f"exit {rc}: {err[:120]!r}",
           lost=len(changed))
    assert ok, err
    assert not changed and (tmp_path / "blocker").read_text().startswith("a file")
