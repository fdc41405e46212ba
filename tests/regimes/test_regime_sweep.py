"""The sweep file, the per-regime workspace, collecting, and the flow around them."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from selfilter.config import ConfigError
from selfilter.regimes.spec import load_spec
from selfilter.regimes.workspace import prepare_workspace

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_sweep_is_valid_and_states_its_hypothesis_first():
    spec = load_spec(ROOT / "sweeps" / "regimes.yaml")
    assert len(spec.regimes) >= 6
    noise = {r.noise for r in spec.regimes.values()}
    assert noise == {"high", "mid", "low"}
    skews = {spec.params_overrides(n).get("data.shapes.difficulty_skew", 0.0) for n in spec.regimes}
    assert len(skews) >= 2
    assert any(spec.params_overrides(n).get("judge.annotation.view") == "caption" for n in spec.regimes)
    assert spec.overrides["select.seeds"] == [0, 1, 2] and spec.overrides["select.budgets"] == [0.15, 0.30]
    assert "self_filter_guarded" in spec.overrides["select.methods"]
    # low-noise cells need a difficulty control (oracle_clean is nearly random there), and the
    # hypothesis is judged only where its premise - oracle_hard beats random - holds
    assert spec.controls == ["oracle_clean", "oracle_hard"] and spec.hypothesis.control == "oracle_hard"
    # every override names a real params key
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in spec.regimes:
        for key in spec.params_overrides(name):
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: {key} is not a params key"
                node = node[part]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["regimes"].update({"Bad Name": {"describe": "x", "noise": "low"}}), "regime name"),
    (lambda d: d["regimes"]["a"].update({"start_from": "b"}), "start_from"),
    (lambda d: d["hypothesis"].update({"regimes": ["zzz"]}), "hypothesis.regimes"),
    (lambda d: d["overrides"].update({"select.methods": ["random"]}), "lacks"),
    (lambda d: d["regimes"]["a"].update({"typo": 1}), "typo"),
])
def test_a_bad_sweep_file_is_one_error_naming_the_file(tmp_path, edit, message):
    data = {"overrides": {"select.methods": ["random", "oracle_clean", "self_filter_scores"]},
            "hypothesis": {"text": "t", "regimes": ["a"], "methods": ["self_filter_scores"]},
            "regimes": {"a": {"describe": "x", "noise": "low"}, "b": {"describe": "y", "noise": "high"}}}
    edit(data)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as e:
        load_spec(path)
    assert str(path) in str(e.value)


def _git_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "code.py").write_text("x = 1\n")
    (root / "params.yaml").write_text("# generated\nseed: 9\n")
    (root / ".gitignore").write_text("/out/\n/.regimes/\n")
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    (root / "out").mkdir()
    (root / "out" / "big.bin").write_bytes(b"output")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    (root / "new_untracked.py").write_text("y = 2\n")     # not ignored: copied too
    return root


def test_workspace_gets_the_code_the_base_params_and_the_shared_cache(tmp_path):
    root = _git_checkout(tmp_path)
    ws = root / ".regimes" / "r1"
    counts = prepare_workspace(root, ws, "seed: 0\n")
    assert (ws / "pkg" / "code.py").read_text() == "x = 1\n"
    assert (ws / "new_untracked.py").exists()
    assert not (ws / "out").exists()                       # ignored outputs stay behind
    assert (ws / "params.yaml").read_text() == "seed: 0\n"  # the base, not the checkout's generated file
    local = (ws / ".dvc" / "config.local").read_text()
    assert "no_scm = true" in local and str((root / ".dvc" / "cache").resolve()) in local
    assert counts["copied"] >= 4
    # refreshed: an edit in the checkout reaches the workspace, its outputs stay
    (ws / "result.json").write_text("{}")
    (root / "pkg" / "code.py").write_text("x = 2\n")
    counts = prepare_workspace(root, ws, "seed: 0\n")
    assert counts["copied"] == 1 and (ws / "pkg" / "code.py").read_text() == "x = 2\n"
    assert (ws / "result.json").exists()
    # its own dvc.lock and a git-tracked DVC output (a metrics file) are its results: kept
    (root / "dvc.lock").write_text("stages:\n  s:\n    cmd: x\n    outs:\n    - path: summary.json\n")
    (root / "summary.json").write_text("checkout's")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    prepare_workspace(root, ws, "seed: 0\n")
    assert (ws / "dvc.lock").read_text() == (root / "dvc.lock").read_text()   # new: the checkout's
    (ws / "dvc.lock").write_text("the workspace's own lock")
    (ws / "summary.json").write_text("the workspace's result")
    (root / "pkg" / "code.py").write_text("x = 3\n")
    prepare_workspace(root, ws, "seed: 0\n")
    assert (ws / "dvc.lock").read_text() == "the workspace's own lock"
    assert (ws / "summary.json").read_text() == "the workspace's result"
    assert (ws / "pkg" / "code.py").read_text() == "x = 3\n"
    # a checkout whose .gitignore misses the workspaces' folder: still never copied into itself
    (root / ".gitignore").write_text("/out/\n")
    prepare_workspace(root, root / ".regimes" / "r2", "seed: 0\n")
    assert not (root / ".regimes" / "r2" / ".regimes").exists()


def test_a_workspace_started_from_another_keeps_its_outputs_not_its_stores(tmp_path):
    root = _git_checkout(tmp_path)
    first = root / ".regimes" / "a"
    prepare_workspace(root, first, "seed: 0\n")
    (first / "runs").mkdir()
    (first / "runs" / "ckpt.bin").write_bytes(b"weights")
    (first / "mlruns.db").write_bytes(b"store")
    second = prepare_workspace(root, root / ".regimes" / "b", "seed: 1\n", start_from=first)
    b = root / ".regimes" / "b"
    assert (b / "runs" / "ckpt.bin").read_bytes() == b"weights"
    assert not (b / "mlruns.db").exists()
    assert (b / "params.yaml").read_text() == "seed: 1\n"
    assert (b / "pkg" / "code.py").read_text() == "x = 1\n" and sum(second.values()) >= 4
    assert not list((root / ".regimes").glob("*.partial"))


def test_outside_git_the_workspace_refuses_with_one_line(tmp_path):
    with pytest.raises(RuntimeError, match="not a git checkout"):
        prepare_workspace(tmp_path, tmp_path / "ws", "seed: 0\n")


def test_the_command_line_refuses_a_typo_in_one_line(capsys, tmp_path):
    from flows.regimes import main

    assert main(["--workdir", str(ROOT), "--only", "zzz"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--only ['zzz']: not regimes of" in err[0] and "clean-skewed" in err[0]
    assert main(["--workdir", str(tmp_path), "--sweep", "missing.yaml"]) == 1
    assert "missing.yaml: sweep file not found" in capsys.readouterr().err
