"""Stage-1 co-training on the tiny LLaVA: it learns, scores every sample, and resumes exactly."""
from __future__ import annotations

import numpy as np
import torch

from selfilter.models.loading import load_vlm, vision_tower_of
from selfilter.training.loop import epoch_batches
from selfilter.training.stage1 import cotrain, difficulty_table

KW = dict(epochs=2, lr=3e-3, batch_size=8, progress=False, seed=0)


def features(n):
    return np.random.RandomState(0).uniform(-1, 1, (n, 3)).astype(np.float32)


def test_cotrain_learns_and_scores_every_sample(tiny_llava_dir, encoded_pool, accelerator):
    ds, enc = encoded_pool
    model, _ = load_vlm(tiny_llava_dir)
    tower_before = {k: v.clone() for k, v in vision_tower_of(model).state_dict().items()}
    out = cotrain(model, ds, features(len(ds)), enc.pad_token_id, accelerator=accelerator, **KW)
    assert out.train.finished and out.train.step == 10  # ceil(40 / 8) * 2
    losses = [r["loss"] for r in out.train.log]
    assert losses[-1] < losses[0]
    assert out.raw_scores.shape == (40,) and np.isfinite(out.raw_scores).all()
    w = out.score_net["linear.weight"].numpy()
    np.testing.assert_allclose(out.raw_scores, features(40) @ w[0], rtol=1e-5, atol=1e-6)
    for k, v in vision_tower_of(model).state_dict().items():
        assert torch.equal(v, tower_before[k]), f"vision tower changed: {k}"
    table = difficulty_table(np.arange(40), out.raw_scores)
    np.testing.assert_array_equal(table["difficulty"], -table["score_raw"])


def test_killed_run_resumes_to_the_same_result(tiny_llava_dir, encoded_pool, accelerator, tmp_path):
    ds, enc = encoded_pool
    feats = features(len(ds))
    full = cotrain(load_vlm(tiny_llava_dir)[0], ds, feats, enc.pad_token_id, accelerator=accelerator, **KW)
    ckpt = tmp_path / "run"
    part = cotrain(load_vlm(tiny_llava_dir)[0], ds, feats, enc.pad_token_id, accelerator=accelerator,
                   checkpoint_dir=ckpt, checkpoint_every=3, max_steps=7, **KW)
    assert part.train.step == 7 and not part.train.finished
    resumed = cotrain(load_vlm(tiny_llava_dir)[0], ds, feats, enc.pad_token_id, accelerator=accelerator,
                      checkpoint_dir=ckpt, checkpoint_every=3, **KW)
    assert resumed.train.resumed_from == 7 and resumed.train.finished
    assert [r["step"] for r in resumed.train.log] == list(range(1, 11))
    np.testing.assert_allclose([r["loss"] for r in resumed.train.log], [r["loss"] for r in full.train.log],
                               rtol=1e-5)
    np.testing.assert_allclose(resumed.raw_scores, full.raw_scores, rtol=1e-5, atol=1e-7)


def test_epoch_batches_cover_the_pool_once_and_split_across_ranks():
    one = epoch_batches(10, 3, epoch=0, seed=1)
    assert sorted(i for b in one for i in b) == list(range(10))
    assert epoch_batches(10, 3, epoch=0, seed=1) == one != epoch_batches(10, 3, epoch=1, seed=1)
    r0, r1 = (epoch_batches(10, 3, epoch=0, seed=1, rank=r, world=2) for r in (0, 1))
    assert len(r0) == len(r1) == 2 and all(len(b) == 3 for b in r0 + r1)
    assert set(i for b in r0 + r1 for i in b) == set(range(10))


def test_length_grouped_batches_cover_the_pool_and_pad_less():
    lengths = [int(x) for x in np.random.RandomState(0).randint(10, 200, 203)]
    plain = epoch_batches(203, 8, epoch=0, seed=0)
    grouped = epoch_batches(203, 8, epoch=0, seed=0, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(203)) and len(grouped) == len(plain) == 26
    assert [len(b) for b in grouped] == [8] * 25 + [3]
    padded = lambda batches: sum(max(lengths[i] for i in b) * len(b) for b in batches)  # noqa: E731
    assert padded(grouped) < 0.8 * padded(plain)
    assert epoch_batches(203, 8, epoch=0, seed=0, lengths=lengths) == grouped
