"""The Self-Filter score net and its input features.

Reference: one linear layer without bias, features -> one raw score. Features (PAPER.md):
- ``scores``: per-sample scalar scores (CLIP score, judge rating, ImageReward when present),
  each min-max normalised over the dataset to [-1, 1];
- ``clip``: the L2-normalised CLIP image and text embeddings, concatenated (2 x D).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

SETTINGS = ("scores", "clip")


class ScoreNet(nn.Module):
    """``features [B, F] -> raw scores [B]`` (one linear layer, no bias, as in the reference)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).squeeze(-1)


def minmax_to_unit(values: np.ndarray, name: str = "score") -> np.ndarray:
    """Min-max normalise a column to [-1, 1]; a constant column maps to 0 (it carries nothing)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: {int((~np.isfinite(values)).sum())} non-finite values; fill them before normalising")
    lo, hi = values.min(), values.max()
    if hi - lo < 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return (2.0 * (values - lo) / (hi - lo) - 1.0).astype(np.float32)


def score_features(columns: dict[str, np.ndarray]) -> np.ndarray:
    """``[N, len(columns)]`` float32: each named score column normalised to [-1, 1], in the
    order given (the order is fixed by the caller, so stage 1 and any reader agree)."""
    if not columns:
        raise ValueError("no score columns given for the 'scores' setting")
    return np.stack([minmax_to_unit(v, k) for k, v in columns.items()], axis=1)


def clip_features(clip: np.ndarray) -> np.ndarray:
    """The ``clip`` setting uses the 2 x D CLIP matrix as it is (already L2-normalised halves)."""
    clip = np.asarray(clip, dtype=np.float32)
    if clip.ndim != 2:
        raise ValueError(f"clip features must be [N, 2D], got shape {clip.shape}")
    return clip
