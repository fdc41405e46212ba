"""The answer-only fine-tuning loss against an independent float64 reference on the full logits."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from selfilter.data.encode import collate
from selfilter.models.loading import load_vlm, trainable_parameters
from selfilter.training.answer_loss import AnswerLoss
from selfilter.training.loop import model_inputs


def reference_loss(vlm, batch) -> torch.Tensor:
    """Slow and literal: every (row, position) whose next token is supervised, -log softmax of
    the model's own full logits there, in float64, averaged over those positions."""
    logits = vlm(**model_inputs(batch, "cpu")).logits.double()
    labels = batch["labels"]
    terms = []
    for i in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[i, t + 1])
            if y != -100:
                terms.append(-torch.log_softmax(logits[i, t], dim=-1)[y])
    return torch.stack(terms).mean() if terms else logits.sum() * 0


@pytest.fixture()
def model_and_batch(tiny_llava_dir, encoded_pool):
    dataset, encoder = encoded_pool
    vlm, _ = load_vlm(tiny_llava_dir)
    vlm.train()
    batch = collate([dataset[i] for i in range(16)], encoder.pad_token_id)  # text-only rows included
    return vlm, batch


def _grads(vlm) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None}


def test_loss_and_gradients_equal_the_full_logits_reference(model_and_batch):
    vlm, batch = model_and_batch
    trainable_parameters(vlm, freeze_vision=True)
    answer = AnswerLoss(vlm)
    loss = answer(labels=batch["labels"], **model_inputs(batch, "cpu"))
    assert answer.answer_only is True  # the fast path was taken, not the fallback
    loss.backward()
    fast = _grads(vlm)
    vlm.zero_grad(set_to_none=True)
    ref = reference_loss(vlm, batch)
    ref.backward()
    slow = _grads(vlm)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5)
    assert fast.keys() == slow.keys() and len(fast) > 10
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name].to(fast[name].dtype), rtol=1e-3, atol=1e-6, msg=name)


def test_only_supervised_positions_reach_the_output_embedding(model_and_batch):
    vlm, batch = model_and_batch
    rows = []
    vlm.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    answer = AnswerLoss(vlm)
    answer(labels=batch["labels"], **model_inputs(batch, "cpu"))  # first call: the check, then the loss
    n_supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert rows[-1] == (n_supervised, vlm.config.text_config.hidden_size)
    assert n_supervised < 0.5 * batch["labels"].numel()  # a real saving on this batch


def test_logits_that_are_not_the_head_of_the_hidden_states_fall_back_to_the_full_logits(model_and_batch, caplog):
    vlm, batch = model_and_batch
    own_forward = vlm.forward

    def soft_capped(*args, **kwargs):  # e.g. Gemma-style logit soft-capping: not lm_head(hidden)
        out = own_forward(*args, **kwargs)
        out.logits = 5.0 * torch.tanh(out.logits / 5.0)
        return out

    vlm.forward = soft_capped
    answer = AnswerLoss(vlm)
    with caplog.at_level(logging.INFO, logger="selfilter.training.answer_loss"):
        loss = answer(labels=batch["labels"], **model_inputs(batch, "cpu"))
    assert answer.answer_only is False
    assert "training on the full logits" in caplog.text
    assert math.isclose(loss.item(), reference_loss(vlm, batch).item(), rel_tol=1e-5)


def test_a_batch_without_supervised_tokens_gives_zero_and_leaves_the_choice_open(model_and_batch):
    vlm, batch = model_and_batch
    labels = torch.full_like(batch["labels"], -100)
    answer = AnswerLoss(vlm)
    loss = answer(labels=labels, **model_inputs(batch, "cpu"))
    loss.backward()
    assert loss.item() == 0.0 and answer.answer_only is None
    answer(labels=batch["labels"], **model_inputs(batch, "cpu"))
    assert answer.answer_only is True


def test_finetune_loss_option_chooses_the_path_and_both_train_the_same_first_step(tiny_llava_dir, encoded_pool,
                                                                                   accelerator):
    from selfilter.training.finetune import finetune

    dataset, encoder = encoded_pool
    first = {}
    for loss in ("full_logits", "answer_only"):
        vlm, _ = load_vlm(tiny_llava_dir)
        result = finetune(vlm, dataset, encoder.pad_token_id, accelerator=accelerator, num_steps=2, lr=1e-3,
                          batch_size=8, seed=0, progress=False, loss=loss)
        first[loss] = result.log[0]["loss"]
    assert math.isclose(first["full_logits"], first["answer_only"], rel_tol=1e-5)
    with pytest.raises(ValueError, match="answer_only"):
        finetune(load_vlm(tiny_llava_dir)[0], dataset, encoder.pad_token_id, accelerator=accelerator, num_steps=1,
                 lr=1e-3, progress=False, loss="typo")
