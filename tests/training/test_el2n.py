"""EL2N: a sample with no supervised token (an empty answer) gets a defined score, never NaN."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfilter.training.el2n import el2n_scores, fill_unscored, score_el2n


def test_fill_unscored_gives_the_pool_mean():
    np.testing.assert_allclose(fill_unscored(np.array([0.2, np.nan, 0.4])), [0.2, 0.3, 0.4])
    scores = np.array([0.1, 0.5])
    np.testing.assert_array_equal(fill_unscored(scores), scores)
    with pytest.raises(ValueError, match="none of the 2 samples"):
        fill_unscored(np.array([np.nan, np.nan]))


def test_empty_answer_gets_the_pool_mean(tiny_llava_dir, pool, accelerator):
    from selfilter.data.encode import IGNORE_INDEX, ChatEncoder, EncodedDataset
    from selfilter.models.loading import load_vlm

    root, records = pool
    empty = {**records[0], "uid": 99, "conversations": [records[0]["conversations"][0], {"from": "gpt", "value": ""}]}
    records = [*records[:7], empty]
    model, processor = load_vlm(tiny_llava_dir)
    dataset = EncodedDataset(records, root, ChatEncoder(processor, max_length=64), progress=False)
    # The cause: an empty answer supervises nothing, not even the end-of-turn token.
    assert (dataset[7]["labels"] == IGNORE_INDEX).all()
    pad = processor.tokenizer.pad_token_id
    raw = score_el2n(model, dataset, pad, device="cpu", batch_size=3, progress=False)
    assert np.isnan(raw[7]) and np.isfinite(raw[:7]).all()

    mean, per_seed = el2n_scores(lambda: load_vlm(tiny_llava_dir)[0], dataset, pad, accelerator=accelerator,
                                 seeds=[0, 1], train_epochs=0.5, lr=1e-3, batch_size=4, score_batch_size=3,
                                 progress=False)
    assert np.isfinite(mean).all() and np.isfinite(per_seed).all()
    for k in range(2):
        assert per_seed[k, 7] == pytest.approx(per_seed[k, :7].mean())
    torch.testing.assert_close(torch.from_numpy(mean), torch.from_numpy(per_seed.mean(axis=0)))
