"""The fine-tuning loss, computed on the supervised positions only.

LLaVA's loss reads next-token logits where the next token is an answer token: about 10% of a
default-pool sequence (image tokens, prompts and padding are not supervised). A VLM's own
forward projects *every* position onto the vocabulary - a ``[B, T, V]`` tensor, a log-softmax
over it and the backward of both. On the default tiny model (a 466-token vocabulary) the
answer-only step is 1.24x faster on a CPU (``benchmarks/bench_finetune.py``); for a 7B LLaVA
(V = 32,000, T = 2,048) the full logits are 262 MB of float32 per sample. Chosen by
``finetune.loss`` (``answer_only`` in the GPU profiles; the CPU default keeps ``full_logits``,
whose measured results the README reports).

``AnswerLoss`` wraps the VLM so that the whole loss is one module forward - DDP, FSDP and
DeepSpeed wrap the wrapper and see every parameter used inside ``forward`` - and computes the
base model's last hidden states, gathers the supervised positions, then applies the output
embedding. Same value as ``mean_cross_entropy`` of the full logits. Whether a model's logits
*are* the output embedding of its last hidden state (not so for soft-capped or scaled logits)
is checked on the first batch of every run (:func:`gathered_logits_match`); a model that fails
the check trains on its full logits, with one log line.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from selfilter.training.loss import IGNORE_INDEX, mean_cross_entropy

log = logging.getLogger(__name__)


def _split(vlm: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(base model returning hidden states, output embedding), or None when the model does
    not have the usual ``<ForConditionalGeneration>.model`` + ``lm_head`` layout."""
    base = getattr(vlm, getattr(vlm, "base_model_prefix", "model"), None)
    head = vlm.get_output_embeddings() if hasattr(vlm, "get_output_embeddings") else None
    if not isinstance(base, nn.Module) or not isinstance(head, nn.Module) or base is vlm:
        return None
    return base, head


class FullLogitsLoss(nn.Module):
    """The reference loss as a module: the model's own full logits, then ``mean_cross_entropy``."""

    def __init__(self, vlm: nn.Module):
        super().__init__()
        self.vlm = vlm

    def forward(self, labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return mean_cross_entropy(self.vlm(**inputs).logits, labels)


@torch.no_grad()
def gathered_logits_match(vlm: nn.Module, labels: torch.Tensor, inputs: dict[str, torch.Tensor],
                          rtol: float = 1e-3) -> bool | None:
    """Are the output embedding's logits of the gathered last hidden states the model's own
    logits at the supervised positions? None when the batch supervises nothing (cannot tell).
    Checked in eval mode: no dropout drawn, no random number consumed."""
    split = _split(vlm)
    if split is None:
        return False
    mask = labels[:, 1:] != IGNORE_INDEX
    if not bool(mask.any()):
        return None
    base, head = split
    was_training = vlm.training
    vlm.eval()
    try:
        full = vlm(**inputs).logits[:, :-1][mask].float()
        try:
            gathered = head(base(**inputs).last_hidden_state[:, :-1][mask]).float()
        except (AttributeError, TypeError, ValueError) as e:  # no hidden states from the base
            log.info("%s: no answer-only loss (%s: %s)", type(vlm).__name__, type(e).__name__, e)
            return False
    finally:
        vlm.train(was_training)
    if full.shape != gathered.shape:
        return False
    scale = full.abs().max().clamp(min=1.0)
    return bool(((full - gathered).abs().max() <= rtol * scale).item())


class AnswerLoss(FullLogitsLoss):
    """``forward(labels, **model_inputs)`` -> the batch's token-mean cross-entropy over its
    supervised next tokens (the value of ``mean_cross_entropy`` of the full logits).

    The first batch that supervises anything decides the path: only the supervised positions
    are projected onto the vocabulary when :func:`gathered_logits_match` holds for this model,
    else the model's full logits are used (one log line).
    """

    def __init__(self, vlm: nn.Module):
        super().__init__(vlm)
        self.answer_only: bool | None = None  # None until a batch has decided

    def forward(self, labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        if self.answer_only is None:
            self.answer_only = gathered_logits_match(self.vlm, labels, inputs)
            if self.answer_only is False:
                log.info("%s: its logits are not the output embedding of its last hidden state; "
                         "training on the full logits", type(self.vlm).__name__)
        if not self.answer_only:
            return super().forward(labels, **inputs)
        base, head = _split(self.vlm)
        hidden = base(**inputs).last_hidden_state  # [B, T, H]
        mask = labels[:, 1:] != IGNORE_INDEX       # position t predicts token t + 1
        logits = head(hidden[:, :-1][mask])        # [n supervised, V]
        ce = F.cross_entropy(logits, labels[:, 1:][mask], reduction="none").float()
        return ce.sum() / mask.sum().clamp(min=1)
