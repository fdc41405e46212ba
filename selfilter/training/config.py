"""params.yaml sections ``stage1``, ``finetune``, ``el2n``, ``ifd`` and ``less``.

Defaults are the embedded CPU setting (a ~0.6M-parameter LLaVA): its learning rates are far
above the paper's 2e-5 for a 7B model because a tiny randomly-initialised-then-pretrained model
needs them (picked by trying; see tests/training and benchmarks/README.md). The GPU profile
sets the paper's values.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from selfilter.config import Section


class OptimSection(Section):
    """What every training run here shares: AdamW + cosine schedule with linear warmup."""

    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)                 # per device (the softmax of stage 1 is over it)
    grad_clip: float | None = Field(1.0, gt=0)        # max global grad norm; null = off
    max_length: int | None = Field(512, ge=8)         # tokens, image tokens included
    dtype: str = "float32"                            # weights: float32 | bfloat16 | float16
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate autocast on top of dtype
    device: str = "auto"                              # auto (cuda if present) | cpu | cuda
    freeze_vision: bool = True                        # LLaVA recipe: vision tower frozen
    checkpoint_every: int = Field(500, ge=1)          # optimizer steps between resumable checkpoints
    max_steps: int | None = Field(None, ge=1)         # stop after this many steps (smoke / resume tests)
    group_by_length: bool = False                     # batch similar lengths together (less padding)


class Stage1Config(OptimSection):
    settings: list[Literal["scores", "clip"]] = ["scores", "clip"]
    epochs: float = Field(3.0, gt=0)
    score_net_lr: float | None = Field(None, gt=0)    # null = same as lr (the reference)
    seed: int = 0
    score_batch_size: int = Field(256, ge=1)          # for the final no-grad scoring pass
    # Off by default: the score softmax compares the samples of a batch, and length-grouped
    # batches would make it compare samples of similar length only (not the reference).
    group_by_length: bool = False

    @field_validator("settings")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not v:
            raise ValueError("settings must be a non-empty list without repeats")
        return v


class FinetuneConfig(OptimSection):
    recipe: Literal["equal_epochs", "equal_steps", "fixed_steps"] = "equal_epochs"
    epochs: float = Field(3.0, gt=0)                  # equal_epochs: on every subset
    reference_budget: float = Field(0.15, gt=0, le=1)  # equal_steps: every subset gets this budget's steps
    steps: int | None = Field(None, ge=1)             # fixed_steps: every run, whatever its subset size
    # answer_only: project only the supervised positions onto the vocabulary (same loss, less
    # compute and memory: selfilter.training.answer_loss); full_logits: the model's own forward
    loss: Literal["full_logits", "answer_only"] = "full_logits"

    @model_validator(mode="after")
    def _fixed_steps_needs_steps(self) -> FinetuneConfig:
        if self.recipe == "fixed_steps" and self.steps is None:
            raise ValueError("recipe fixed_steps needs finetune.steps (optimizer steps of every run)")
        return self
    seed_offset: int = 0                              # training seed = selection seed + offset
    group_by_length: bool = True                      # LLaVA-style length grouping: less padding, faster
    # Independent runs trained side by side in forked processes of `torch_threads` threads each.
    # Tiny models are overhead-bound: 2 x 1 thread beats 1 x 2 threads on 2 cores. Must be 1
    # under `accelerate launch` (the processes are then the data-parallel ranks).
    workers: int = Field(1, ge=1)
    torch_threads: int | None = Field(None, ge=1)     # null: torch's default


class EL2NConfig(OptimSection):
    seeds: list[int] = [0, 1, 2]                      # independent short trainings, scores averaged
    train_epochs: float = Field(1.0, gt=0)            # "early in training" (Paul et al. 2021)
    score_batch_size: int = Field(128, ge=1)
    chunk_tokens: int = Field(1024, ge=1)             # supervised tokens per softmax chunk
    group_by_length: bool = True


class IFDConfig(Section):
    """params ``ifd``: one scoring pass of the base model for ``ifd`` (Cherry LLM's IFD) and
    ``coincide`` (multi-layer activations). No training: the model is scored as it is."""

    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(512, ge=8)         # tokens, image tokens included
    dtype: str = "float32"                            # weights: float32 | bfloat16 | float16
    device: str = "auto"                              # auto (cuda if present) | cpu | cuda
    # indices into the model's hidden states (0 = embeddings, -1 = last layer) pooled for coincide
    activation_layers: list[int] = Field(default=[-1], min_length=1)
    activation_dtype: Literal["float32", "float16"] = "float32"  # activations.npy (N x layers x hidden)


class LESSConfig(Section):
    """params ``less``: per-sample gradient features (LESS, Xia et al. 2024)."""

    params: list[str] = Field(default=["multi_modal_projector", "lm_head"], min_length=1)  # regexes on parameter names
    proj_dim: int = Field(512, ge=1)                  # random projection size (paper: 8192)
    projection: Literal["rademacher", "countsketch"] = "rademacher"  # dense (paper) | sparse (P work per sample)
    proj_seed: int = 0
    max_length: int | None = Field(512, ge=8)
    dtype: str = "float32"
    device: str = "auto"
    flush_every: int = Field(64, ge=1)                # gradients projected together
    # target set: "shapes" generates fresh held-out questions (seed = data.shapes.seed + offset;
    # never the benchmark's own); "llava" reads a LLaVA-format file of dev examples
    target: Literal["shapes", "llava"] = "shapes"
    n_target: int = Field(32, ge=1)
    target_seed_offset: int = Field(1000, ge=1)
    target_annotations: str | None = None             # llava: JSON array / JSONL
    target_image_dir: str | None = None               # llava: folder its image paths are relative to
