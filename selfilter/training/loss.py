"""Losses over next-token predictions: the Self-Filter weighted loss, plain mean CE, EL2N.

All take ``logits`` [B, T, V] and ``labels`` [B, T] with -100 where nothing is supervised, and
do the causal shift themselves (position t predicts token t + 1), as ``transformers`` does.
None of them materialises a float32 copy of the full-vocabulary probabilities: cross-entropy runs
on the logits in their own dtype (fused log-softmax + gather), EL2N works on chunks of tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token CE ``[B, T-1]`` (float32, 0 where unsupervised) and its mask."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    vocab = logits.shape[-1]
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    ce = F.cross_entropy(shift_logits.reshape(-1, vocab), shift_labels.reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none")
    return ce.view(shift_labels.shape).float(), shift_labels != IGNORE_INDEX


def self_filter_loss(logits: torch.Tensor, labels: torch.Tensor, weight_logits: torch.Tensor) -> torch.Tensor:
    """Self-Filter stage-1 loss (PAPER.md).

    ``w = softmax(weight_logits)`` over the batch; ``loss = sum_i sum_t CE(i, t) * w_i * B / n``
    with ``n`` the number of supervised target tokens in the batch. With equal weights this is
    the usual token-mean CE; the gradient reaches ``weight_logits`` through ``w``. A batch with
    no supervised token gives 0 (still connected to the graph).
    """
    ce, mask = token_cross_entropy(logits, labels)
    batch = ce.shape[0]
    s = weight_logits.reshape(-1)
    if s.numel() != batch:
        raise ValueError(f"weight_logits has {s.numel()} values for a batch of {batch}")
    w = torch.softmax(s.float(), dim=0)
    n_tokens = mask.sum().clamp(min=1)
    return (ce.sum(dim=1) * w).sum() * batch / n_tokens


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain fine-tuning loss: CE averaged over the batch's supervised tokens."""
    ce, mask = token_cross_entropy(logits, labels)
    return ce.sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def el2n_per_sample(logits: torch.Tensor, labels: torch.Tensor, chunk_tokens: int = 1024) -> torch.Tensor:
    """EL2N per sample: mean over its supervised tokens of ``||softmax(z) - onehot(y)||_2``.

    Uses ``||p - e_y||^2 = sum_v p_v^2 - 2 p_y + 1`` on chunks of ``chunk_tokens`` supervised
    positions, so at most ``chunk_tokens x V`` float32 values exist at once. Samples with no
    supervised token get NaN.
    """
    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    rows, cols = mask.nonzero(as_tuple=True)
    norms = torch.empty(rows.numel(), dtype=torch.float32, device=logits.device)
    for start in range(0, rows.numel(), chunk_tokens):
        r, c = rows[start:start + chunk_tokens], cols[start:start + chunk_tokens]
        z = shift_logits[r, c].float()
        p = torch.softmax(z, dim=-1)
        p_y = p.gather(1, shift_labels[r, c].unsqueeze(1)).squeeze(1)
        norms[start:start + chunk_tokens] = ((p * p).sum(-1) - 2 * p_y + 1).clamp(min=0).sqrt()
    batch = logits.shape[0]
    total = torch.zeros(batch, dtype=torch.float32, device=logits.device).index_add_(0, rows, norms)
    count = mask.sum(dim=1).float()
    return total / count  # 0/0 -> NaN for unsupervised samples
