"""IFD, activations and LESS gradient features: pure functions on a controlled model, and the
ifd / less stages end to end on the tiny LLaVA."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from selfilter.io import write_jsonl
from selfilter.selection.field import ifd_select
from selfilter.training.less import RandomProjection, gradient_features, select_parameters
from selfilter.training.modelpass import ifd_ratio, per_sample_loss, pooled_layers, score_pass

PAD, BOS, Q1, A1, Q2, A2, EOS = 0, 1, 2, 3, 4, 5, 6
V = 7


class Bigram(nn.Module):
    """Next token depends on the current one only, with fixed probabilities: Q1 determines A1
    (p = 0.97); Q2 only hints at A2 (p = 0.5); BOS says nothing (uniform); answers end (EOS 0.9)."""

    def __init__(self):
        super().__init__()
        p = torch.full((V, V), 1.0 / V)
        for cur, nxt, q in ((Q1, A1, 0.97), (Q2, A2, 0.5), (A1, EOS, 0.9), (A2, EOS, 0.9)):
            p[cur] = (1 - q) / (V - 1)
            p[cur, nxt] = q
        self.table = nn.Parameter(p.log())
        self.emb = nn.Embedding(V, 4)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **_):
        h = self.emb(input_ids)
        return SimpleNamespace(logits=self.table[input_ids], hidden_states=(h, 2 * h) if output_hidden_states else None)


def _item(ids, supervised_from):
    t = torch.tensor(ids)
    labels = t.clone()
    labels[:supervised_from] = -100
    return {"input_ids": t, "labels": labels, "attention_mask": torch.ones_like(t)}


def test_an_answer_the_instruction_determines_has_lower_ifd_and_ranks_below():
    # sample 0: Q1 -> A1 (determined by the instruction); sample 1: Q2 -> A2 (only hinted)
    conditioned = [_item([BOS, Q1, A1, EOS], 2), _item([BOS, Q2, A2, EOS], 2)]
    alone = [_item([BOS, A1, EOS], 0), _item([BOS, A2, EOS], 0)]
    cond, ans, acts = score_pass(Bigram(), conditioned, alone, PAD, device="cpu", batch_size=2, layers=[0, -1],
                                 progress=False)
    q = lambda p: -np.log(p)  # noqa: E731
    np.testing.assert_allclose(cond, [(q(0.97) + q(0.9)) / 2, (q(0.5) + q(0.9)) / 2], rtol=1e-5)
    np.testing.assert_allclose(ans, [(q(1 / V) + q(0.9)) / 2] * 2, rtol=1e-5)
    ifd = ifd_ratio(cond, ans)
    assert ifd[0] < ifd[1] < 1
    assert ifd_select(ifd, 2, seed=0).tolist() == [1, 0]
    assert acts.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(acts[:, :4], axis=1), 1.0, rtol=1e-5)


def test_ifd_is_undefined_without_supervised_tokens_and_rejects_bad_layers():
    logits = torch.zeros(2, 3, 5)
    labels = torch.tensor([[-100, 1, 2], [-100, -100, -100]])
    loss = per_sample_loss(logits, labels)
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])
    assert np.isnan(ifd_ratio(np.array([1.0, np.nan, 1.0]), np.array([2.0, 1.0, 0.0]))[1:]).all()
    with pytest.raises(ValueError, match="out of range"):
        pooled_layers((torch.zeros(1, 2, 3),), torch.ones(1, 2), [1])


def test_pooling_ignores_padding():
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]])
    out = pooled_layers((h,), torch.tensor([[1, 1, 0]]), [0])
    np.testing.assert_allclose(out.numpy(), [[np.sqrt(0.5), np.sqrt(0.5)]], rtol=1e-6)


def test_projection_is_fixed_by_the_seed_and_preserves_inner_products_roughly():
    g = torch.randn(8, 70_000)
    a, b = RandomProjection(70_000, 256, seed=3), RandomProjection(70_000, 256, seed=3, cache_bytes=0)
    pa, pb = a(g), b(g)  # cached and regenerated blocks give the same matrix
    torch.testing.assert_close(pa, pb)
    exact = g @ g.T / 70_000
    approx = pa @ pa.T / 70_000
    assert torch.allclose(approx.diagonal(), exact.diagonal(), rtol=0.25)


def test_countsketch_is_fixed_by_the_seed_and_unbiased_for_inner_products():
    g = torch.randn(4, 50_000)
    a = RandomProjection(50_000, 512, seed=1, kind="countsketch")
    torch.testing.assert_close(a(g), RandomProjection(50_000, 512, seed=1, kind="countsketch")(g))
    p = a(g)
    assert torch.allclose((p * p).sum(1) / 50_000, (g * g).sum(1) / 50_000, rtol=0.25)
    sk = torch.stack([RandomProjection(200, 64, seed=s, kind="countsketch")(torch.eye(200)[:2] + 1) for s in range(200)])
    exact = float(((torch.eye(200)[0] + 1) * (torch.eye(200)[1] + 1)).sum())
    assert float((sk[:, 0] * sk[:, 1]).sum(1).mean()) == pytest.approx(exact, rel=0.1)
    with pytest.raises(ValueError, match="unknown projection"):
        RandomProjection(10, 4, seed=0, kind="gaussian")


def test_gradient_features_use_only_the_named_parameters():
    model = Bigram()
    items = [_item([BOS, Q1, A1, EOS], 2), _item([BOS, Q2, A2, EOS], 2), _item([BOS, Q1, A1, EOS], 2)]
    feats = gradient_features(model, items, PAD, params=["table"], dim=16, seed=0, device="cpu", flush_every=2,
                              progress=False)
    assert feats.shape == (3, 16)
    np.testing.assert_allclose(feats[0], feats[2], rtol=1e-6)  # same sample, same gradient
    assert not np.allclose(feats[0], feats[1])
    assert not model.emb.weight.requires_grad
    with pytest.raises(ValueError, match="match no parameter"):
        select_parameters(model, ["projector"])


# ------------------------------------------------------------------ stages on the tiny LLaVA

@pytest.fixture(scope="module")
def workspace(tmp_path_factory, pool):
    root, records = pool
    ws = tmp_path_factory.mktemp("field")
    write_jsonl(ws / "records.jsonl", records)
    params = {"ifd": {"batch_size": 8, "max_length": 64, "device": "cpu", "activation_layers": [1, -1]},
              "less": {"max_length": 64, "device": "cpu", "proj_dim": 32, "n_target": 4, "flush_every": 16},
              "data": {"shapes": {"seed": 0, "image_size": 32, "max_objects": 3}}}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws, root


def _args(ws, images, model, out):
    return ["--params", str(ws / "params.yaml"), "--records", str(ws / "records.jsonl"), "--image-dir", str(images),
            "--model", str(model), "--out", str(out), "--no-progress"]


def test_ifd_stage_scores_every_uid_and_writes_activations(workspace, tiny_llava_dir):
    from stages.ifd import main

    ws, images = workspace
    assert main(_args(ws, images, tiny_llava_dir, ws / "ifd")) == 0
    table = pd.read_parquet(ws / "ifd" / "scores.parquet")
    assert table["uid"].tolist() == list(range(40))
    assert np.isfinite(table["ifd"]).all() and (table["ifd"] > 0).all()
    np.testing.assert_allclose(table["ifd"], table["loss_conditioned"] / table["loss_answer"])
    acts = np.load(ws / "ifd" / "activations.npy")
    assert acts.shape[0] == 40 and np.isfinite(acts).all()
    half = acts.shape[1] // 2
    np.testing.assert_allclose(np.linalg.norm(acts[:, :half], axis=1), 1.0, rtol=1e-4)
    metrics = yaml.safe_load((ws / "ifd" / "metrics.json").read_text())
    assert metrics["model_passes"] == 2 and metrics["wall_s"] > 0


def test_less_stage_scores_every_uid_against_a_generated_target_set(workspace, tiny_llava_dir):
    from stages.less import main

    ws, images = workspace
    assert main(_args(ws, images, tiny_llava_dir, ws / "less")) == 0
    table = pd.read_parquet(ws / "less" / "scores.parquet")
    assert table["uid"].tolist() == list(range(40))
    assert table["less"].between(-1, 1).all() and table["less"].std() > 0
    metrics = yaml.safe_load((ws / "less" / "metrics.json").read_text())
    assert metrics["n_target"] == 4 and metrics["model_passes"] == 1 and metrics["n_params"] > 0
