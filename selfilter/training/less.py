"""LESS gradient features (Xia et al. 2024, "LESS: Selecting Influential Data for Targeted
Instruction Tuning") on any image-text-to-text model.

Per sample: the gradient of its mean answer-token cross-entropy with respect to a chosen subset of
parameters (name patterns: the tiny model uses full gradients of e.g. the projector and the LM
head; a 7B model would name LoRA adapters or a few layers), flattened, randomly projected to
``dim`` values (Rademacher +-1/sqrt(dim), generated in seeded chunks of parameters so the
projection is the same matrix for every sample and never needs to be held whole; or a
CountSketch for very many parameters). The score of a
training sample is its mean cosine to the target samples' projected gradients,
``mean_j cos(g_i, v_j) = g_i/|g_i| . mean_j v_j/|v_j|``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selfilter.data.encode import collate
from selfilter.training.loop import model_inputs
from selfilter.training.loss import mean_cross_entropy

_CHUNK = 1 << 16  # parameters per generated block of the projection


def select_parameters(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """Parameters whose name matches any regex in ``patterns`` (``re.search``); only they keep
    ``requires_grad``. No match is an error listing some parameter names."""
    regs = [re.compile(p) for p in patterns]
    chosen = []
    for name, p in model.named_parameters():
        keep = any(r.search(name) for r in regs)
        p.requires_grad_(keep)
        if keep:
            chosen.append((name, p))
    if not chosen:
        names = [n for n, _ in model.named_parameters()]
        raise ValueError(f"less.params {list(patterns)} match no parameter; names look like: {names[:6]} ... "
                         f"{names[-3:]}")
    return chosen


class RandomProjection:
    """A fixed random map from ``P`` gradient values to ``dim``, one of:

    - ``rademacher`` (LESS / TRAK): a dense ``[P, dim]`` matrix of +-1/sqrt(dim), generated block
      by block from ``seed`` and the block index (on ``device``); blocks are cached while they fit
      in ``cache_bytes``, else regenerated for every batch of gradients (P x dim work per batch);
    - ``countsketch``: each parameter is added, with a random sign, to one random output
      coordinate (Charikar et al. 2002; an unbiased inner-product sketch like the dense one, with
      P work per gradient and 5 bytes per parameter of state) - the one that scales to the
      hundreds of millions of parameters of a 7B model's layers.
    """

    def __init__(self, n_params: int, dim: int, seed: int, device="cpu", cache_bytes: int = 1 << 29,
                 kind: str = "rademacher"):
        if kind not in ("rademacher", "countsketch"):
            raise ValueError(f"unknown projection {kind!r} (valid: rademacher, countsketch)")
        self.n_params, self.dim, self.seed, self.device, self.kind = int(n_params), int(dim), int(seed), device, kind
        self._cache: dict[int, torch.Tensor] | None = {} if n_params * dim * 4 <= cache_bytes else None
        if kind == "countsketch":
            g = torch.Generator(device="cpu").manual_seed(self.seed)
            self._bucket = torch.randint(0, self.dim, (self.n_params,), generator=g).to(device)
            self._sign = (torch.randint(0, 2, (self.n_params,), generator=g, dtype=torch.int8) * 2 - 1).to(device)

    def _block(self, b: int) -> torch.Tensor:
        if self._cache is not None and b in self._cache:
            return self._cache[b]
        rows = min(_CHUNK, self.n_params - b * _CHUNK)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + b)
        r = torch.randint(0, 2, (rows, self.dim), generator=g, device=self.device, dtype=torch.int8)
        r = (r.float() * 2 - 1) / self.dim ** 0.5
        if self._cache is not None:
            self._cache[b] = r
        return r

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        """``[G, P]`` -> ``[G, dim]``."""
        if grads.shape[1] != self.n_params:
            raise ValueError(f"gradient has {grads.shape[1]} values, the projection {self.n_params}")
        out = torch.zeros(grads.shape[0], self.dim, device=grads.device)
        if self.kind == "countsketch":
            return out.index_add_(1, self._bucket.to(grads.device), grads.float() * self._sign.to(grads.device))
        for b in range(0, (self.n_params + _CHUNK - 1) // _CHUNK):
            out += grads[:, b * _CHUNK:(b + 1) * _CHUNK].float() @ self._block(b).to(grads.device)
        return out


def gradient_features(model: nn.Module, items: Sequence[dict[str, torch.Tensor]], pad_token_id: int, *,
                      params: Sequence[str], dim: int, seed: int, device, flush_every: int = 64,
                      projection: str = "rademacher", progress: bool = True, desc: str = "less grads") -> np.ndarray:
    """Projected per-sample gradients ``[len(items), dim]`` float32 (one forward+backward each;
    a sample with no supervised token gets a zero gradient)."""
    chosen = select_parameters(model, params)
    n_params = sum(p.numel() for _, p in chosen)
    proj = RandomProjection(n_params, dim, seed, device=device, kind=projection)
    model.eval()  # no dropout: the gradient of the model as it is
    dtype = next(model.parameters()).dtype
    out = np.zeros((len(items), dim), dtype=np.float32)
    buf: list[torch.Tensor] = []
    done = 0
    for i in tqdm(range(len(items)), desc=desc, disable=not progress, leave=False):
        model.zero_grad(set_to_none=True)
        batch = collate([items[i]], pad_token_id)
        logits = model(**model_inputs(batch, device, dtype)).logits
        loss = mean_cross_entropy(logits, batch["labels"].to(device))
        if loss.requires_grad:
            loss.backward()
        buf.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                              for _, p in chosen]))
        if len(buf) == flush_every or i == len(items) - 1:
            out[done:done + len(buf)] = proj(torch.stack(buf)).cpu().numpy()
            done += len(buf)
            buf = []
    model.zero_grad(set_to_none=True)
    return out


def less_scores(train: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean cosine of each training row to the target rows (zero rows score 0)."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n > 0, n, 1.0)

    if len(target) == 0:
        raise ValueError("LESS needs at least one target sample")
    return unit(train) @ unit(target).mean(axis=0)
