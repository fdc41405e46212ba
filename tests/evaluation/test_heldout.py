"""The held-out benchmark (selfilter_heldout_ll / selfilter_heldout_short): scoring functions on
hand-worked cases, the document builder, and real lmms-eval runs on a tiny LLaVA checked against
an independent slow reference computed directly with the Hugging Face model."""
from __future__ import annotations

import json
import math
import re

import pytest

from selfilter.evaluation.heldout import (
    LL_TASK,
    SHORT_TASK,
    answer_token_count,
    build_heldout_datasets,
    exact_match,
    first_exchange,
    heldout_docs,
    mean_nll,
    parse_loglikelihood,
    prob_of_nll,
    token_f1,
)

TASKS = [LL_TASK, SHORT_TASK]


# --------------------------------------------------------------------------- pure scores

@pytest.mark.parametrize("pred, ref, em, f1", [
    ("Red.", "red", 1.0, 1.0),                         # case and punctuation
    ("the red circle", "A red circle.", 1.0, 1.0),     # articles
    ("three", "3", 1.0, 1.0),                          # number words
    ("red and blue", "blue and red", 0.0, 1.0),        # same bag of words, other order
    ("red", "red and blue", 0.0, 0.5),                 # p=1, r=1/3 -> 2*(1/3)/(4/3) = 0.5
    ("a big red big square", "big square", 0.0, 2 * (2 / 4) * 1 / (2 / 4 + 1)),  # multiset: p=2/4, r=2/2
    ("big big", "big", 0.0, 2 * 0.5 * 1 / 1.5),        # a repeated word counts once per occurrence in both
    ("green", "red", 0.0, 0.0),
    ("", "red", 0.0, 0.0),
    ("...", "", 1.0, 1.0),                             # both empty after normalising
])
def test_exact_match_and_token_f1_hand_worked(pred, ref, em, f1):
    assert exact_match(pred, ref) == em
    assert token_f1(pred, ref) == pytest.approx(f1)


def test_parse_loglikelihood_reads_lmms_eval_0_7_3_strings_exactly():
    value = 6.193380832672119
    assert parse_loglikelihood(str((value, False))) == (value, False)  # what 0.7.3 hands over
    assert parse_loglikelihood((value, True)) == (value, True)
    with pytest.raises(ValueError, match="expected a log-likelihood"):
        parse_loglikelihood("7.0")


def test_answer_prob_is_exp_of_the_mean_nll():
    nlls = [0.5, 1.5, 4.0]
    assert mean_nll(nlls) == pytest.approx(2.0)
    assert prob_of_nll(nlls) == pytest.approx(math.exp(-2.0))  # not mean(exp(-x)) = 0.2823...
    assert 0.0 < prob_of_nll(nlls) < 1.0 and math.isnan(mean_nll([]))


def test_first_exchange_removes_the_placeholder_wherever_it_stands():
    conv = [{"from": "human", "value": "What digit?\n<image>"}, {"from": "gpt", "value": "7"},
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."}]
    assert first_exchange({"conversations": conv}) == ("What digit?", "7")
    conv[0]["value"] = "<image>\nWhat digit?"
    assert first_exchange({"conversations": conv}) == ("What digit?", "7")
    assert first_exchange({"conversations": [{"from": "gpt", "value": "x"}]}) is None


def test_heldout_docs_selects_and_counts(tiny_llava_dir):
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(str(tiny_llava_dir)).tokenizer

    def rec(uid, answer, image=True):
        r = {"uid": uid, "id": f"r{uid}", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": answer}]}
        if image:
            r["image"] = f"{uid}.png"
        return r

    records = [rec(0, "Red."), rec(1, "one two three four five"), rec(2, "one two three four five six"),
               rec(3, "Red.", image=False), rec(4, "  "),
               {"uid": 5, "id": "r5", "image": "5.png", "conversations": [{"from": "gpt", "value": "x"}]}]
    ll, short, counts = heldout_docs(records, tok, max_short_words=5)
    assert [d["uid"] for d in ll] == [0, 1, 2] and [d["uid"] for d in short] == [0, 1]
    assert counts == {"records": 6, "text_only": 1, "no_exchange": 1, "empty_answer": 1, LL_TASK: 3, SHORT_TASK: 2}
    # answer_tokens: the assistant turn the template renders, counted by hand here
    prompt = "USER: <image>\nWhat is it? ASSISTANT:"
    assert tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is it?"}], tokenize=False,
                                   add_generation_prompt=True) == prompt
    hand = len(tok(prompt + " Red." + tok.eos_token)["input_ids"]) - len(tok(prompt)["input_ids"])
    assert ll[0]["answer_tokens"] == hand == answer_token_count(tok, "What is it?", "Red.")
    assert ll[0]["answer_tokens"] >= 2  # the answer's token(s) and the end-of-turn token
    with pytest.raises(ValueError, match="max_short_words"):
        heldout_docs(records, tok, max_short_words=0)


def test_build_refuses_an_empty_task(tmp_path, tiny_llava_dir):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"uid": 0, "id": "a", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "a long answer of many words here"}]}]
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="selfilter_heldout_short would have no documents"):
        build_heldout_datasets(tmp_path / "heldout.jsonl", tmp_path, tmp_path / "out", TASKS, tiny_llava_dir)
    assert build_heldout_datasets(tmp_path / "heldout.jsonl", tmp_path, tmp_path / "out", ["shapes_count"],
                                  tiny_llava_dir) == {}
    rows[0]["image"] = "gone.png"
    (tmp_path / "heldout.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(FileNotFoundError, match=r"heldout.jsonl:1: uid=0: image not found"):
        build_heldout_datasets(tmp_path / "heldout.jsonl", tmp_path, tmp_path / "out", [LL_TASK], tiny_llava_dir)


# --------------------------------------------------------------------------- real lmms-eval vs a slow reference

# The tiny checkpoint's chat template, written out here (not rendered by the code under test).
def _prompt(question: str) -> str:
    return f"USER: <image>\n{question} ASSISTANT:"


def _ref_normalize(text: str) -> list[str]:
    numbers = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
    words = re.sub(r"[^0-9a-z]+", " ", text.lower()).split()
    return [numbers.get(w, w) for w in words if w not in ("a", "an", "the")]


def _ref_f1(pred: str, ref: str) -> float:
    p, r = _ref_normalize(pred), _ref_normalize(ref)
    if not p or not r:
        return float(p == r)
    remaining, common = list(r), 0
    for w in p:
        if w in remaining:
            remaining.remove(w)
            common += 1
    return 0.0 if common == 0 else 2 * common / (len(p) + len(r))


class Reference:
    """The HF model used directly: NLL by one forward pass per answer token (teacher forcing,
    step by step), greedy answers by an argmax loop. Slow on purpose; shares no code with the task."""

    def __init__(self, checkpoint):
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.torch = torch
        self.model = LlavaForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
        self.processor = AutoProcessor.from_pretrained(str(checkpoint))
        self.eos = self.processor.tokenizer.eos_token

    def _inputs(self, text, image):
        return self.processor(text=[text], images=[image], return_tensors="pt")

    def answer_nll(self, image, question, answer) -> tuple[float, int]:
        torch = self.torch
        prompt = _prompt(question)
        full = self._inputs(f"{prompt} {answer}{self.eos}", image)
        n_prompt = self._inputs(prompt, image)["input_ids"].shape[1]
        ids = full["input_ids"][0]
        nll = []
        with torch.no_grad():
            for k in range(n_prompt, len(ids)):
                out = self.model(input_ids=ids[None, :k], attention_mask=torch.ones(1, k, dtype=torch.long),
                                 pixel_values=full["pixel_values"])
                nll.append(-torch.log_softmax(out.logits[0, -1], -1)[ids[k]].item())
        return sum(nll) / len(nll), len(nll)

    def greedy(self, image, question, max_new_tokens=16) -> str:
        torch = self.torch
        inputs = self._inputs(_prompt(question), image)
        ids = inputs["input_ids"][0].tolist()
        eos_id = self.processor.tokenizer.eos_token_id
        new = []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                x = torch.tensor([ids + new])
                logits = self.model(input_ids=x, attention_mask=torch.ones_like(x),
                                    pixel_values=inputs["pixel_values"]).logits[0, -1]
                token = int(logits.argmax())
                if token == eos_id:
                    break
                new.append(token)
        return self.processor.tokenizer.decode(new, skip_special_tokens=True)


@pytest.fixture(scope="module")
def user_heldout(tmp_path_factory):
    """Held-out records of the generated non-shapes dataset, through the real ingest, and a tiny
    LLaVA whose tokenizer was trained on that dataset's text."""
    from userdata import make_llava_dataset

    from selfilter.data.ingest import ingest_records, read_annotations
    from selfilter.data.records import conversation_text
    from selfilter.models.tiny import build_tiny_llava

    root = tmp_path_factory.mktemp("userdata")
    info = make_llava_dataset(root / "data", n=60, seed=1)
    kept = ingest_records(read_annotations(info["annotations"]), info["image_dir"], progress=False).kept
    kept = [r for r in kept if all(t["value"].strip() for t in r["conversations"])]  # until ingest rejects them
    checkpoint = build_tiny_llava(root / "ckpt", texts=[conversation_text(r["conversations"]) for r in kept], seed=0)
    records = kept[:9]
    assert any("image" not in r for r in records)  # a text-only record, left out of the benchmark
    return info, records, checkpoint, root


@pytest.mark.slow
def test_heldout_tasks_match_the_slow_reference(user_heldout, tmp_path):
    from PIL import Image

    from selfilter.evaluation.lmms import LmmsEvaluator
    from selfilter.io import write_jsonl

    info, records, checkpoint, _ = user_heldout
    ref = Reference(checkpoint)
    records = json.loads(json.dumps(records))
    image_records = [r for r in records if "image" in r]
    # A random model's greedy answer is never a real one; so that exact match sees both outcomes,
    # every other record's first answer becomes the reference's own greedy answer.
    greedy = {}
    for j, r in enumerate(image_records):
        question = r["conversations"][0]["value"].replace("<image>", "").strip()
        image = Image.open(info["image_dir"] / r["image"]).convert("RGB")
        greedy[r["uid"]] = ref.greedy(image, question)
        if j % 2 == 0 and greedy[r["uid"]].strip():
            r["conversations"][1]["value"] = greedy[r["uid"]].strip()
    write_jsonl(tmp_path / "heldout.jsonl", records)
    files = build_heldout_datasets(tmp_path / "heldout.jsonl", info["image_dir"], tmp_path / "bench", TASKS,
                                   checkpoint, max_short_words=50)
    counts = json.loads((tmp_path / "bench" / "heldout_counts.json").read_text())
    assert counts["text_only"] == len(records) - len(image_records) >= 1
    assert counts[LL_TASK] == counts[SHORT_TASK] == len(image_records)

    ev = LmmsEvaluator(TASKS, "evaluation/tasks", data_files=files, model="selfilter_llava_hf",
                       cache_dir=tmp_path / "hf")
    metrics = ev.evaluate(checkpoint, tmp_path / "out")

    nlls, ems, f1s = {}, [], []
    for r in image_records:
        image = Image.open(info["image_dir"] / r["image"]).convert("RGB")
        question = r["conversations"][0]["value"].replace("<image>", "").strip()
        answer = r["conversations"][1]["value"].strip()
        nlls[r["uid"]], _ = ref.answer_nll(image, question, answer)
        ems.append(float(_ref_normalize(greedy[r["uid"]]) == _ref_normalize(answer)))
        f1s.append(_ref_f1(greedy[r["uid"]], answer))
    assert 0 < sum(ems) < len(ems)  # both outcomes present
    # per record: lmms-eval's doc_id is the row of the parquet file, written in record order
    samples = [json.loads(x) for x in (tmp_path / "out" / f"samples_{LL_TASK}.jsonl").read_text().splitlines()]
    got = [s["answer_nll"] for s in sorted(samples, key=lambda s: s["doc_id"])]
    assert got == pytest.approx([nlls[r["uid"]] for r in image_records], rel=1e-4, abs=1e-5)
    mean = sum(nlls.values()) / len(nlls)
    assert metrics[f"{LL_TASK}/answer_nll"] == pytest.approx(mean, rel=1e-4)
    assert metrics[f"{LL_TASK}/answer_prob"] == pytest.approx(math.exp(-mean), rel=1e-4)
    assert metrics[f"{SHORT_TASK}/exact_match"] == pytest.approx(sum(ems) / len(ems))
    assert metrics[f"{SHORT_TASK}/token_f1"] == pytest.approx(sum(f1s) / len(f1s))


@pytest.mark.slow
def test_a_benchmark_built_with_another_tokenizer_is_refused(user_heldout, tiny_llava_dir, tmp_path):
    """answer_tokens counted with one tokenizer, evaluated on a checkpoint with another: the model
    class refuses instead of scoring other tokens than the document's answer."""
    from selfilter.evaluation.lmms import LmmsEvaluator
    from selfilter.io import write_jsonl

    info, records, checkpoint, _ = user_heldout
    write_jsonl(tmp_path / "heldout.jsonl", records)
    files = build_heldout_datasets(tmp_path / "heldout.jsonl", info["image_dir"], tmp_path / "bench", [LL_TASK],
                                   tiny_llava_dir)  # the built-in-corpus tokenizer, not the checkpoint's
    ev = LmmsEvaluator([LL_TASK], "evaluation/tasks", data_files=files, model="selfilter_llava_hf",
                       cache_dir=tmp_path / "hf")
    with pytest.raises(ValueError, match="built with another tokenizer"):
        ev.evaluate(checkpoint, tmp_path / "out")
