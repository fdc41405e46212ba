"""EL2N scores (Paul et al. 2021) for instruction samples.

For each seed: a fresh copy of the base model is fine-tuned briefly on the whole pool (``train
epochs``, "early in training"), then every sample is scored as the mean over its supervised
answer tokens of ``||softmax(logits) - onehot(target)||_2``. Scores are averaged over seeds.

Samples with no supervised token have no EL2N: an empty answer (``{"from": "gpt", "value": ""}``:
the encoder supervises an answer's text and the end-of-turn token(s) *after* it, so an empty
answer supervises nothing, not even the end of turn) or answers truncated away by
``max_length``. ``score_el2n`` reports NaN for them; ``el2n_scores`` gives them the pool mean of
that seed (the mean over the scored samples), so every stored score is defined and such samples
rank in the middle, neither preferred nor avoided by EL2N. A pool with no scored sample at all
is an error.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selfilter.data.encode import IGNORE_INDEX, collate
from selfilter.training.finetune import finetune
from selfilter.training.loop import model_inputs, total_steps
from selfilter.training.loss import el2n_per_sample

log = logging.getLogger(__name__)


@torch.no_grad()
def score_el2n(model: nn.Module, dataset, pad_token_id: int, *, device, batch_size: int = 128,
               chunk_tokens: int = 1024, positions: list[int] | None = None, progress: bool = True) -> np.ndarray:
    """EL2N of each item at ``positions`` (default all), in that order; NaN for an item with no
    supervised token. A non-finite score for an item that has supervised tokens (non-finite
    logits, e.g. a float16 overflow) is an error naming the item."""
    model.eval()
    positions = list(range(len(dataset))) if positions is None else positions
    dtype = next(model.parameters()).dtype
    out = []
    for start in tqdm(range(0, len(positions), batch_size), desc="el2n score", disable=not progress, leave=False):
        chunk = positions[start:start + batch_size]
        batch = collate([dataset[i] for i in chunk], pad_token_id)
        logits = model(**model_inputs(batch, device, dtype)).logits
        scores = el2n_per_sample(logits, batch["labels"].to(device), chunk_tokens).cpu()
        supervised = (batch["labels"][:, 1:] != IGNORE_INDEX).any(dim=1)
        bad = (supervised & ~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(f"EL2N: non-finite score for dataset item(s) {[chunk[b] for b in bad]} "
                                     f"that have supervised tokens (non-finite logits; model dtype {dtype})")
        out.append(scores)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def el2n_scores(load_model: Callable[[], nn.Module], dataset, pad_token_id: int, *, accelerator,
                seeds: list[int], train_epochs: float, lr: float, weight_decay: float = 0.0,
                warmup_ratio: float = 0.03, batch_size: int = 16, grad_clip: float | None = 1.0,
                freeze_vision: bool = True, score_batch_size: int = 128, chunk_tokens: int = 1024,
                group_by_length: bool = False, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(mean over seeds [N], per seed [S, N])`` EL2N for every item of ``dataset``, never NaN.

    ``load_model()`` returns a fresh base model for each seed. Under several processes each
    rank scores a strided share and the shares are gathered. Items with no supervised token get
    the seed's pool mean (see the module docstring).
    """
    from accelerate.utils import gather_object

    n, rank, world = len(dataset), accelerator.process_index, accelerator.num_processes
    per_seed = np.zeros((len(seeds), n))
    for k, seed in enumerate(seeds):
        model = load_model()
        steps = total_steps(n, batch_size, train_epochs, world)
        finetune(model, dataset, pad_token_id, accelerator=accelerator, num_steps=steps, lr=lr,
                 weight_decay=weight_decay, warmup_ratio=warmup_ratio, batch_size=batch_size,
                 grad_clip=grad_clip, freeze_vision=freeze_vision, seed=seed, group_by_length=group_by_length,
                 progress=progress,
                 desc=f"el2n train seed {seed}")
        mine = list(range(rank, n, world))
        scores = score_el2n(model, dataset, pad_token_id, device=accelerator.device, batch_size=score_batch_size,
                            chunk_tokens=chunk_tokens, positions=mine, progress=progress)
        pairs = gather_object(list(zip(mine, scores.tolist()))) if world > 1 else list(zip(mine, scores.tolist()))
        for i, s in pairs:
            per_seed[k, i] = s
        del model
        per_seed[k] = fill_unscored(per_seed[k])
    return per_seed.mean(axis=0), per_seed


def fill_unscored(scores: np.ndarray) -> np.ndarray:
    """``scores`` with NaN (no supervised token) replaced by the mean of the other scores."""
    scores = np.asarray(scores, dtype=np.float64)
    unscored = np.isnan(scores)
    if not unscored.any():
        return scores
    if unscored.all():
        raise ValueError(f"EL2N: none of the {len(scores)} samples has a supervised token (empty answers, "
                         "or max_length truncates every answer away); nothing to score")
    log.warning("EL2N: %d of %d samples have no supervised token (empty answer or truncated away); "
                "they get the pool mean", int(unscored.sum()), len(scores))
    return np.where(unscored, scores[~unscored].mean(), scores)
