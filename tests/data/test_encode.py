"""ChatEncoder / collate / EncodedDataset against real HF processors built here (two templates).

The encoder needs only a processor, so these tests build a tokenizer + CLIP image processor +
LlavaProcessor from arguments: one with a Vicuna-style template (``</s>`` closes an answer, as in
LLaVA-1.5) and one ChatML-style (``<|im_end|>`` then a newline), to show nothing assumes one.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

from selfilter.data.encode import IGNORE_INDEX, ChatEncoder, EncodedDataset, EncodeError, collate

VICUNA = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
          "{% else %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["USER: What color is the circle? ASSISTANT: The circle is red.",
          "How many squares are there? There are 2 squares. Describe the image. yes no"] * 5
N_IMAGE_TOKENS = 16  # (32 px / patch 8)^2


def make_processor(template: str) -> LlavaProcessor:
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # Like Llama's tokenizer: BOS is added by the post-processor, not by the template.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<image>", "<|im_start|>", "<|im_end|>"])
    fast.chat_template = template
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=template)


@pytest.fixture(scope="module", params=["vicuna", "chatml"])
def processor(request):
    return make_processor(VICUNA if request.param == "vicuna" else CHATML)


CONV = [{"from": "human", "value": "<image>\nWhat color is the circle?"},
        {"from": "gpt", "value": "The circle is red."},
        {"from": "human", "value": "How many squares are there?"},
        {"from": "gpt", "value": "There are 2 squares."}]
IMAGE = Image.new("RGB", (40, 40), (200, 10, 10))


def supervised_text(tok, sample) -> list[str]:
    """The supervised tokens, decoded as contiguous runs."""
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    runs, cur = [], []
    for i, l in zip(ids, labels):
        if l != IGNORE_INDEX:
            assert l == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_answers_and_end_of_turn_are_the_only_supervised_tokens(processor):
    enc = ChatEncoder(processor)
    s = enc.encode(CONV, IMAGE)
    tok = processor.tokenizer
    end = "</s>" if "USER" in processor.chat_template else "<|im_end|>"
    assert [r.strip() for r in supervised_text(tok, s)] == [f"The circle is red.{end}", f"There are 2 squares.{end}"]
    assert s["attention_mask"].tolist() == [1] * len(s["input_ids"])
    assert s["pixel_values"].shape == (1, 3, 32, 32)
    image_id = tok.convert_tokens_to_ids("<image>")
    image_pos = (s["input_ids"] == image_id).nonzero().flatten()
    assert len(image_pos) == N_IMAGE_TOKENS
    assert (s["labels"][image_pos] == IGNORE_INDEX).all()


def test_ids_match_what_llava_hf_feeds_at_evaluation(processor):
    """Prompt part of the training ids == processor(apply_chat_template(..., generation prompt))."""
    enc = ChatEncoder(processor)
    s = enc.encode(CONV[:2], IMAGE)
    prompt = processor.tokenizer.apply_chat_template([{"role": "user", "content": CONV[0]["value"]}],
                                                     tokenize=False, add_generation_prompt=True)
    eval_ids = processor(text=prompt, images=IMAGE, return_tensors="pt")["input_ids"][0]
    assert torch.equal(s["input_ids"][: len(eval_ids)], eval_ids)
    first_supervised = (s["labels"] != IGNORE_INDEX).nonzero()[0].item()
    assert first_supervised == len(eval_ids)


def test_image_placeholder_is_added_when_missing(processor):
    enc = ChatEncoder(processor)
    conv = [{"from": "human", "value": "What color is the circle?"}, {"from": "gpt", "value": "Red."}]
    with_tag = [{"from": "human", "value": "<image>\nWhat color is the circle?"}, conv[1]]
    assert torch.equal(enc.encode(conv, IMAGE)["input_ids"], enc.encode(with_tag, IMAGE)["input_ids"])


def test_text_only_has_no_image_tokens_or_pixels(processor):
    enc = ChatEncoder(processor)
    s = enc.encode(CONV, None)
    assert "pixel_values" not in s
    assert (s["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum() == 0
    assert len(supervised_text(processor.tokenizer, s)) == 2


def test_truncation_from_the_end_never_cuts_the_image(processor):
    full = ChatEncoder(processor).encode(CONV, IMAGE)
    enc = ChatEncoder(processor, max_length=len(full["input_ids"]) - 5)
    s = enc.encode(CONV, IMAGE)
    assert torch.equal(s["input_ids"], full["input_ids"][:-5]) and torch.equal(s["labels"], full["labels"][:-5])
    assert enc.n_truncated == 1
    with pytest.raises(EncodeError, match="uid=7.*image tokens"):
        ChatEncoder(processor, max_length=10).encode(CONV, IMAGE, record={"uid": 7})


def test_two_images_are_an_error_naming_the_record(processor):
    conv = [{"from": "human", "value": "<image>\n<image>\nWhat?"}, {"from": "gpt", "value": "Red."}]
    with pytest.raises(EncodeError, match="uid=3"):
        ChatEncoder(processor).encode(conv, IMAGE, record={"uid": 3, "id": "x"})


def test_collate_pads_and_mixes_text_only_with_image_samples(processor, tmp_path):
    IMAGE.save(tmp_path / "a.png")
    records = [{"uid": 0, "image": "a.png", "conversations": CONV},
               {"uid": 1, "conversations": CONV[:2]},
               {"uid": 2, "image": "a.png", "conversations": CONV[:2]}]
    enc = ChatEncoder(processor)
    ds = EncodedDataset(records, tmp_path, enc, progress=False)
    lazy = EncodedDataset(records, tmp_path, enc, preencode=False)
    for i in range(3):
        assert torch.equal(ds[i]["input_ids"], lazy[i]["input_ids"])
    pad = enc.pad_token_id
    batch = collate([ds[i] for i in range(3)], pad)
    lengths = [len(ds[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["index"].tolist() == [0, 1, 2]
    for row, t in enumerate(lengths):
        assert batch["attention_mask"][row].sum() == t
        assert (batch["input_ids"][row, t:] == pad).all() and (batch["labels"][row, t:] == IGNORE_INDEX).all()
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum() == 2 * N_IMAGE_TOKENS
    sub = ds.subset([2, 0])
    assert torch.equal(sub[0]["input_ids"], ds[2]["input_ids"]) and sub[1]["index"] == 1
    with pytest.raises(EncodeError, match="uid=5.*missing.png"):
        enc.encode_record({"uid": 5, "image": "missing.png", "conversations": CONV}, tmp_path)


def test_image_tag_written_as_the_templates_image_part():
    """A template that takes typed parts (the project's own, ``"<image>\\n"`` per image part) is
    probed for how it writes an image; LLaVA text, and so the ids, stay what the string-only
    Vicuna template gives."""
    from selfilter.models.tokenizer import CHAT_TEMPLATE

    typed, plain = ChatEncoder(make_processor(CHAT_TEMPLATE)), ChatEncoder(make_processor(VICUNA))
    assert typed.image_text == "<image>\n" and plain.image_text is None
    for conv in (CONV, [{"from": "human", "value": "What color?\n<image>"}, CONV[1]]):
        a, b = typed.encode(conv, IMAGE), plain.encode(conv, IMAGE)
        assert typed.render(conv, True)[0] == plain.render(conv, True)[0]
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


class _TokenTypes:
    """A processor that also returns a per-token tensor (like Qwen2-VL's ``mm_token_type_ids``)."""

    def __init__(self, processor):
        self._p = processor

    def __getattr__(self, name):
        return getattr(self._p, name)

    def __call__(self, *args, **kwargs):
        out = self._p(*args, **kwargs)
        out["mm_token_type_ids"] = (out["input_ids"] == self._p.tokenizer.convert_tokens_to_ids("<image>")).long()
        return out


def test_per_token_tensors_are_kept_truncated_and_padded(processor):
    enc = ChatEncoder(_TokenTypes(processor))
    s = enc.encode(CONV, IMAGE)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert torch.equal(s["mm_token_type_ids"], (s["input_ids"] == image_id).long())
    short = ChatEncoder(_TokenTypes(processor), max_length=len(s["input_ids"]) - 3).encode(CONV, IMAGE)
    assert len(short["mm_token_type_ids"]) == len(short["input_ids"]) == len(s["input_ids"]) - 3
    text_only = enc.encode(CONV[:2], None)
    assert "mm_token_type_ids" not in text_only
    batch = collate([text_only, s], enc.pad_token_id)
    assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
    assert batch["mm_token_type_ids"][0].eq(0).all()  # the text-only row: all "text"
    assert torch.equal(batch["mm_token_type_ids"][1], (batch["input_ids"][1] == image_id).long())
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_collate_pads_per_token_and_concatenates_per_image_tensors():
    a = {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]),
         "attention_mask": torch.ones(3, dtype=torch.long), "mm_token_type_ids": torch.tensor([1, 0, 0]),
         "pixel_values": torch.ones(4, 6), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    b = {"input_ids": torch.tensor([5]), "labels": torch.tensor([5]), "attention_mask": torch.ones(1, dtype=torch.long),
         "mm_token_type_ids": torch.tensor([1]), "pixel_values": torch.zeros(2, 6), "image_grid_thw": torch.tensor([[1, 1, 2]])}
    batch = collate([a, b], pad_token_id=0)
    assert batch["mm_token_type_ids"].tolist() == [[1, 0, 0], [1, 0, 0]]
    assert batch["pixel_values"].shape == (6, 6) and batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 1, 2]]
