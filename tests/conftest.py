"""Shared fixtures: tiny randomly initialised checkpoints, built once per test session."""
from __future__ import annotations

import os

import pytest

# Tests never reach a hub; set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A saved tiny LLaVA (model + processor with chat template), random weights, ~1 s."""
    from selfilter.models.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A saved tiny CLIPModel + CLIPProcessor, random weights (32 px images, 64-token texts)."""
    from selfilter.models.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)
