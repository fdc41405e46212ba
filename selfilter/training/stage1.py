"""Self-Filter stage 1: co-train the VLM and the score net on the whole pool (PAPER.md).

The VLM (LM + projector; vision tower frozen) and the score net are one module, so DDP / FSDP /
ZeRO-3 see a single model and synchronise both. Each step: logits from the VLM, raw scores
``s_i = score_net(features_i)`` for the batch, loss = ``self_filter_loss``. After training, the
score net scores every sample of the pool once (batched, no grad): ``difficulty = -s``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from selfilter.models.loading import trainable_parameters
from selfilter.training.loop import (TrainResult, adamw, cosine_schedule, forget_prepared,
                                     model_inputs, seed_everything, total_steps, train_steps)
from selfilter.training.loss import self_filter_loss
from selfilter.training.scorenet import ScoreNet, clip_features, score_features

SCORE_COLUMNS = ("clip_score", "image_reward", "rating")  # fixed order for the 'scores' setting


class CoTrainer(nn.Module):
    """VLM + score net as one module: ``forward(inputs, features) -> (logits, raw scores)``."""

    def __init__(self, vlm: nn.Module, score_net: ScoreNet):
        super().__init__()
        self.vlm = vlm
        self.score_net = score_net

    def forward(self, inputs: dict[str, torch.Tensor], features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.vlm(**inputs).logits
        return logits, self.score_net(features)


@dataclass
class Stage1Output:
    raw_scores: np.ndarray          # [N] score-net output per pool sample, dataset order
    score_net: dict[str, torch.Tensor]
    train: TrainResult


def setting_features(setting: str, uids: np.ndarray, features_dir: str | Path,
                     judge_ratings: str | Path | None) -> tuple[np.ndarray, list[str]]:
    """The score net's input for ``setting``, row-aligned with ``uids`` (I/O happens here).

    ``scores``: ``clip_score`` and ``image_reward`` (when present) from
    ``features/scores.parquet`` plus ``rating`` from the judge; missing values (text-only samples,
    unparsed ratings) take the column mean; each column min-max normalised to [-1, 1].
    ``clip``: ``features/clip.npy`` rows (features are stored in records order with their uids).
    """
    features_dir = Path(features_dir)
    table = pd.read_parquet(features_dir / "scores.parquet")
    pos = _positions(table["uid"].to_numpy(), uids, features_dir / "scores.parquet")
    if setting == "clip":
        clip = np.load(features_dir / "clip.npy", mmap_mode="r")
        if len(clip) != len(table):
            raise ValueError(f"{features_dir / 'clip.npy'}: {len(clip)} rows but scores.parquet has {len(table)}")
        return clip_features(np.asarray(clip[pos])), [f"clip_{i}" for i in range(clip.shape[1])]
    if setting != "scores":
        raise ValueError(f"unknown stage-1 setting '{setting}' (valid: scores, clip)")
    columns: dict[str, np.ndarray] = {}
    for name in SCORE_COLUMNS[:2]:
        if name in table:
            columns[name] = table[name].to_numpy(dtype=np.float64)[pos]
    if judge_ratings is not None:
        ratings = pd.read_parquet(judge_ratings)
        rpos = _positions(ratings["uid"].to_numpy(), uids, judge_ratings)
        columns["rating"] = ratings["rating"].to_numpy(dtype=np.float64)[rpos]
    for name, col in columns.items():
        missing = ~np.isfinite(col)
        if missing.all():
            raise ValueError(f"stage1 'scores' setting: column '{name}' has no finite value")
        col[missing] = col[~missing].mean()
    return score_features(columns), list(columns)


def _positions(table_uids: np.ndarray, uids: np.ndarray, path) -> np.ndarray:
    index = pd.Index(table_uids)
    pos = index.get_indexer(uids)
    if (pos < 0).any():
        missing = uids[pos < 0][:5].tolist()
        raise ValueError(f"{path}: no row for uid(s) {missing} of records.jsonl (rerun that stage on the same pool)")
    return pos


def cotrain(model: nn.Module, dataset, features: np.ndarray, pad_token_id: int, *, accelerator,
            epochs: float, lr: float, score_net_lr: float | None = None, weight_decay: float = 0.0,
            warmup_ratio: float = 0.03, batch_size: int = 16, grad_clip: float | None = 1.0,
            freeze_vision: bool = True, seed: int = 0, checkpoint_dir: str | Path | None = None,
            checkpoint_every: int = 500, max_steps: int | None = None, score_batch_size: int = 256,
            group_by_length: bool = False, progress: bool = True) -> Stage1Output:
    """Co-train ``model`` and a fresh score net on ``dataset`` (row ``i`` of ``features`` belongs
    to item ``i``); return the score net's raw output for every item after training."""
    if len(features) != len(dataset):
        raise ValueError(f"{len(features)} feature rows for {len(dataset)} samples")
    # the accelerator must track only this run's objects (its checkpoints save all it tracks)
    forget_prepared(accelerator)
    seed_everything(seed)
    score_net = ScoreNet(features.shape[1])
    vlm_params = trainable_parameters(model, freeze_vision=freeze_vision)
    module = CoTrainer(model, score_net)
    optimizer = adamw([{"params": vlm_params},
                       {"params": list(score_net.parameters()), "lr": score_net_lr or lr}],
                      lr=lr, weight_decay=weight_decay, device=accelerator.device.type)
    num_steps = total_steps(len(dataset), batch_size, epochs, accelerator.num_processes)
    scheduler = cosine_schedule(optimizer, num_steps, warmup_ratio)
    module, optimizer = accelerator.prepare(module, optimizer)
    feats = torch.as_tensor(features, dtype=torch.float32)
    dtype = next(model.parameters()).dtype

    def loss_fn(mod: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = accelerator.device
        logits, raw = mod(model_inputs(batch, device, dtype), feats[batch["index"]].to(device))
        return self_filter_loss(logits, batch["labels"].to(device), raw)

    result = train_steps(accelerator, module, optimizer, scheduler, dataset, pad_token_id,
                         batch_size=batch_size, num_steps=num_steps, seed=seed, loss_fn=loss_fn,
                         grad_clip=grad_clip, checkpoint_dir=checkpoint_dir,
                         checkpoint_every=checkpoint_every, max_steps=max_steps, group_by_length=group_by_length,
                         desc="stage1",
                         progress=progress)
    net = accelerator.unwrap_model(module).score_net
    raw = score_all(net, feats, score_batch_size, accelerator.device)
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    return Stage1Output(raw_scores=raw, score_net=state, train=result)


@torch.no_grad()
def score_all(score_net: nn.Module, features: torch.Tensor, batch_size: int, device) -> np.ndarray:
    """Raw score-net output for every row of ``features`` (batched, no grad), float64."""
    dtype = next(score_net.parameters()).dtype
    out = [score_net(features[i:i + batch_size].to(device, dtype)).double().cpu()
           for i in range(0, len(features), batch_size)]
    return torch.cat(out).numpy()


def difficulty_table(uids: np.ndarray, raw_scores: np.ndarray) -> pd.DataFrame:
    """``uid, difficulty, score_raw`` with difficulty = -raw score (low score = hard)."""
    return pd.DataFrame({"uid": np.asarray(uids, dtype=np.int64), "difficulty": -raw_scores,
                         "score_raw": raw_scores})
