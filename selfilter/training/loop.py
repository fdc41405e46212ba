"""Pieces every training run here shares: device/accelerator, seeded data order, AdamW with a
cosine schedule, a resumable step loop with atomic checkpoints.

The loop runs on pre-encoded samples (``EncodedDataset``): a step only pads and stacks tensors,
so many short runs in one process pay no processor cost. Data order is a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.

Multi-process (``accelerate launch``): each rank takes its slice of every global batch of
``batch_size x world`` samples; ``batch_size`` is per device, like the paper's per-device 16
(the Self-Filter softmax is over the per-device minibatch, as in the reference).
"""
from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selfilter.data.encode import collate
from selfilter.holdpoints import hold

CHECKPOINT_DIR = "checkpoint"
_NON_MODEL_KEYS = {"labels", "index"}


def forget_prepared(accelerator) -> None:
    """Make ``accelerator`` forget the models/optimizers of earlier runs in this process.

    Its checkpoints save everything it tracks, so each run must start with an empty list.
    ``Accelerator.free_memory`` does this too but also runs ``gc.collect`` (~0.25 s here),
    which dominates a 1-2 s fine-tune repeated over a grid; clear the lists directly when the
    installed accelerate has them.
    """
    lists = [getattr(accelerator, name, None) for name in ("_models", "_optimizers", "_schedulers", "_dataloaders")]
    if all(isinstance(x, list) for x in lists):
        for x in lists:
            x.clear()
    else:
        accelerator.free_memory()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for but CUDA is not available")
    return device


def make_accelerator(device: str = "auto", mixed_precision: str = "no"):
    """An ``accelerate.Accelerator`` (one per process; reuse it for many runs).

    Unused-parameter detection is on under DDP because a batch of text-only samples leaves
    the projector without gradient.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    device = resolve_device(device)
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return max(1, math.ceil(n / (batch_size * world)))


def total_steps(n: int, batch_size: int, epochs: float, world: int = 1) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch(n, batch_size, world)))


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  lengths: Sequence[int] | None = None, group_size: int = 16) -> list[list[int]]:
    """This rank's batches (dataset positions) for one epoch: a seeded shuffle, cut into global
    batches of ``batch_size * world``; with several ranks the order wraps around so every rank
    gets a batch at every step (as DistributedSampler pads).

    With ``lengths``, batches are grouped by length (LLaVA's / HF's length-grouped sampling):
    the shuffled order is cut into mega-batches of ``group_size`` global batches, each sorted by
    length, so a batch pads to a similar length (less wasted compute); the batches themselves
    are then shuffled. Still a pure function of (seed, epoch).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch_size * world
    n_steps = steps_per_epoch(n, batch_size, world)
    if lengths is not None:
        mega = per_step * group_size
        order = [i for k in range(0, n, mega) for i in sorted(order[k:k + mega], key=lambda j: -lengths[j])]
        full = [order[k:k + per_step] for k in range(0, n, per_step)]
        short = full.pop() if len(full[-1]) < per_step else []  # a short batch stays last
        order = [i for b in torch.randperm(len(full), generator=g).tolist() for i in full[b]] + short
    if world > 1:
        order = (order * math.ceil(n_steps * per_step / n))[: n_steps * per_step]
    out = []
    for s in range(n_steps):
        chunk = order[s * per_step:(s + 1) * per_step]
        size = math.ceil(len(chunk) / world)
        out.append(chunk[rank * size:(rank + 1) * size])
    return out


def cosine_schedule(optimizer: torch.optim.Optimizer, num_steps: int, warmup_ratio: float):
    """Linear warmup over ``ceil(warmup_ratio * num_steps)`` steps, then cosine decay to 0."""
    warmup = math.ceil(warmup_ratio * num_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, num_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(param_groups: Sequence[dict[str, Any]] | Sequence[nn.Parameter], lr: float, weight_decay: float,
          device: str = "cpu") -> torch.optim.Optimizer:
    # foreach kernels batch the update over all tensors: much less per-step Python overhead
    # for many small parameters; fused is CUDA-only.
    fused = device.startswith("cuda")
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, foreach=not fused, fused=fused)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str,
                 dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors a model's forward takes (not ``labels``/``index``), on ``device``; floating
    vision tensors cast to the model's ``dtype``."""
    out = {}
    for k, v in batch.items():
        if k in _NON_MODEL_KEYS:
            continue
        v = v.to(device, non_blocking=True)
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v
    return out


@dataclass
class TrainResult:
    step: int                                 # optimizer steps done (== num_steps when finished)
    num_steps: int
    log: list[dict[str, float]] = field(default_factory=list)  # per step: step, loss, lr
    resumed_from: int = 0
    wall_s: float = 0.0

    @property
    def finished(self) -> bool:
        return self.step >= self.num_steps


def train_steps(accelerator, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                dataset, pad_token_id: int, *, batch_size: int, num_steps: int, seed: int,
                loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
                grad_clip: float | None = 1.0, checkpoint_dir: str | Path | None = None,
                checkpoint_every: int = 500, max_steps: int | None = None, group_by_length: bool = False,
                desc: str = "train", progress: bool = True) -> TrainResult:
    """Run optimizer steps ``[resume step, num_steps)`` (stopping early at ``max_steps``).

    ``module``/``optimizer`` are already ``accelerator.prepare``-d; ``scheduler`` is not (an
    accelerate-wrapped scheduler steps once per process). ``loss_fn(module, batch)`` returns the
    scalar loss of a collated batch (on CPU; it moves what it needs). With ``checkpoint_dir``
    the run resumes from the checkpoint found there and saves one every ``checkpoint_every``
    steps and when it stops. ``group_by_length`` batches samples of similar length together
    (needs ``dataset.num_tokens()``).
    """
    import time

    start_time = time.perf_counter()
    rank, world = accelerator.process_index, accelerator.num_processes
    n = len(dataset)
    spe = steps_per_epoch(n, batch_size, world)
    lengths = dataset.num_tokens() if group_by_length else None
    ckpt = Path(checkpoint_dir) / CHECKPOINT_DIR if checkpoint_dir is not None else None
    result = TrainResult(step=0, num_steps=num_steps)
    if ckpt is not None:
        state = load_checkpoint(accelerator, ckpt, scheduler)
        if state is not None:
            result.step = result.resumed_from = state["step"]
            result.log = state["log"]
    stop = num_steps if max_steps is None else min(num_steps, max_steps)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    module.train()
    cached_epoch, batches = -1, []
    pending: list[tuple[int, torch.Tensor, float]] = []  # losses stay on device until a sync point

    def flush() -> None:
        for s, loss, lr in pending:
            result.log.append({"step": s, "loss": float(loss), "lr": lr})
        pending.clear()

    bar = tqdm(total=stop, initial=result.step, desc=desc, unit="step", disable=not progress or not accelerator.is_main_process,
               leave=False)
    while result.step < stop:
        epoch, pos = divmod(result.step, spe)
        if epoch != cached_epoch:
            batches = epoch_batches(n, batch_size, epoch, seed, rank, world, lengths=lengths)
            cached_epoch = epoch
        batch = collate([dataset[i] for i in batches[pos]], pad_token_id)
        loss = loss_fn(module, batch)
        accelerator.backward(loss)
        if grad_clip is not None:
            accelerator.clip_grad_norm_(params, grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.step += 1
        pending.append((result.step, loss.detach(), lr))
        bar.update(1)
        # checkpoint every N steps and where a max_steps stop interrupts the run; a finished run
        # needs none (its outputs are written next)
        if ckpt is not None and result.step < num_steps and (result.step % checkpoint_every == 0
                                                             or result.step == stop):
            flush()
            save_checkpoint(accelerator, ckpt, scheduler, {"step": result.step, "log": result.log})
        hold("train.step_done")  # test-only kill point (selfilter/holdpoints.py); off unless the suite sets it
    bar.close()
    flush()
    result.wall_s = time.perf_counter() - start_time
    return result


def save_checkpoint(accelerator, ckpt: Path, scheduler, state: dict[str, Any]) -> None:
    """Atomic directory checkpoint: write ``<ckpt>.tmp``, then swap it in for ``<ckpt>``.

    ``accelerator.save_state`` saves model, optimizer and RNG states in whatever form the
    distributed backend needs (DDP, FSDP, DeepSpeed shards). A crash at any point leaves
    either the old or the new checkpoint complete (``<ckpt>.old`` is used if the swap broke).
    """
    tmp, old = ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".old")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    if accelerator.is_main_process:
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        (tmp / "train_state.json").write_text(json.dumps({**state, "scheduler": sched}))
        if ckpt.exists():
            if old.exists():
                shutil.rmtree(old)
            ckpt.rename(old)
        tmp.rename(ckpt)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, ckpt: Path, scheduler) -> dict[str, Any] | None:
    """Restore model/optimizer/RNG/scheduler from ``ckpt`` (or its ``.old`` twin); the saved
    train state (``step``, ``log``) or None when there is no checkpoint."""
    for candidate in (ckpt, ckpt.with_name(ckpt.name + ".old")):
        if (candidate / "train_state.json").exists():
            accelerator.load_state(str(candidate))
            state = json.loads((candidate / "train_state.json").read_text())
            sched = state.pop("scheduler")
            scheduler.load_state_dict({**sched, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
            return state
    return None


def remove_checkpoint(accelerator, checkpoint_dir: str | Path) -> None:
    if accelerator.is_main_process:
        for suffix in ("", ".tmp", ".old"):
            p = Path(checkpoint_dir) / (CHECKPOINT_DIR + suffix)
            if p.exists():
                shutil.rmtree(p)
    accelerator.wait_for_everyone()
