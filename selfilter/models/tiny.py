"""Tiny CLIP / Llama / LLaVA built from configs, randomly initialised.

The sizes are arguments (defaults: the embedded pipeline's models); ``build_tiny_llava`` and
``build_tiny_clip`` save ready-to-load checkpoints in about a second, for tests that need a
real model without training one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from selfilter.models.loading import assemble_llava, save_vlm, vision_only
from selfilter.models.tokenizer import BUILTIN_CORPUS, train_tokenizer, with_eos

# OpenAI CLIP's normalisation constants, kept so a tiny checkpoint looks like a real one.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def image_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP preprocessing built from arguments (no hub): resize shortest edge, centre crop."""
    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size},
        do_center_crop=True, crop_size={"height": image_size, "width": image_size},
        do_rescale=True, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
        do_convert_rgb=True,
    )


def tiny_clip(tokenizer: PreTrainedTokenizerFast, *, image_size: int = 32, patch_size: int = 8,
              hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2, text_hidden_size: int = 64,
              text_layers: int = 2, projection_dim: int = 64, max_text_length: int = 64,
              seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """A randomly initialised ``CLIPModel`` whose text side uses ``tokenizer`` (+ ``</s>``)."""
    clip_tok = with_eos(tokenizer, model_max_length=max_text_length)
    config = CLIPConfig(
        vision_config=dict(
            image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
            intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, projection_dim=projection_dim,
        ),
        text_config=dict(
            vocab_size=len(clip_tok), hidden_size=text_hidden_size, intermediate_size=4 * text_hidden_size,
            num_hidden_layers=text_layers, num_attention_heads=num_heads,
            max_position_embeddings=max_text_length, projection_dim=projection_dim,
            # pooled at the first </s> (CLIP's text pooling); pad/bos for completeness
            eos_token_id=clip_tok.eos_token_id, bos_token_id=clip_tok.bos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    return model, CLIPProcessor(image_processor=image_processor(image_size), tokenizer=clip_tok)


def tiny_llama(tokenizer: PreTrainedTokenizerFast, *, hidden_size: int = 128, num_layers: int = 2,
               num_heads: int = 4, intermediate_size: int = 256, max_position_embeddings: int = 512,
               seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def build_tiny_clip(out_dir: str | Path, texts: Sequence[str] | None = None, seed: int = 0,
                    vocab_size: int = 512, image_size: int = 32) -> Path:
    """Save a randomly initialised tiny ``CLIPModel`` + ``CLIPProcessor`` to ``out_dir``."""
    tokenizer = train_tokenizer(list(texts) if texts else BUILTIN_CORPUS, vocab_size=vocab_size, min_frequency=1)
    model, processor = tiny_clip(tokenizer, image_size=image_size, seed=seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava(out_dir: str | Path, texts: Sequence[str] | None = None, seed: int = 0,
                     vocab_size: int = 512, image_size: int = 32) -> Path:
    """Save a randomly initialised tiny LLaVA (tokenizer trained on ``texts`` or a built-in
    corpus, CLIP vision tower, Llama, projector) + ``LlavaProcessor`` to ``out_dir``.

    Loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` and lmms-eval's ``llava_hf``.
    """
    tokenizer = train_tokenizer(list(texts) if texts else BUILTIN_CORPUS, vocab_size=vocab_size, min_frequency=1)
    clip, clip_processor = tiny_clip(tokenizer, image_size=image_size, seed=seed)
    llama = tiny_llama(tokenizer, seed=seed + 1)
    model, processor = assemble_llava(
        vision_only(clip), llama,
        {"tokenizer": tokenizer, "image_processor": clip_processor.image_processor},
        # a 2-layer tower's penultimate layer is barely past the patch embedding
        vision_feature_layer=-1, seed=seed + 2,
    )
    return save_vlm(model, processor, out_dir)
