"""The paper's setting, rehearsed on a CPU: ``profiles/gpu-llava7b.yaml``'s whole graph through
``dvc repro`` to the report, with local tiny checkpoints of the same classes (a CLIPModel whose
vision tower LLaVA uses, a Llama language model, LLaVA-1.5's mm_projector.bin format, all loaded
by path with ``base.source: pretrained``) and the OpenAI-compatible judge served by the suite's
fake endpoint. Only device, dtype, local paths, sizes and the benchmark are overridden: the
hub's benchmark datasets are unreachable offline, so the held-out split of the user's records
stands in for lmms-eval's standard tasks.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from tiny_checkpoints import make_tiny_llava_parts
from userdata import make_llava_dataset

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _rating(prompt: str) -> str:
    """A judge whose ratings vary with the record (a constant would make Alpagasus random)."""
    return f"{int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 11}\nA rating from the fake judge."


def test_the_paper_profile_runs_end_to_end_on_cpu(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "reliability"))
    from smoke_checkout import stage_env

    from flows.pipeline import apply_profile

    data = tmp_path / "mydata"
    make_llava_dataset(data, n=160, seed=2)
    parts = make_tiny_llava_parts(tmp_path / "checkpoints")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    cpu = {"device": "cpu", "dtype": "float32"}
    train = {**cpu, "mixed_precision": "no", "batch_size": 8, "max_length": 256}
    with FakeOpenAI(_rating) as judge:
        overrides = {
            # local paths
            "data.annotations": str(data / "annotations.json"), "data.image_dir": str(data / "images"),
            "base.pretrained.clip": str(parts["clip"]), "base.pretrained.language_model": str(parts["language_model"]),
            "base.pretrained.projector": str(parts["projector"]), "features.model": str(parts["clip"]),
            "judge.openai.base_url": judge.base_url, "judge.openai.concurrency": 2,
            # device and dtype
            "base.device": "cpu", "base.pretrained.dtype": "float32", "select.device": "cpu",
            "features": {**cpu, "batch_size": 16, "num_workers": 0, "shard_size": 64},
            "stage1": {**train, "score_batch_size": 16}, "el2n": {**train, "score_batch_size": 16},
            "finetune": train, "evaluate": {**cpu, "torch_threads": 1, "workers": 1, "tasks": "auto"},
            # sizes: one budget, one epoch, clusters that fit a 160-record pool
            "select.budgets": [0.3], "select.n_clusters": 8, "stage1.epochs": 1, "finetune.epochs": 1,
            "el2n.seeds": [0],
        }
        applied = apply_profile(clone, "gpu-llava7b", overrides)
        assert applied["profile"].endswith("gpu-llava7b.yaml")
        env = stage_env(tmp_path, OPENAI_API_KEY="sk-fake-test-key")
        proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=1800)
        log = proc.stdout + proc.stderr
        (tmp_path / "console.log").write_text(log)
        assert proc.returncode == 0, log[-5000:]
        assert judge.requests, "the judge endpoint was never called"

    params = json.loads(json.dumps(__import__("yaml").safe_load((clone / "params.yaml").read_text())))
    assert params["base"]["source"] == "pretrained" and params["finetune"]["recipe"] == "equal_epochs"
    metrics = json.loads((clone / "metrics" / "base.json").read_text())
    assert metrics["source"] == "pretrained"
    base_cfg = json.loads((clone / "models" / "base" / "config.json").read_text())
    assert base_cfg["architectures"] == ["LlavaForConditionalGeneration"]
    # every method of the profile ran: the judge can rate this data, and only oracle_clean (no
    # hidden labels) is left out
    methods = params["select"]["methods"]
    left_out = {p.parent.name for p in (clone / "selections").glob("*/left_out.json")}
    assert left_out == {"oracle_clean"}
    ran = {p.parent.parent.name for p in (clone / "evals").glob("*/b*_s*/metrics.json")}
    assert ran == set(methods) - left_out
    assert json.loads((clone / "evals" / "benchmark.json").read_text())["name"] == "heldout"
    assert (clone / "reports" / "comparison.md").is_file() and (clone / "reports" / "summary.json").is_file()
    usage = json.loads((clone / "judge" / "usage.json").read_text())
    assert "left_out" not in usage and usage["n_unparsed"] == 0
