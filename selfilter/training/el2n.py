"""EL2N scores (Paul et al. 2021) for instruction samples.

For each seed: a fresh copy of the base model is fine-tuned briefly on the whole pool (``train
epochs``, "early in training"), then every sample is scored as the mean over its supervised
answer tokens of ``||softmax(logits) - onehot(target)||_2``. Scores are averaged over seeds.
Samples with no supervised token (everything truncated away) get NaN.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selfilter.data.encode import collate
from selfilter.training.finetune import finetune
from selfilter.training.loop import model_inputs, total_steps
from selfilter.training.loss import el2n_per_sample


@torch.no_grad()
def score_el2n(model: nn.Module, dataset, pad_token_id: int, *, device, batch_size: int = 128,
               chunk_tokens: int = 1024, positions: list[int] | None = None, progress: bool = True) -> np.ndarray:
    """EL2N of each item at ``positions`` (default all), in that order."""
    model.eval()
    positions = list(range(len(dataset))) if positions is None else positions
    dtype = next(model.parameters()).dtype
    out = []
    for start in tqdm(range(0, len(positions), batch_size), desc="el2n score", disable=not progress, leave=False):
        batch = collate([dataset[i] for i in positions[start:start + batch_size]], pad_token_id)
        logits = model(**model_inputs(batch, device, dtype)).logits
        out.append(el2n_per_sample(logits, batch["labels"].to(device), chunk_tokens).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def el2n_scores(load_model: Callable[[], nn.Module], dataset, pad_token_id: int, *, accelerator,
                seeds: list[int], train_epochs: float, lr: float, weight_decay: float = 0.0,
                warmup_ratio: float = 0.03, batch_size: int = 16, grad_clip: float | None = 1.0,
                freeze_vision: bool = True, score_batch_size: int = 128, chunk_tokens: int = 1024,
                group_by_length: bool = False, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(mean over seeds [N], per seed [S, N])`` EL2N for every item of ``dataset``.

    ``load_model()`` returns a fresh base model for each seed. Under several processes each
    rank scores a strided share and the shares are gathered.
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
    return per_seed.mean(axis=0), per_seed
