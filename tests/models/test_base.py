"""The base stage's pieces on small synthetic captions, and the pretrained-source path."""
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfilter.config import ConfigError, parse_section
from selfilter.models.config import BaseConfig
from selfilter.models.loading import load_pretrained_base, projector_of, save_vlm
from selfilter.models.pretrain import build_tiny_base, retrieval_accuracy, warmup_cosine

FAST = {
    "tokenizer": {"vocab_size": 400, "min_frequency": 1},
    "clip": {"n_pairs": 256, "epochs": 2, "batch_size": 64, "hidden_size": 32, "text_hidden_size": 32,
             "projection_dim": 32},
    "llm": {"hidden_size": 64, "intermediate_size": 128, "epochs": 1, "batch_size": 64},
    "align": {"n_pairs": 128, "epochs": 1, "batch_size": 64},
    "probe": {"n_pairs": 32, "retrieval_group": 16, "n_questions": 4, "max_new_tokens": 4},
}


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] < 0.05


def test_retrieval_counts_identical_captions_as_hits():
    emb = torch.eye(4)
    assert retrieval_accuracy(emb, emb, ["a", "b", "c", "d"], group=4) == 1.0
    shifted = emb[[1, 0, 3, 2]]
    assert retrieval_accuracy(emb, shifted, ["a", "a", "c", "d"], group=4) == 0.5


def test_tiny_base_builds_saves_loads_and_generates(synthetic_pairs, tmp_path):
    train, probe = synthetic_pairs
    texts = [f"USER: What is in the image? ASSISTANT: {cap}" for _, cap in train[:64]]
    questions = [(im, "What color is the shape?", cap.split()[1]) for im, cap in probe[:4]]
    cfg = parse_section({"base": FAST}, "base", BaseConfig)
    built = build_tiny_base(train, texts, probe, questions, cfg, progress=False)
    m = built["metrics"]
    assert m["train"]["lm"]["loss_last"] < m["train"]["lm"]["loss_first"]
    assert m["train"]["align"]["loss_last"] < m["train"]["align"]["loss_first"]
    assert 0 <= m["clip"]["retrieval_top1"] <= 1 and m["clip"]["retrieval_chance"] == 1 / 16
    assert set(m["vqa"]) >= {"exact_match", "majority_answer_baseline"}
    assert set(m["time_s"]) == {"tokenizer_s", "clip_s", "lm_s", "align_s", "probe_s"}

    out = save_vlm(built["model"], built["processor"], tmp_path / "base")
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    for a, b in zip(built["model"].state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    tok = processor.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "<image>\nDescribe the image briefly."}],
                                     add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[probe[0][0]], text=prompt, return_tensors="pt")
    gen = model.generate(**inputs, max_new_tokens=12, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > inputs["input_ids"].shape[1]
    # the same continuation as the in-memory model: nothing was lost in save/load
    ref = built["model"].generate(**inputs, max_new_tokens=12, do_sample=False,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert torch.equal(gen, ref)


def test_pretrained_source_assembles_from_local_checkpoints(tiny_llava_dir, tiny_clip_dir, tmp_path):
    # an existing llava-hf checkpoint by path, taken as is
    clip, clip_proc, vlm, proc = load_pretrained_base(clip=str(tiny_clip_dir), model=str(tiny_llava_dir))
    assert type(vlm).__name__ == "LlavaForConditionalGeneration"
    # CLIP + a causal LM + projector weights, assembled
    lm_dir = tmp_path / "lm"
    from transformers import LlamaForCausalLM

    lm = LlamaForCausalLM(vlm.config.text_config)
    lm.model.load_state_dict(vlm.model.language_model.state_dict())
    lm.lm_head.load_state_dict(vlm.lm_head.state_dict())
    lm.save_pretrained(lm_dir)
    proc.tokenizer.save_pretrained(lm_dir)
    from safetensors.torch import save_file

    proj_state = {f"multi_modal_projector.{k}": v.contiguous() for k, v in projector_of(vlm).state_dict().items()}
    save_file(proj_state, tmp_path / "projector.safetensors")
    _, _, assembled, aproc = load_pretrained_base(
        clip=str(tiny_clip_dir), language_model=str(lm_dir), projector=str(tmp_path / "projector.safetensors"),
        vision_feature_layer=-1)
    assert torch.equal(projector_of(assembled).linear_1.weight, projector_of(vlm).linear_1.weight)
    assert assembled.config.image_seq_length == (clip.config.vision_config.image_size
                                                 // clip.config.vision_config.patch_size) ** 2
    out = save_vlm(assembled, aproc, tmp_path / "assembled")
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    from PIL import Image

    prompt = processor.tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nWhat?"}],
                                                     add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.new("RGB", (32, 32))], text=prompt, return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] > inputs["input_ids"].shape[1]


def test_config_requires_a_pretrained_source():
    try:
        parse_section({"base": {"source": "pretrained"}}, "base", BaseConfig)
    except ConfigError as e:
        assert "pretrained.clip" in str(e)
    else:
        raise AssertionError("expected a ConfigError")


def test_alignment_trains_the_lm_only_when_asked(tiny_llava_dir):
    """Projector-only alignment (LLaVA's) leaves the LM as it was; ``tune_language_model``
    trains it too; the vision tower is never touched."""
    import copy

    from PIL import Image

    from selfilter.data.encode import ChatEncoder
    from selfilter.models.pretrain import align_projector, caption_conversation

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    encoder = ChatEncoder(processor)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    samples = [encoder.encode(caption_conversation("a red square", "Describe the image briefly."), image)] * 4

    def changed(tune: bool) -> dict[str, bool]:
        m = copy.deepcopy(model)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        align_projector(m, samples, encoder.pad_token_id, epochs=1, batch_size=2, lr=1e-2, progress=False,
                        tune_language_model=tune)
        after = m.state_dict()
        parts = {"projector": "multi_modal_projector", "lm": "language_model", "vision": "vision_tower"}
        return {name: any(not torch.equal(before[k], after[k]) for k in before if key in k)
                for name, key in parts.items()}

    assert changed(False) == {"projector": True, "lm": False, "vision": False}
    assert changed(True) == {"projector": True, "lm": True, "vision": False}


def test_the_gpu_profiles_parts_load_by_path_as_llava_15(tmp_path):
    """CLIP + Llama + LLaVA-1.5's mm_projector.bin, as profiles/gpu-llava7b.yaml names them."""
    from tiny_checkpoints import make_tiny_llava_parts

    parts = make_tiny_llava_parts(tmp_path)
    _, _, vlm, proc = load_pretrained_base(clip=str(parts["clip"]), language_model=str(parts["language_model"]),
                                              projector=str(parts["projector"]), vision_feature_layer=-2)
    state = torch.load(parts["projector"], weights_only=True)
    assert torch.equal(projector_of(vlm).linear_1.weight, state["model.mm_projector.0.weight"])
    assert torch.equal(projector_of(vlm).linear_2.bias, state["model.mm_projector.2.bias"])
    from PIL import Image

    prompt = proc.tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nWhat?"}],
                                                add_generation_prompt=True, tokenize=False)
    inputs = proc(images=[Image.new("RGB", (32, 32))], text=prompt, return_tensors="pt")
    assert vlm.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] > inputs["input_ids"].shape[1]


def test_a_projector_of_other_dimensions_is_a_clear_error(tmp_path):
    from tiny_checkpoints import make_tiny_llava_parts

    parts = make_tiny_llava_parts(tmp_path)
    torch.save({"model.mm_projector.0.weight": torch.zeros(128, 1024), "model.mm_projector.0.bias": torch.zeros(128),
                "model.mm_projector.2.weight": torch.zeros(128, 128), "model.mm_projector.2.bias": torch.zeros(128)},
               tmp_path / "other.bin")
    with pytest.raises(ValueError, match=r"other.bin.*1024.*64"):
        load_pretrained_base(clip=str(parts["clip"]), language_model=str(parts["language_model"]),
                             projector=str(tmp_path / "other.bin"))
