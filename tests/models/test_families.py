"""A second, current model family through the generic classes: a tiny random Qwen2-VL.

Shows the pipeline is not LLaVA-only (PAPER.md's second testbed was MiniGPT-4). The model is built
here with no download - a byte-level BPE trained with `tokenizers` carrying Qwen's ChatML special
tokens, Qwen2-VL's image processor from arguments, a randomly initialised
Qwen2VLForConditionalGeneration - saved, loaded back with AutoModelForImageTextToText /
AutoProcessor, and run through the project's ChatEncoder and a Self-Filter stage-1 step
(`self_filter_loss` + a score net, LM + projector trained, vision tower frozen).
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (AutoModelForImageTextToText, AutoProcessor, PreTrainedTokenizerFast,  # noqa: E402
                          Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                          Qwen2VLProcessor, Qwen2VLVideoProcessor)

from selfilter.data.encode import IGNORE_INDEX, ChatEncoder, collate  # noqa: E402
from selfilter.training import self_filter_loss  # noqa: E402

# Qwen2-VL's special tokens (ChatML turns + vision markers); the processor looks them up by name.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
# ChatML as the Qwen2-VL family renders it: string content verbatim; structured content with an
# image part gets the vision markers around the image pad (which the processor expands).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE = 32  # px; patch 8 -> 4x4 patches -> 2x2 merged = 4 image tokens


def _image(color) -> Image.Image:
    im = Image.new("RGB", (IMAGE, IMAGE), (128, 128, 128))
    ImageDraw.Draw(im).rectangle((4, 4, 20, 20), fill=color)
    return im


RECORDS = [
    {"uid": 0, "conversations": [{"from": "human", "value": "<image>\nWhat colour is the square?"},
                                 {"from": "gpt", "value": "It is red."}], "_image": _image((220, 30, 30))},
    {"uid": 1, "conversations": [{"from": "human", "value": "What shape is shown?\n<image>"},
                                 {"from": "gpt", "value": "A square."},
                                 {"from": "human", "value": "Is it blue?"},
                                 {"from": "gpt", "value": "Yes, it is blue."}], "_image": _image((30, 60, 220))},
]


def build_tiny_qwen2vl():
    """(model, processor) of a ~100k-parameter Qwen2-VL, built offline."""
    corpus = [t["value"] for r in RECORDS for t in r["conversations"]] * 20 + ["user assistant system"] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=CHAT_TEMPLATE, model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    image_processor = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2,
                                            min_pixels=IMAGE * IMAGE, max_pixels=2 * IMAGE * IMAGE)
    # The family's processor requires a video processor too (unused here), same geometry.
    video_processor = Qwen2VLVideoProcessor(patch_size=8, merge_size=2, temporal_patch_size=2,
                                            min_pixels=IMAGE * IMAGE, max_pixels=2 * IMAGE * IMAGE)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen2VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 512,
                     # head_dim 8 -> 4 rotary frequencies split over (time, height, width)
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                     "pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config).eval(), processor


@pytest.fixture(scope="module")
def saved_family(tmp_path_factory):
    model, processor = build_tiny_qwen2vl()
    out = tmp_path_factory.mktemp("tiny-qwen2vl")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out, model


def test_tiny_qwen2vl_round_trips_through_the_auto_classes(saved_family):
    path, original = saved_family
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLProcessor"
    for (name, a), b in zip(original.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    # generation runs end to end from the processor's own chat template
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, images=RECORDS[0]["_image"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def _family_batch(processor):
    """The family's own encoding: structured messages through its chat template and processor;
    labels = the answer (everything after the generation prompt), the rest -100."""
    rows = []
    for r in RECORDS:
        question, answer = r["conversations"][0]["value"].replace("<image>", "").strip(), r["conversations"][1]["value"]
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        full = prompt + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        p_ids = processor(text=processor.apply_chat_template(prompt, add_generation_prompt=True),
                          images=r["_image"], return_tensors="pt")["input_ids"][0]
        enc = processor(text=processor.apply_chat_template(full), images=r["_image"], return_tensors="pt")
        labels = enc["input_ids"][0].clone()
        labels[: len(p_ids)] = IGNORE_INDEX
        rows.append((enc, labels))
    length = max(len(labels) for _, labels in rows)
    pad = processor.tokenizer.pad_token_id

    def padded(t, value):
        return torch.cat([t, torch.full((length - len(t),), value, dtype=t.dtype)])

    batch = {
        "input_ids": torch.stack([padded(e["input_ids"][0], pad) for e, _ in rows]),
        "attention_mask": torch.stack([padded(e["attention_mask"][0], 0) for e, _ in rows]),
        "mm_token_type_ids": torch.stack([padded(e["mm_token_type_ids"][0], 0) for e, _ in rows]),
        "pixel_values": torch.cat([e["pixel_values"] for e, _ in rows]),
        "image_grid_thw": torch.cat([e["image_grid_thw"] for e, _ in rows]),
    }
    return batch, torch.stack([padded(labels, IGNORE_INDEX) for _, labels in rows])


def test_stage1_step_on_the_family(saved_family):
    """One Self-Filter co-training step with the project's loss: LM + projector + score net get
    gradients, the frozen vision tower none; equal weights give plain token-mean CE."""
    path, _ = saved_family
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    inputs, labels = _family_batch(processor)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * 4  # 4x4 patches merged 2x2
    visual = model.model.visual
    for p in visual.parameters():
        p.requires_grad_(False)
    for p in visual.merger.parameters():  # Qwen2-VL's projector lives in the vision module
        p.requires_grad_(True)
    score_net = torch.nn.Linear(3, 1, bias=False)
    features = torch.randn(len(RECORDS), 3)
    trainable = [p for p in model.parameters() if p.requires_grad] + list(score_net.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)

    logits = model(**inputs).logits
    loss = self_filter_loss(logits, labels, score_net(features))
    assert torch.isfinite(loss)
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        assert torch.allclose(self_filter_loss(logits, labels, torch.zeros(len(RECORDS))), ref, atol=1e-5)
    loss.backward()
    assert score_net.weight.grad is not None and score_net.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad is not None and visual.merger.mlp[0].weight.grad is not None
    assert all(p.grad is None for p in visual.blocks.parameters())
    optimizer.step()


def test_chat_encoder_encodes_the_family(saved_family):
    processor = AutoProcessor.from_pretrained(saved_family[0])
    encoder = ChatEncoder(processor, max_length=256)
    # the image is written as the family's template writes an image part (vision markers)
    assert encoder.image_text == "<|vision_start|><|image_pad|><|vision_end|>"
    samples = [encoder.encode(r["conversations"], r["_image"], record=r) for r in RECORDS]
    tok = processor.tokenizer
    for record, s in zip(RECORDS, samples):
        supervised = tok.decode(s["labels"][s["labels"] != IGNORE_INDEX])
        answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
        assert supervised == "<|im_end|>".join(answers) + "<|im_end|>"  # answers + end of turn
        assert set(s) == {"input_ids", "labels", "attention_mask", "mm_token_type_ids", "pixel_values",
                          "image_grid_thw"}
        assert torch.equal(s["mm_token_type_ids"].bool(), s["input_ids"] == processor.image_token_id)
    # the prompt is token for token what the family's own typed chat template + processor give
    question = RECORDS[0]["conversations"][0]["value"].replace("<image>\n", "")
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                         {"type": "text", "text": question}]}],
                                           add_generation_prompt=True)
    eval_ids = processor(text=prompt, images=RECORDS[0]["_image"], return_tensors="pt")["input_ids"][0]
    assert torch.equal(samples[0]["input_ids"][: len(eval_ids)], eval_ids)
    assert (samples[0]["labels"] != IGNORE_INDEX).nonzero()[0].item() == len(eval_ids)

    model = AutoModelForImageTextToText.from_pretrained(saved_family[0])
    batch = collate(samples, encoder.pad_token_id)
    length = max(len(s["input_ids"]) for s in samples)
    assert batch["mm_token_type_ids"].shape == (2, length) and batch["image_grid_thw"].shape == (2, 3)
    assert batch["mm_token_type_ids"][0, len(samples[0]["input_ids"]):].eq(0).all()  # padded with 0
    logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "index")}).logits
    assert torch.isfinite(self_filter_loss(logits, batch["labels"], torch.zeros(len(RECORDS))))


def test_answer_only_fine_tune_loss_on_the_family(saved_family):
    """The fine-tuning loss takes the answer-only path on Qwen2-VL too (base model + lm_head),
    with the value of the family's own full-logit cross-entropy."""
    from selfilter.training.answer_loss import AnswerLoss

    path, _ = saved_family
    model = AutoModelForImageTextToText.from_pretrained(path)
    inputs, labels = _family_batch(AutoProcessor.from_pretrained(path))
    answer = AnswerLoss(model)
    loss = answer(labels=labels, **inputs)
    assert answer.answer_only is True
    with torch.no_grad():
        logits = model(**inputs).logits
        ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                                                labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
