"""The stage1 / finetune / el2n stages end to end on the tiny LLaVA and a 40-record pool."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from selfilter.io import read_json, write_jsonl

SMALL = {"epochs": 1, "lr": 0.003, "batch_size": 8, "max_length": 64, "device": "cpu"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, pool):
    root, records = pool
    ws = tmp_path_factory.mktemp("ws")
    write_jsonl(ws / "records.jsonl", records)
    n = len(records)
    rng = np.random.RandomState(0)
    clip = rng.randn(n, 8).astype(np.float32)
    (ws / "features").mkdir()
    np.save(ws / "features" / "clip.npy", clip)
    # stored in a different uid order than records.jsonl: readers must join by uid
    order = rng.permutation(n)
    pd.DataFrame({"uid": order, "clip_score": rng.rand(n), "has_image": True}).to_parquet(ws / "features" / "scores.parquet")
    np.save(ws / "features" / "clip.npy", clip[order])
    ratings = pd.DataFrame({"uid": np.arange(n), "rating": rng.randint(0, 11, n).astype(float), "parsed": True})
    ratings.loc[3, "rating"] = np.nan  # unparsed -> mean
    ratings.to_parquet(ws / "ratings.parquet")
    params = {"stage1": {**SMALL, "checkpoint_every": 2}, "finetune": {**SMALL, "epochs": 2},
              "el2n": {**{k: v for k, v in SMALL.items() if k != "epochs"}, "seeds": [0, 1], "train_epochs": 0.5}}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    for budget, seed, uids in ((0.25, 0, range(10)), (0.5, 1, range(5, 25))):
        d = ws / "selections" / "toy" / f"b{budget}_s{seed}"
        d.mkdir(parents=True)
        (d / "subset.json").write_text(json.dumps([records[u] for u in uids]))
    return ws, root


@pytest.mark.parametrize("setting", ["scores", "clip"])
def test_stage1_writes_difficulty_for_every_uid(workspace, tiny_llava_dir, setting, monkeypatch):
    from stages.stage1 import main

    ws, images = workspace
    monkeypatch.chdir(ws)
    out = ws / "stage1" / setting
    assert main(["--params", "params.yaml", "--setting", setting, "--records", "records.jsonl", "--image-dir",
                 str(images), "--model", str(tiny_llava_dir), "--features", "features", "--judge",
                 "ratings.parquet", "--out", str(out), "--no-progress"]) == 0
    table = pd.read_parquet(out / "difficulty.parquet")
    assert table["uid"].tolist() == list(range(40))
    np.testing.assert_allclose(table["difficulty"], -table["score_raw"])
    curve = pd.read_csv(out / "loss.csv")
    assert list(curve.columns) == ["step", "loss", "lr"] and curve["step"].tolist() == [1, 2, 3, 4, 5]
    metrics = read_json(out / "metrics.json")
    assert metrics["feature_dim"] == (2 if setting == "scores" else 8)
    assert (out / "score_net.safetensors").is_file() and (out / "difficulty.parquet.meta.json").is_file()
    assert not (ws / ".checkpoints" / "stage1" / setting).exists() and (ws / ".checkpoints").is_dir()


def test_stage1_missing_uid_is_a_one_line_error(workspace, tiny_llava_dir, tmp_path, capsys):
    from stages.stage1 import main

    ws, images = workspace
    feats = tmp_path / "features"
    feats.mkdir()
    pd.read_parquet(ws / "features" / "scores.parquet").iloc[1:].to_parquet(feats / "scores.parquet")
    rc = main(["--params", str(ws / "params.yaml"), "--setting", "scores", "--records", str(ws / "records.jsonl"),
               "--image-dir", str(images), "--model", str(tiny_llava_dir), "--features", str(feats),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "scores.parquet: no row for uid" in err and "Traceback" not in err


@pytest.mark.parametrize("workers", [1, 2])
def test_finetune_runs_every_subset_saves_loadable_checkpoints_and_skips_done_runs(workspace, tiny_llava_dir,
                                                                                 workers, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stages.finetune import main

    ws, images = workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["finetune"].update(workers=workers, torch_threads=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runs = tmp_path / "runs"
    args = ["--params", str(tmp_path / "params.yaml"), "--method", "toy", "--selections", str(ws / "selections"),
            "--image-dir", str(images), "--model", str(tiny_llava_dir), "--out", str(runs), "--no-progress"]
    assert main(args) == 0
    for name, n, steps in (("b0.25_s0", 10, 4), ("b0.5_s1", 20, 6)):  # equal epochs: ceil(n / 8) * 2
        run = runs / "toy" / name
        log = read_json(run / "train_log.json")
        assert (log["n_samples"], log["steps"]) == (n, steps) and log["wall_s"] > 0
        assert read_json(run / "done.json")["steps"] == steps and not (run / "checkpoint").exists()
        AutoModelForImageTextToText.from_pretrained(run)
        assert AutoProcessor.from_pretrained(run).tokenizer.chat_template
    stamp = (runs / "toy" / "b0.25_s0" / "train_log.json").stat().st_mtime_ns
    assert main(args) == 0  # same inputs: nothing retrained
    assert (runs / "toy" / "b0.25_s0" / "train_log.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_same_seed_reproduces_every_fine_tune_bit_for_bit(workspace, tiny_llava_dir, tmp_path):
    """Two workers, run twice from scratch: every checkpoint's weights are the same bytes (the
    grid's runs are independent of which worker trains them and in what order)."""
    from stages.finetune import main

    ws, images = workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["finetune"].update(workers=2, torch_threads=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    weights = []
    for out in (tmp_path / "runs1", tmp_path / "runs2"):
        assert main(["--params", str(tmp_path / "params.yaml"), "--method", "toy", "--selections",
                     str(ws / "selections"), "--image-dir", str(images), "--model", str(tiny_llava_dir),
                     "--out", str(out), "--no-progress"]) == 0
        weights.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))})
    assert len(weights[0]) == 2 and weights[0] == weights[1]


def test_recipe_steps_equal_steps_gives_every_budget_the_reference_steps():
    from selfilter.training.finetune import recipe_steps

    kw = dict(epochs=3, reference_budget=0.15, batch_size=32)
    assert recipe_steps(200, 0.05, recipe="equal_epochs", **kw) == 21
    assert recipe_steps(600, 0.15, recipe="equal_epochs", **kw) == 57
    assert [recipe_steps(n, b, recipe="equal_steps", **kw) for n, b in ((200, 0.05), (600, 0.15), (1200, 0.3))] \
        == [57, 57, 57]


def test_recipe_steps_fixed_steps_gives_every_subset_the_same_steps_and_needs_them():
    import pytest

    from selfilter.training.config import FinetuneConfig
    from selfilter.training.finetune import recipe_steps

    kw = dict(epochs=3, reference_budget=0.15, batch_size=32)
    assert [recipe_steps(n, b, recipe="fixed_steps", steps=250, **kw)
            for n, b in ((100, 0.05), (300, 0.15), (2000, 1.0))] == [250, 250, 250]
    with pytest.raises(ValueError, match="steps"):
        recipe_steps(300, 0.15, recipe="fixed_steps", **kw)
    with pytest.raises(ValueError, match="finetune.steps"):
        FinetuneConfig(recipe="fixed_steps")
    assert FinetuneConfig(recipe="fixed_steps", steps=10).steps == 10


def test_el2n_scores_every_uid(workspace, tiny_llava_dir):
    from stages.el2n import main

    ws, images = workspace
    out = ws / "el2n"
    assert main(["--params", str(ws / "params.yaml"), "--records", str(ws / "records.jsonl"), "--image-dir",
                 str(images), "--model", str(tiny_llava_dir), "--out", str(out), "--no-progress"]) == 0
    table = pd.read_parquet(out / "scores.parquet")
    assert table["uid"].tolist() == list(range(40))
    assert table["el2n"].between(0, np.sqrt(2)).all()
    np.testing.assert_allclose(table["el2n"], (table["el2n_seed0"] + table["el2n_seed1"]) / 2)


def test_finetune_only_trains_one_run_as_the_whole_stage_would_and_removes_nothing(workspace, tiny_llava_dir,
                                                                                    tmp_path, capsys):
    """A grid unit (`--only`, flows/grid.py): the same bytes as the whole stage's run, other
    run folders untouched (another worker may be writing them); `--plan` lists what is left."""
    from stages.finetune import main

    ws, images = workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["finetune"].update(workers=2, torch_threads=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def args(out, *extra):
        return ["--params", str(tmp_path / "params.yaml"), "--method", "toy", "--selections", str(ws / "selections"),
                "--image-dir", str(images), "--model", str(tiny_llava_dir), "--out", str(out), "--no-progress", *extra]

    assert main(args(tmp_path / "whole")) == 0
    unit = tmp_path / "unit"
    (unit / "toy" / "b0.5_s1").mkdir(parents=True)
    (unit / "toy" / "b0.5_s1" / "half-written").write_text("another worker's")
    (unit / "gone_method").mkdir()
    capsys.readouterr()
    assert main(args(unit, "--plan")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == ["toy/b0.25_s0", "toy/b0.5_s1"]
    assert not (unit / "gone_method").exists()  # --plan is the host's: it cleans up like the stage
    (unit / "gone_method").mkdir()
    assert main(args(unit, "--only", "toy/b0.25_s0")) == 0
    assert ((unit / "toy/b0.25_s0/model.safetensors").read_bytes()
            == (tmp_path / "whole/toy/b0.25_s0/model.safetensors").read_bytes())
    assert (unit / "toy/b0.5_s1/half-written").is_file() and (unit / "gone_method").is_dir()
    log = read_json(unit / "toy/b0.25_s0/train_log.json")
    assert log["worker"] == "local" and log["host"]
    capsys.readouterr()
    assert main(args(unit, "--plan")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == ["toy/b0.5_s1"]
    assert main(args(unit, "--only", "toy/b9_s9")) == 1
    assert "--only toy/b9_s9: no such run" in capsys.readouterr().err


@pytest.mark.slow
def test_a_grid_unit_trains_under_accelerate_launch_with_the_workers_config(workspace, tiny_llava_dir, tmp_path,
                                                                             monkeypatch):
    """A worker started with --accelerate-config runs a unit's fine-tune as data-parallel ranks
    (here configs/accelerate/cpu2.yaml: 2 CPU processes over gloo, as on a GPU box with 2 GPUs)."""
    import subprocess
    from pathlib import Path

    from flows.grid import ACCELERATE_ENV, _python_argv

    repo = Path(__file__).resolve().parents[2]
    ws, images = workspace
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["finetune"].update(workers=1, torch_threads=1)  # under a distributed launch: one run at a time
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = ["python", "-m", "stages.finetune", "--params", str(tmp_path / "params.yaml"), "--method", "toy",
           "--selections", str(ws / "selections"), "--image-dir", str(images), "--model", str(tiny_llava_dir),
           "--out", str(tmp_path / "runs"), "--no-progress", "--only", "toy/b0.25_s0"]
    monkeypatch.setenv(ACCELERATE_ENV, str(repo / "configs/accelerate/cpu2.yaml"))
    argv, env = _python_argv(cmd, repo)
    assert argv[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    env.update(OMP_NUM_THREADS="1", MASTER_PORT="0")
    proc = subprocess.run([*argv[:5], "--main_process_port", "0", *argv[5:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_json(tmp_path / "runs/toy/b0.25_s0/train_log.json")
    assert log["steps"] == 2 and log["epochs"] == 3.2  # 10 samples, batch 8 x 2 ranks: ceil(10 / 16) x 2 epochs
    assert (tmp_path / "runs/toy/b0.25_s0/done.json").is_file() and not (tmp_path / "runs/toy/b0.5_s1").exists()
    monkeypatch.delenv(ACCELERATE_ENV)
    argv, _ = _python_argv(["python", "-m", "stages.evaluate", "--only", "x/y"], repo)
    assert argv[1:4] == ["-P", "-m", "stages.evaluate"]


def test_a_run_with_the_same_subset_seed_and_recipe_is_copied_not_retrained(workspace, tiny_llava_dir,
                                                                              tmp_path, monkeypatch):
    """`twin` repeats toy's subset files (as self_filter_guarded repeats self_filter_clip's
    where its fence sets nothing aside): b0.25_s0 has toy's seed too and is copied; b0.25_s1
    has another seed and is trained. The copy's bytes equal a run of `twin` trained alone."""
    import selfilter.training.finetune as ft
    from stages.finetune import main

    ws, images = workspace
    sel = tmp_path / "selections"
    shutil.copytree(ws / "selections" / "toy", sel / "toy")
    subset = (sel / "toy" / "b0.25_s0" / "subset.json").read_bytes()
    for name in ("b0.25_s0", "b0.25_s1"):
        (sel / "twin" / name).mkdir(parents=True)
        (sel / "twin" / name / "subset.json").write_bytes(subset)
    trained = []
    real = ft.finetune
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: trained.append(k["desc"]) or real(*a, **k))

    def args(out, *methods):
        return ["--params", str(ws / "params.yaml"), *[x for m in methods for x in ("--method", m)],
                "--selections", str(sel), "--image-dir", str(images), "--model", str(tiny_llava_dir),
                "--out", str(out), "--no-progress"]

    assert main(args(tmp_path / "runs", "toy", "twin")) == 0
    assert sorted(trained) == ["toy/b0.25_s0", "toy/b0.5_s1", "twin/b0.25_s1"]
    runs = tmp_path / "runs"
    copy = read_json(runs / "twin/b0.25_s0/train_log.json")
    assert copy["trained_as"] == "toy/b0.25_s0" and copy["method"] == "twin"
    assert read_json(runs / "twin/b0.25_s0/run.json")["method"] == "twin"
    assert (runs / "twin/b0.25_s0/done.json").is_file()
    assert "trained_as" not in read_json(runs / "twin/b0.25_s1/train_log.json")

    trained.clear()
    assert main(args(tmp_path / "alone", "twin")) == 0  # the reference: twin trained by itself
    assert sorted(trained) == ["twin/b0.25_s0", "twin/b0.25_s1"]
    for name in ("b0.25_s0", "b0.25_s1"):
        assert ((runs / "twin" / name / "model.safetensors").read_bytes()
                == (tmp_path / "alone" / "twin" / name / "model.safetensors").read_bytes())
    trained.clear()
    assert main(args(tmp_path / "runs", "toy", "twin")) == 0 and trained == []  # all done: nothing redone
