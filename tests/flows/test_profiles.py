"""Every profile in profiles/ composes over params.yaml into params every section schema accepts.

The schemas live next to the code that reads them; a profile key that drifts from them (a
rename, a typo) fails here rather than hours into a GPU run.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from flow_fixtures import REPO
from flows.pipeline import compose_params

# section -> (module, schema class)
SCHEMAS = {
    "data": ("selfilter.data.config", "DataConfig"),
    "base": ("selfilter.models.config", "BaseConfig"),
    "features": ("selfilter.features.config", "FeaturesConfig"),
    "judge": ("selfilter.judge.config", "JudgeConfig"),
    "stage1": ("selfilter.training.config", "Stage1Config"),
    "el2n": ("selfilter.training.config", "EL2NConfig"),
    "select": ("selfilter.selection.config", "SelectConfig"),
    "finetune": ("selfilter.training.config", "FinetuneConfig"),
    "evaluate": ("selfilter.evaluation.config", "EvaluateConfig"),
    "compare": ("selfilter.report.config", "CompareConfig"),
    "tracking": ("selfilter.tracking", "TrackingConfig"),
}
PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def _schema(section: str):
    module, name = SCHEMAS[section]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None  # that section's schema has not landed yet


def test_the_expected_profiles_exist():
    assert {p.stem for p in PROFILES} >= {"smoke", "gpu-llava7b", "gpu-qwen2vl"}


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_profile_validates_against_every_section_schema(profile: Path):
    from selfilter.config import parse_section

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = compose_params(base, yaml.safe_load(profile.read_text()), None, profile_name=str(profile))
    checked = []
    for section in params:
        schema = _schema(section) if section in SCHEMAS else None
        if schema is not None:
            parse_section(params, section, schema, source=str(profile))  # raises naming the key
            checked.append(section)
    assert {"data", "base", "features", "stage1", "select", "finetune"} <= set(checked)


def test_gpu_profile_is_the_papers_setting():
    p = yaml.safe_load((REPO / "profiles" / "gpu-llava7b.yaml").read_text())
    assert p["features"]["model"] == "openai/clip-vit-large-patch14"
    s1 = p["stage1"]
    assert (s1["epochs"], s1["lr"], s1["warmup_ratio"], s1["batch_size"], s1["max_length"]) == (3, 2e-5, 0.03, 16, 2048)
    assert s1["dtype"] == "bfloat16" and s1["mixed_precision"] == "bf16"
    assert round(25_000 / 157_712, 4) in p["select"]["budgets"]
    assert p["judge"]["backend"] == "openai"
    assert set(p["evaluate"]["tasks"]) == {"mme", "pope", "mmbench_en_dev", "scienceqa_img", "textvqa_val",
                                           "llava_in_the_wild"}
    for cfg in ("zero3.yaml", "fsdp.yaml"):
        assert yaml.safe_load((REPO / "configs" / "accelerate" / cfg).read_text())["mixed_precision"] == "bf16"
