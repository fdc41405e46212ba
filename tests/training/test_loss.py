"""The Self-Filter loss, mean CE and EL2N against direct float64 computations."""
from __future__ import annotations

import math

import pytest
import torch

from selfilter.training import el2n_per_sample, mean_cross_entropy, self_filter_loss


def direct_loss(logits, labels, s):
    """PAPER.md literally, in float64 with Python loops."""
    B, T, _ = logits.shape
    w = torch.softmax(s.double().reshape(-1), 0)
    total, n = 0.0, 0
    for i in range(B):
        for t in range(T - 1):
            y = labels[i, t + 1].item()
            if y == -100:
                continue
            logp = torch.log_softmax(logits[i, t].double(), -1)[y]
            total = total - logp * w[i] * B
            n += 1
    return total / max(n, 1)


def sample(B=4, T=7, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :2] = -100                      # prompt
    labels[B - 1, 4:] = -100                  # shorter answer
    return logits, labels, torch.randn(B, generator=g)


def test_matches_direct_float64():
    logits, labels, s = sample()
    got = self_filter_loss(logits, labels, s)
    assert got.item() == pytest.approx(direct_loss(logits, labels, s).item(), rel=1e-5)
    assert self_filter_loss(logits, labels, s.unsqueeze(1)).item() == pytest.approx(got.item())


def test_gradient_reaches_weight_logits_and_favours_easy_samples():
    logits, labels, s = sample()
    s = s.clone().requires_grad_(True)
    loss = self_filter_loss(logits, labels, s)
    loss.backward()
    s64 = s.detach().double().requires_grad_(True)
    direct_loss(logits, labels, s64).backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)
    # dL/ds_i = w_i (L_i - sum_j w_j L_j) B / n with L_i the summed CE of sample i: descending
    # the loss raises the score of samples whose summed loss is below the weighted mean
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none").sum(1)
    w = torch.softmax(s.detach(), 0)
    assert torch.equal(torch.sign(s.grad), torch.sign(ce - (w * ce).sum()))

def test_batch_of_one_and_equal_weights_are_mean_ce():
    logits, labels, _ = sample(B=1)
    ref = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    assert self_filter_loss(logits, labels, torch.tensor([5.0])).item() == pytest.approx(ref.item(), rel=1e-6)
    logits, labels, _ = sample(B=3)
    assert self_filter_loss(logits, labels, torch.zeros(3)).item() == pytest.approx(
        mean_cross_entropy(logits, labels).item(), rel=1e-6)


def test_all_masked_sample_and_all_masked_batch():
    logits, labels, s = sample()
    labels[2] = -100
    assert self_filter_loss(logits, labels, s).item() == pytest.approx(direct_loss(logits, labels, s).item(), rel=1e-5)
    labels[:] = -100
    s = s.requires_grad_(True)
    loss = self_filter_loss(logits, labels, s)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph


def test_bfloat16_logits_close_to_float32():
    logits, labels, s = sample(V=64)
    ref = self_filter_loss(logits, labels, s)
    got = self_filter_loss(logits.bfloat16(), labels, s.bfloat16())
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=2e-2)


def test_el2n_matches_direct_and_chunking_is_invisible():
    logits, labels, _ = sample(V=13)
    labels[3] = -100
    got = el2n_per_sample(logits, labels, chunk_tokens=3)
    for i in range(3):
        norms = [torch.linalg.vector_norm(torch.softmax(logits[i, t].double(), -1)
                                          - torch.nn.functional.one_hot(labels[i, t + 1], 13).double()).item()
                 for t in range(6) if labels[i, t + 1] != -100]
        assert got[i].item() == pytest.approx(sum(norms) / len(norms), rel=1e-5)
    assert math.isnan(got[3].item())
    torch.testing.assert_close(el2n_per_sample(logits, labels, chunk_tokens=1000), got, equal_nan=True)
