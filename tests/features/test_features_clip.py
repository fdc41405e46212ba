from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from selfilter.data.records import conversation_text, load_image
from selfilter.features import clip


def _extract(pool, clip_dir, work_dir, **kw):
    model, processor = clip.load_clip(str(clip_dir), "cpu", torch.float32)
    items = clip.records_to_items(pool["records"])
    written = clip.extract_shards(items, pool["image_dir"], work_dir, model=model, processor=processor,
                                  device="cpu", progress=False, **kw)
    return written, items, model, processor


def _merge(pool, work_dir, out, shard_size):
    return clip.merge_shards(work_dir, len(pool["records"]), shard_size, out / "clip.npy", out / "scores.parquet")


def test_shapes_normalisation_and_text_only(pool, clip_dir, tmp_path):
    _extract(pool, clip_dir, tmp_path / "w", batch_size=3, shard_size=4)
    res = _merge(pool, tmp_path / "w", tmp_path, 4)
    feats = np.load(tmp_path / "clip.npy", allow_pickle=False, mmap_mode="r")
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    n, d2 = feats.shape
    assert (n, feats.dtype) == (7, np.float32) and d2 == res.dim and d2 % 2 == 0
    img, txt = feats[:, : d2 // 2], feats[:, d2 // 2:]
    assert list(scores["uid"]) == [r["uid"] for r in pool["records"]]
    assert list(scores.columns) == clip.SCORE_COLUMNS
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    has = scores["has_image"].to_numpy()
    assert list(has) == [True] * 5 + [False, True]
    np.testing.assert_allclose(np.linalg.norm(img[has], axis=1), 1.0, atol=1e-5)
    assert not img[~has].any()  # text-only: zero image half, score 0
    np.testing.assert_allclose(scores["clip_score"], (img * txt).sum(1), atol=1e-6)
    assert scores.loc[5, "clip_score"] == 0.0
    assert list(scores["text_truncated"]) == [False] * 6 + [True]
    assert (res.n_truncated, res.n_text_only, res.has_image_reward) == (1, 1, False)


def test_batched_equals_one_at_a_time_reference(pool, clip_dir, tmp_path):
    _, items, model, processor = _extract(pool, clip_dir, tmp_path / "w", batch_size=7, shard_size=7)
    _merge(pool, tmp_path / "w", tmp_path, 7)
    feats = np.load(tmp_path / "clip.npy")
    max_len = clip.text_max_length(model)
    for row, item in enumerate(items):
        if item.image is None:
            continue
        # The reference way: one record at a time, straight through the processor.
        pix = processor.image_processor(load_image(pool["image_dir"], item.image), return_tensors="pt")["pixel_values"]
        ids = processor.tokenizer(conversation_text(pool["records"][row]["conversations"]),
                                  truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            i = model.get_image_features(pixel_values=pix).pooler_output[0]
            t = model.get_text_features(**ids).pooler_output[0]
        ref = torch.cat([i / i.norm(), t / t.norm()]).numpy()
        np.testing.assert_allclose(feats[row], ref, atol=1e-5)


def test_worker_split_resume_and_deterministic_merge(pool, clip_dir, tmp_path):
    _extract(pool, clip_dir, tmp_path / "full", batch_size=2, shard_size=2)
    _merge(pool, tmp_path / "full", tmp_path / "a", 2)

    work = tmp_path / "split"
    w0, *_ = _extract(pool, clip_dir, work, batch_size=2, shard_size=2, shard_index=0, num_shards=2)
    assert w0 == [0, 2]
    with pytest.raises(ValueError, match="2 of 4 shards are not finished"):
        _merge(pool, work, tmp_path / "b", 2)
    w1, *_ = _extract(pool, clip_dir, work, batch_size=2, shard_size=2, shard_index=1, num_shards=2)
    assert w1 == [1, 3]
    # An interrupted run: shard 2's marker is missing, so only shard 2 is recomputed.
    (work / "shard-000002.done.json").unlink()
    again, *_ = _extract(pool, clip_dir, work, batch_size=2, shard_size=2)
    assert again == [2]
    assert _extract(pool, clip_dir, work, batch_size=2, shard_size=2)[0] == []
    _merge(pool, work, tmp_path / "b", 2)
    np.testing.assert_array_equal(np.load(tmp_path / "a/clip.npy"), np.load(tmp_path / "b/clip.npy"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a/scores.parquet"),
                                  pd.read_parquet(tmp_path / "b/scores.parquet"))


def test_dataloader_workers(pool, clip_dir, tmp_path):
    _extract(pool, clip_dir, tmp_path / "w0", batch_size=3, shard_size=7)
    _extract(pool, clip_dir, tmp_path / "w1", batch_size=3, shard_size=7, num_workers=1)
    np.testing.assert_allclose(np.load(tmp_path / "w0/shard-000000.npy"),
                               np.load(tmp_path / "w1/shard-000000.npy"), atol=1e-6)


def test_bad_image_names_the_record(pool, clip_dir, tmp_path):
    (pool["image_dir"] / "images/3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"uid=3: cannot read image"):
        _extract(pool, clip_dir, tmp_path / "w", batch_size=7, shard_size=7)


def test_dtype_resolution():
    assert clip.resolve_dtype("auto", "cpu") == torch.float32
    assert clip.resolve_dtype("auto", "cuda") == torch.bfloat16
    assert clip.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
