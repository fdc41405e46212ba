import torch
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

from selfilter.models.loading import load_clip, load_vlm, trainable_parameters, vision_tower_of


def _prompt(processor, question="What color is the shape?"):
    return processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{question}"}], add_generation_prompt=True, tokenize=False)


def test_tiny_llava_loads_and_generates(tiny_llava_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    assert processor.tokenizer.chat_template, "llava_hf reads the tokenizer's chat template"
    image = Image.new("RGB", (40, 48), (200, 30, 30))
    inputs = processor(images=[image], text=_prompt(processor), return_tensors="pt")
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image == model.config.image_seq_length
    eos = processor.tokenizer.eos_token_id
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=eos, eos_token_id=eos)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_tiny_clip_features_are_normalisable(tiny_clip_dir):
    model, processor = load_clip(tiny_clip_dir)
    images = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
    batch = processor(text=["a red square.", "a blue circle on the left."], images=images,
                      return_tensors="pt", padding=True, truncation=True)
    # the text side must end each text with </s>: CLIP pools at the first eos id
    assert (batch["input_ids"] == model.config.text_config.eos_token_id).any(dim=1).all()
    with torch.no_grad():
        img = model.get_image_features(pixel_values=batch["pixel_values"])
        txt = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    dim = model.config.projection_dim
    assert img.shape == (2, dim) and txt.shape == (2, dim)
    img = torch.nn.functional.normalize(img, dim=-1)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_freezing_leaves_lm_and_projector(tiny_llava_dir):
    model, _ = load_vlm(tiny_llava_dir)
    params = trainable_parameters(model, freeze_vision=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(params) == len(trainable) > 0
    assert not any("vision_tower" in n for n in trainable)
    assert any("multi_modal_projector" in n for n in trainable)
    assert any("language_model" in n for n in trainable) and any("lm_head" in n for n in trainable)
    assert all(not p.requires_grad for p in vision_tower_of(model).parameters())
    trainable_parameters(model, freeze_vision=False)
    assert all(p.requires_grad for p in model.parameters())
