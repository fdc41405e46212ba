"""Bad params and paths: every stage, run with its real command line from dvc.yaml, given a
params.yaml with one fault (a wrong type, an unknown key, a negative budget, a budget over 1, an
empty method list) or a missing/unwritable path. Each must exit non-zero with exactly one line
``<stage>: error: ...`` (or ``error: ...``) naming the key or file, raise nothing (no
traceback), and leave the folder as it was (the previous outputs stay usable)."""
from __future__ import annotations

import copy
import json
import importlib
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
FOREACH_ITEM = {"stage1": "scores", "select": "random", "score": "ifd", "select_field": "clip_score"}


def command(stage: str) -> tuple[str, list[str]]:
    """(module, argv) of ``stage``'s dvc.yaml cmd, templating filled from params.yaml."""
    spec = DVC[stage]
    cmd = spec["do"]["cmd"] if "do" in spec else spec["cmd"]
    cmd = cmd.replace("${item}", FOREACH_ITEM.get(stage, "")).replace("${data.image_dir}", PARAMS["data"]["image_dir"])
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "-m"], cmd
    return argv[2], argv[3:]


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


def _run(stage: str, argv: list[str], cwd: Path, capsys, monkeypatch) -> tuple[int, str, dict]:
    module, _ = command(stage)
    monkeypatch.chdir(cwd)
    before = {p: p.stat().st_mtime_ns for p in cwd.rglob("*")}
    try:
        rc = importlib.import_module(module).main(argv)
    except SystemExit as e:  # argparse and a few stages exit through SystemExit
        rc = e.code
    err = capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in cwd.rglob("*")}
    return rc, err, {"changed": {str(p) for p in set(before) ^ set(after)} | {str(p) for p in before
                                                                               if p in after and before[p] != after[p]}}


def _error_lines(err: str) -> list[str]:
    """The error and everything printed after it (log lines before it are progress, not the
    error): one line when the error is one line."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    first = next((i for i, ln in enumerate(lines) if "error:" in ln), len(lines))
    return lines[first:]


@pytest.mark.parametrize("stage,key,value,named", BAD_PARAMS, ids=[f"{s}:{k}={v!r}" for s, k, v, _ in BAD_PARAMS])
def test_bad_param_is_one_line_naming_the_key(tmp_path, capsys, monkeypatch, ledger, stage, key, value, named):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_set(PARAMS, key, value)))
    rc, err, diff = _run(stage, command(stage)[1], tmp_path, capsys, monkeypatch)
    ok = rc not in (0, None) and "Traceback" not in err and len(_error_lines(err)) == 1 and named in err
    ledger(f"params: {key}={value!r}", stage, "one line naming the key, exit 1" if ok else f"exit {rc}: {err[:120]!r}",
           lost=len(diff["changed"]))
    assert ok, err
    assert not diff["changed"], diff


# the first input each stage reads; track opens its MLflow store (mlruns.db) before any input
MISSING = {"judge": "data/pool/source.json",  # the judge reads what the data has first
           "select": "data/pool/records.jsonl",
           "features": "data/pool/records.jsonl", "finetune": "selections", "track": "reports/metrics.json"}


@pytest.mark.parametrize("stage", list(MISSING))
def test_missing_input_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, ledger, stage):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    rc, err, diff = _run(stage, command(stage)[1], tmp_path, capsys, monkeypatch)
    ok = rc not in (0, None) and "Traceback" not in err and len(_error_lines(err)) == 1 and MISSING[stage] in err
    changed = {p for p in diff["changed"] if "mlruns.db" not in p and "mlartifacts" not in p}
    ledger("input file missing", stage, "one line naming the file, exit 1" if ok else f"exit {rc}: {err[:120]!r}",
           lost=len(changed))
    assert ok, err
    assert not changed


def test_missing_params_file_is_one_line(tmp_path, capsys, monkeypatch, ledger):
    rc, err, _ = _run("select", command("select")[1], tmp_path, capsys, monkeypatch)
    ok = rc not in (0, None) and "Traceback" not in err and "params.yaml" in err and len(_error_lines(err)) == 1
    ledger("params.yaml missing", "select", "one line naming the file" if ok else f"exit {rc}: {err[:120]!r}")
    assert ok, err


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
    rc, err, diff = _run("judge", argv, tmp_path, capsys, monkeypatch)
    ok = rc not in (0, None) and "Traceback" not in err and len(_error_lines(err)) == 1 and "blocker" in err
    ledger("output folder unwritable", "judge", "one line naming the path" if ok else f"exit {rc}: {err[:120]!r}",
           lost=len(diff["changed"]))
    assert ok, err
    assert not diff["changed"] and (tmp_path / "blocker").read_text().startswith("a file")
