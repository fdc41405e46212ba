"""One scoring pass of the base model: IFD (Cherry LLM) and COINCIDE's activations.

IFD (Li et al. 2023, "From Quantity to Quality", the Cherry LLM paper): for a sample with answer A
and instruction Q (here: the image and every user turn),

    IFD = s(A | Q) / s(A)

with ``s`` the mean next-token cross-entropy over the answer's tokens. ``s(A | Q)`` comes from the
sample encoded as training sees it (chat template, image, every supervised answer token incl.
the end-of-turn token); ``s(A)`` from the answer text alone - the assistant turns joined by a
newline, tokenised by the tokenizer alone (its BOS if it adds one), the EOS appended, no image,
no template - every token after the first supervised. IFD < 1: the instruction helps predict the
answer; >= 1: it does not (Cherry drops those). Undefined (NaN) when either side has no
supervised token.

The conditioned pass also yields COINCIDE's features: the hidden states of a few layers,
mean-pooled over the sequence's (attended) tokens, each layer L2-normalised, concatenated.

Model-agnostic: the model is any image-text-to-text model whose forward takes the encoder's
tensors and returns ``logits`` (and ``hidden_states`` when asked).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selfilter.data.encode import IGNORE_INDEX, collate
from selfilter.training.loop import model_inputs
from selfilter.training.loss import token_cross_entropy


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each sample's supervised tokens ``[B]`` (NaN: none)."""
    ce, mask = token_cross_entropy(logits, labels)
    return ce.sum(dim=1) / mask.sum(dim=1).float()  # 0/0 -> NaN


def ifd_ratio(loss_conditioned: np.ndarray, loss_answer: np.ndarray) -> np.ndarray:
    """IFD = s(A|Q) / s(A); NaN where either is undefined or s(A) is 0."""
    cond = np.asarray(loss_conditioned, dtype=np.float64)
    alone = np.asarray(loss_answer, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = cond / alone
    return np.where(np.isfinite(out) & (alone > 0), out, np.nan)


def answer_text(record: dict) -> str:
    """The assistant turns of a LLaVA-format record, joined by a newline."""
    return "\n".join(t["value"] for t in record["conversations"] if t.get("from") == "gpt")


def encode_answer_only(record: dict, tokenizer, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The answer text alone as model inputs: every token supervised (the first has no
    prediction after the causal shift), EOS appended, truncated to ``max_length``."""
    ids = list(tokenizer(answer_text(record))["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    if max_length is not None:
        ids = ids[:max_length]
    t = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": t, "labels": t.clone(), "attention_mask": torch.ones_like(t)}


def pooled_layers(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor,
                  layers: Sequence[int]) -> torch.Tensor:
    """``[B, len(layers) * H]``: for each layer index into ``hidden_states`` (0 = embeddings,
    negative from the end), the mean over attended positions, L2-normalised, concatenated."""
    n = len(hidden_states)
    mask = attention_mask.to(hidden_states[0].device).unsqueeze(-1).float()
    parts = []
    for layer in layers:
        if not -n <= layer < n:
            raise ValueError(f"activation layer {layer} out of range: the model returns {n} hidden states "
                             f"(0 = embeddings .. {n - 1} = last layer)")
        h = hidden_states[layer].float()
        pooled = (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        parts.append(torch.nn.functional.normalize(pooled, dim=1))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def score_pass(model: nn.Module, dataset, answer_items: Sequence[dict[str, torch.Tensor]], pad_token_id: int, *,
               device, batch_size: int = 32, layers: Sequence[int] = (-1,), progress: bool = True,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s(A|Q) [N], s(A) [N], activations [N, len(layers) * H] float32) for every item.

    Two forward passes over the pool: the encoded samples (with hidden states) and the
    answer-only sequences. A non-finite loss for an item that has supervised tokens is an error.
    """
    if len(answer_items) != len(dataset):
        raise ValueError(f"{len(answer_items)} answer-only items for {len(dataset)} samples")
    model.eval()
    dtype = next(model.parameters()).dtype
    n = len(dataset)
    cond, alone, acts = np.full(n, np.nan), np.full(n, np.nan), None
    for start in tqdm(range(0, n, batch_size), desc="ifd/activations", disable=not progress, leave=False):
        pos = list(range(start, min(n, start + batch_size)))
        batch = collate([dataset[i] for i in pos], pad_token_id)
        out = model(**model_inputs(batch, device, dtype), output_hidden_states=True)
        cond[pos] = _checked(per_sample_loss(out.logits, batch["labels"].to(device)), batch["labels"], pos, "s(A|Q)")
        pooled = pooled_layers(out.hidden_states, batch["attention_mask"], layers).cpu().numpy()
        if acts is None:
            acts = np.zeros((n, pooled.shape[1]), dtype=np.float32)
        acts[pos] = pooled
        ab = collate([answer_items[i] for i in pos], pad_token_id)
        logits = model(**model_inputs(ab, device, dtype)).logits
        alone[pos] = _checked(per_sample_loss(logits, ab["labels"].to(device)), ab["labels"], pos, "s(A)")
    return cond, alone, acts if acts is not None else np.zeros((0, 0), dtype=np.float32)


def _checked(loss: torch.Tensor, labels: torch.Tensor, positions: list[int], what: str) -> np.ndarray:
    supervised = (labels[:, 1:] != IGNORE_INDEX).any(dim=1)
    loss = loss.double().cpu()
    bad = (supervised & ~torch.isfinite(loss)).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(f"IFD: non-finite {what} for dataset item(s) {[positions[b] for b in bad]} "
                                 "that have supervised tokens (non-finite logits?)")
    return loss.numpy()
