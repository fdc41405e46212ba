"""The one fine-tuning recipe every (method, budget, seed) subset gets.

Same base model, same hyperparameters; only the subset and the seed change. Three recipes:
- ``equal_epochs`` (the paper's): ``epochs`` passes over the subset, so a 5% subset gets a third
  of the optimizer steps of a 15% one;
- ``equal_steps``: every subset gets the steps ``epochs`` passes over a ``reference_budget``
  subset of the same pool would take (small subsets are repeated, large ones see less than
  ``epochs`` passes);
- ``fixed_steps``: every run gets ``steps`` optimizer steps, full data included - equal training
  compute per subset, as data-filtering benchmarks (DataComp) fix it.
Loss: token-mean cross-entropy over answer tokens (LLaVA's); ``finetune.loss: answer_only``
projects only those positions onto the vocabulary (selfilter.training.answer_loss). Vision
tower frozen by default.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfilter.models.loading import trainable_parameters
from selfilter.training.answer_loss import AnswerLoss, FullLogitsLoss
from selfilter.training.loop import (TrainResult, adamw, cosine_schedule, forget_prepared,
                                     model_inputs, seed_everything, total_steps, train_steps)

LOSSES = {"full_logits": FullLogitsLoss, "answer_only": AnswerLoss}
SUBSET_DIR = re.compile(r"^b(?P<budget>[0-9.eE+-]+)_s(?P<seed>-?\d+)$")


def recipe_steps(n_subset: int, budget: float, *, recipe: str, epochs: float, reference_budget: float,
                 batch_size: int, world: int = 1, steps: int | None = None) -> int:
    """Optimizer steps for a subset of ``n_subset`` samples drawn at ``budget`` (a fraction)."""
    if recipe == "fixed_steps":
        if steps is None or steps < 1:
            raise ValueError("finetune recipe 'fixed_steps' needs steps >= 1")
        return int(steps)
    if recipe == "equal_epochs":
        return total_steps(n_subset, batch_size, epochs, world)
    if recipe == "equal_steps":
        # the pool size is implied by the subset (n = round(budget * N))
        n_reference = max(1, round(reference_budget * n_subset / budget))
        return total_steps(n_reference, batch_size, epochs, world)
    raise ValueError(f"unknown finetune recipe '{recipe}' (valid: equal_epochs, equal_steps, fixed_steps)")


def finetune(model: nn.Module, dataset, pad_token_id: int, *, accelerator, num_steps: int, lr: float,
             weight_decay: float = 0.0, warmup_ratio: float = 0.03, batch_size: int = 16,
             grad_clip: float | None = 1.0, freeze_vision: bool = True, seed: int = 0,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 500,
             max_steps: int | None = None, group_by_length: bool = False, progress: bool = True,
             desc: str = "finetune", loss: str = "full_logits") -> TrainResult:
    """Fine-tune ``model`` in place on ``dataset`` for ``num_steps`` optimizer steps.

    ``loss``: ``full_logits`` (the model's own forward, then the token-mean CE) or
    ``answer_only`` (the same loss projecting only the supervised positions)."""
    # the accelerator must track only this run's objects (its checkpoints save all it tracks)
    forget_prepared(accelerator)
    seed_everything(seed)
    params = trainable_parameters(model, freeze_vision=freeze_vision)
    optimizer = adamw(params, lr=lr, weight_decay=weight_decay, device=accelerator.device.type)
    scheduler = cosine_schedule(optimizer, num_steps, warmup_ratio)
    dtype = next(model.parameters()).dtype
    # the loss is a module around the model, so a distributed wrapper sees all of it in forward
    if loss not in LOSSES:
        raise ValueError(f"finetune loss '{loss}' unknown (valid: {', '.join(LOSSES)})")
    module, optimizer = accelerator.prepare(LOSSES[loss](model), optimizer)

    def loss_fn(mod: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mod(labels=batch["labels"].to(accelerator.device), **model_inputs(batch, accelerator.device, dtype))

    result = train_steps(accelerator, module, optimizer, scheduler, dataset, pad_token_id,
                         batch_size=batch_size, num_steps=num_steps, seed=seed, loss_fn=loss_fn,
                         grad_clip=grad_clip, checkpoint_dir=checkpoint_dir,
                         checkpoint_every=checkpoint_every, max_steps=max_steps, group_by_length=group_by_length,
                         desc=desc, progress=progress)
    # drop the accelerator's references so many runs in one process do not pile up
    forget_prepared(accelerator)
    return result


@dataclass(frozen=True)
class SubsetSpec:
    name: str          # b<budget>_s<seed>, reused as the run folder name
    budget: float
    seed: int
    path: Path         # subset.json


def discover_subsets(selections_dir: str | Path) -> list[SubsetSpec]:
    """Every ``b<budget>_s<seed>/subset.json`` under a method's selections folder."""
    root = Path(selections_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: selections folder not found")
    specs = []
    for d in sorted(root.iterdir()):
        m = SUBSET_DIR.match(d.name)
        if m and (d / "subset.json").is_file():
            specs.append(SubsetSpec(d.name, float(m["budget"]), int(m["seed"]), d / "subset.json"))
    if not specs:
        raise FileNotFoundError(f"{root}: no b<budget>_s<seed>/subset.json found")
    return sorted(specs, key=lambda s: (s.budget, s.seed))


def run_digest(subset_digest: str, recipe: dict, base_digest: str) -> str:
    """Identity of one fine-tune: the subset file, the recipe (params) and the base model."""
    blob = json.dumps({"subset": subset_digest, "recipe": recipe, "base": base_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
