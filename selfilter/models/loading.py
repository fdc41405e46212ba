"""Generic loading, assembly and freezing of vision-language models.

Nothing here assumes the tiny models: sizes, token ids and module names come from the
checkpoint's config and from ``transformers``' own accessors, so a llava-hf 7B checkpoint
goes through the same code as the 0.4M-parameter default.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}' (valid: {', '.join(DTYPES)})") from None


def load_vlm(path: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"):
    """(model, processor) of any image-text-to-text checkpoint (local path or hub name)."""
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=resolve_dtype(dtype))
    processor = AutoProcessor.from_pretrained(str(path))
    return model.to(device).eval(), processor


def load_clip(path: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"):
    """(model, processor) of a dual-encoder checkpoint such as ``CLIPModel`` (local or hub)."""
    model = AutoModel.from_pretrained(str(path), dtype=resolve_dtype(dtype))
    processor = AutoProcessor.from_pretrained(str(path))
    return model.to(device).eval(), processor


def vision_tower_of(model: nn.Module) -> nn.Module | None:
    """The vision encoder of a VLM, found by attribute name, whichever wrapper holds it.

    transformers 5 keeps LLaVA's tower at ``model.model.vision_tower``; other families use
    ``vision_model`` / ``visual`` (Qwen2-VL) / ``vision_encoder``.
    """
    for holder in (model, getattr(model, "model", None)):
        if holder is None:
            continue
        for name in ("vision_tower", "vision_model", "visual", "vision_encoder"):
            tower = getattr(holder, name, None)
            if isinstance(tower, nn.Module):
                return tower
    return None


def trainable_parameters(model: nn.Module, freeze_vision: bool = True) -> list[nn.Parameter]:
    """Set ``requires_grad`` (vision tower frozen, LM + projector trainable) and return the
    parameters left trainable, for the optimizer. LLaVA's recipe from stage 2 onwards."""
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze_vision:
        tower = vision_tower_of(model)
        if tower is None:
            raise ValueError(f"{type(model).__name__}: no vision tower found to freeze "
                             "(looked for vision_tower / vision_model / visual / vision_encoder)")
        for p in tower.parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def projector_of(model: nn.Module) -> nn.Module:
    for holder in (model, getattr(model, "model", None)):
        proj = getattr(holder, "multi_modal_projector", None) if holder is not None else None
        if isinstance(proj, nn.Module):
            return proj
    raise ValueError(f"{type(model).__name__}: no multi_modal_projector")


def vision_only(dual_encoder: PreTrainedModel) -> PreTrainedModel:
    """The vision half of a CLIP/SigLIP-style dual encoder as its own ``*VisionModel``
    (the class LLaVA's config builds for its tower), weights copied."""
    vision_config = dual_encoder.config.vision_config
    tower = AutoModel.from_config(vision_config)
    inner = getattr(dual_encoder, "vision_model", None)
    if inner is None:
        raise ValueError(f"{type(dual_encoder).__name__} has no vision_model to use as a vision tower")
    # transformers 5 flattened CLIPVisionModel (its weights sit at the top); older layouts and
    # other families nest them under ``vision_model``.
    target = tower.vision_model if hasattr(tower, "vision_model") else tower
    target.load_state_dict(inner.state_dict())
    return tower.to(next(dual_encoder.parameters()).dtype)


def assemble_llava(vision_tower: PreTrainedModel, language_model: PreTrainedModel, processor_parts: dict,
                   *, vision_feature_layer: int = -2, vision_feature_select_strategy: str = "default",
                   projector_state: dict[str, torch.Tensor] | None = None, seed: int = 0):
    """LLaVA = vision tower + a projector (fresh, or ``projector_state``) + causal LM.

    ``processor_parts``: ``tokenizer`` (must know ``<image>``; the LM's embeddings are resized
    if it is new to it) and ``image_processor``. Returns ``(model, processor)``. The image
    token count is derived from the tower's config (``image_size // patch_size`` squared,
    minus nothing: the 'default' strategy drops CLS, 'full' keeps it).
    """
    tokenizer, image_processor = processor_parts["tokenizer"], processor_parts["image_processor"]
    image_token = getattr(tokenizer, "image_token", None) or "<image>"
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    if len(tokenizer) > language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(len(tokenizer))

    vcfg, tcfg = vision_tower.config, language_model.config
    n_patches = (vcfg.image_size // vcfg.patch_size) ** 2
    image_seq_length = n_patches + (1 if vision_feature_select_strategy == "full" else 0)
    config = LlavaConfig(
        vision_config=vcfg.to_dict(), text_config=tcfg.to_dict(),
        image_token_index=image_token_id, image_seq_length=image_seq_length,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        tie_word_embeddings=bool(getattr(tcfg, "tie_word_embeddings", False)),
    )
    # Build the shell on the meta device (no memory for a second copy of a 7B LM), then put
    # the real modules in; only the projector is created fresh.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision_tower
    model.model.language_model = language_model.get_decoder()
    model.lm_head = language_model.get_output_embeddings()
    torch.manual_seed(seed)
    projector = LlavaMultiModalProjector(config)
    if projector_state is not None:
        state = _projector_keys(projector_state)
        got = {k: tuple(v.shape) for k, v in sorted(state.items())}
        want = {k: tuple(v.shape) for k, v in sorted(projector.state_dict().items())}
        if got != want:  # load_state_dict's size-mismatch error names neither side's model
            raise ValueError(f"projector weights of shapes {got} do not fit this vision tower (hidden size "
                             f"{vcfg.hidden_size}) and language model (hidden size {tcfg.hidden_size}): expected "
                             f"{want}; use the projector trained for this CLIP + LM pair")
        projector.load_state_dict(state)
    dtype = next(language_model.parameters()).dtype
    model.model.multi_modal_projector = projector.to(dtype)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise RuntimeError(f"assemble_llava: {name} was left uninitialised")
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id

    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer,
        patch_size=vcfg.patch_size, vision_feature_select_strategy=vision_feature_select_strategy,
        # the CLS token the tower adds (dropped again by the 'default' strategy)
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return model.eval(), processor


def _projector_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept llava-hf names (``linear_1``/``linear_2``) and original LLaVA ``mm_projector.bin``
    names (``model.mm_projector.0`` / ``.2``)."""
    out = {}
    for k, v in state.items():
        k2 = k.split("multi_modal_projector.")[-1]
        if "mm_projector." in k2:
            k2 = k2.split("mm_projector.")[-1].replace("0.", "linear_1.", 1).replace("2.", "linear_2.", 1)
        out[k2] = v
    return out


def save_vlm(model: PreTrainedModel, processor, out_dir: str | Path) -> Path:
    """``save_pretrained`` of model + processor; the tokenizer keeps the chat template too
    (lmms-eval's llava_hf reads ``processor.tokenizer.chat_template``)."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def load_config(path: str | Path):
    return AutoConfig.from_pretrained(str(path))


def load_pretrained_base(*, clip: str, model: str | None = None, language_model: str | None = None,
                         projector: str | None = None, vision_feature_layer: int = -2,
                         vision_feature_select_strategy: str = "default", dtype: str = "float32", seed: int = 0):
    """Real checkpoints by path or hub name -> ``(clip, clip_processor, vlm, vlm_processor)``.

    Either ``model`` (an existing llava-hf checkpoint, taken as is) or ``language_model``
    (a causal LM; assembled with ``clip``'s vision half and a projector - fresh, or loaded from
    ``projector``, a ``.safetensors``/``.bin`` of llava-hf or original LLaVA projector weights).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfilter.models.tokenizer import CHAT_TEMPLATE

    clip_model, clip_processor = load_clip(clip, dtype)
    if model is not None:
        vlm, processor = load_vlm(model, dtype)
        return clip_model, clip_processor, vlm, processor
    if language_model is None:
        raise ValueError("give pretrained.model or pretrained.language_model")
    lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=resolve_dtype(dtype))
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE  # Vicuna v1, as LLaVA-1.5
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    state = _read_state(projector) if projector else None
    try:
        vlm, processor = assemble_llava(
            vision_only(clip_model), lm, {"tokenizer": tokenizer, "image_processor": clip_processor.image_processor},
            vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=vision_feature_select_strategy,
            projector_state=state, seed=seed)
    except ValueError as e:
        if not projector:
            raise
        raise ValueError(f"{projector}: {e}") from None
    return clip_model, clip_processor, vlm, processor


def _read_state(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{path}: projector weights not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    return torch.load(p, map_location="cpu", weights_only=True)
