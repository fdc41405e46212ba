"""The ``features`` section of params.yaml."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from selfilter.config import Section


class FeaturesConfig(Section):
    # A transformers CLIP checkpoint: a local folder (default: the tiny CLIP built by `base`)
    # or, in GPU profiles, a hub name such as openai/clip-vit-large-patch14.
    model: str = "models/clip"
    batch_size: int = Field(64, ge=1)
    # DataLoader workers that decode images and tokenise; 0 = in the main process.
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto = bfloat16 on CUDA, float32 on CPU (CPU bf16 matmuls are slow and lossy).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Rows per shard file: the unit of resumption and of the --shard-index split.
    shard_size: int = Field(4096, ge=1)
    # Try ImageReward when its package and local weights exist; skipped (one log line) otherwise.
    image_reward: bool = True
    # Local ImageReward checkpoint (never downloaded); empty = the package's default cache path.
    image_reward_weights: str = ""
