"""selfilter_llava_hf's batched generate_until against lmms-eval's own batch-1 loop (llava_hf's,
inherited unchanged) - the reference shares no code with the batched path.

Float64 weights: left padding changes only the order of float additions, so in float64 the two
paths must give the same text for every question; rows of one batch stop at different lengths
(an end-of-sequence token chosen from what the model really generates) and have prompts of
different lengths.
"""
from __future__ import annotations

import random

import PIL.Image
import pytest
from lmms_eval.api.instance import Instance

from selfilter.evaluation.llava_model import SelfilterLlavaHf

pytestmark = pytest.mark.slow


def _instance(args) -> Instance:
    return Instance("generate_until", args, idx=0, metadata={"task": "t", "doc_id": args[3], "repeats": 1})


def _requests(n: int, max_new_tokens: int, seed: int = 0):
    rng = random.Random(seed)
    words = ["How", "many", "red", "circles", "squares", "blue", "are", "there", "in", "the", "picture", "left"]
    docs, requests = {}, []
    for i in range(n):
        colour = tuple(rng.randrange(256) for _ in range(3))
        docs[i] = {"image": PIL.Image.new("RGB", (32, 32), colour)}
        question = " ".join(rng.choice(words) for _ in range(rng.randint(2, 14))) + "?"
        kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0, "until": ["\n\n"]}
        if i % 7 == 3:  # a second generation setting: its own group of batches
            kwargs = {"max_new_tokens": max_new_tokens // 2 + 1, "temperature": 0}
        args = (question, kwargs, lambda doc: [doc["image"]], i, "t", "test")
        requests.append(_instance(args))
    return docs, requests


def _model(tiny_llava_dir, batch_size: int) -> SelfilterLlavaHf:
    return SelfilterLlavaHf(pretrained=str(tiny_llava_dir), device="cpu", device_map="cpu", dtype="float64",
                            batch_size=batch_size)


def _generate(lm, docs, requests):
    lm.task_dict = {"t": {"test": docs}}
    # gen kwargs dicts are popped from by llava_hf: give each call its own copies
    fresh = [_instance((a[0], dict(a[1]), *a[2:])) for a in (r.args for r in requests)]
    return lm.generate_until(fresh)


def test_batched_generation_equals_llava_hf_batch_one(tiny_llava_dir):
    docs, requests = _requests(23, max_new_tokens=10)
    one, many = _model(tiny_llava_dir, 1), _model(tiny_llava_dir, 5)
    reference = _generate(one, docs, requests)
    assert len(set(reference)) > 5  # the prompts really lead to different answers
    # stop where this model really stops sometimes: its commonest second generated token as
    # end-of-sequence, so rows of one batch finish at different steps
    ids = [one.tokenizer.encode(t, add_special_tokens=False) for t in reference]
    seconds = [x[1] for x in ids if len(x) > 2]
    eos = max(set(seconds), key=seconds.count)
    for lm in (one, many):
        lm.tokenizer.eos_token = lm.tokenizer.convert_ids_to_tokens(eos)
    reference = _generate(one, docs, requests)
    lengths = {len(one.tokenizer.encode(t, add_special_tokens=False)) for t in reference}
    assert len(lengths) > 1, "every answer stopped at the same length: the test would not see early stops"
    assert _generate(many, docs, requests) == reference


def test_batch_size_one_is_llava_hf_own_loop(tiny_llava_dir, monkeypatch):
    lm = _model(tiny_llava_dir, 1)
    monkeypatch.setattr(SelfilterLlavaHf, "_generate_batch", lambda *a, **k: pytest.fail("batched path used"))
    docs, requests = _requests(3, max_new_tokens=2)
    assert len(_generate(lm, docs, requests)) == 3


def test_request_without_one_image_takes_the_batch_one_path(tiny_llava_dir):
    docs, requests = _requests(6, max_new_tokens=4)
    docs[2] = {"image": None}
    two = requests[2].args
    requests[2] = _instance((two[0], two[1], lambda doc: [doc["image"]] * 2, *two[3:]))
    docs[2]["image"] = PIL.Image.new("RGB", (32, 32), (5, 5, 5))  # two images in one request
    one, many = _model(tiny_llava_dir, 1), _model(tiny_llava_dir, 4)
    assert _generate(many, docs, requests) == _generate(one, docs, requests)


def test_batch_size_needs_the_batching_model():
    from selfilter.evaluation.config import EvaluateConfig

    with pytest.raises(ValueError, match="needs model selfilter_llava_hf"):
        EvaluateConfig(model="llava_hf", batch_size=8)
    assert EvaluateConfig(model="llava_hf", batch_size=1).batch_size == 1
