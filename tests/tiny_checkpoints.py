"""Tiny local checkpoints in the three parts the paper's GPU profile loads by path
(``profiles/gpu-llava7b.yaml``, ``base.source: pretrained``): a ``CLIPModel`` whose vision half
LLaVA uses as its tower, a Llama causal LM with its tokenizer, and LLaVA-1.5's feature-alignment
projector in the original ``mm_projector.bin`` format. Random weights, built offline in seconds,
saved the way a user has the real ones on disk (``save_pretrained`` / ``torch.save``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from selfilter.models.tiny import tiny_clip, tiny_llama
from selfilter.models.tokenizer import BUILTIN_CORPUS, train_tokenizer


def make_tiny_llava_parts(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``clip/``, ``language_model/`` and ``mm_projector.bin`` under ``out_dir``; returns
    their paths under the keys ``clip``, ``language_model`` and ``projector``."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(BUILTIN_CORPUS, vocab_size=512, min_frequency=1)
    clip, clip_processor = tiny_clip(tokenizer, image_size=32, seed=seed)
    clip.save_pretrained(out / "clip")
    clip_processor.save_pretrained(out / "clip")
    lm = tiny_llama(tokenizer, seed=seed + 1)
    lm.save_pretrained(out / "language_model")
    tokenizer.save_pretrained(out / "language_model")
    # LLaVA-1.5's mlp2x_gelu projector as its pretraining stage saves it: Linear(vision ->
    # text), GELU, Linear(text -> text), under the original repository's parameter names
    v, t = clip.config.vision_config.hidden_size, lm.config.hidden_size
    torch.manual_seed(seed + 2)
    state = {"model.mm_projector.0.weight": torch.randn(t, v) * 0.02, "model.mm_projector.0.bias": torch.zeros(t),
             "model.mm_projector.2.weight": torch.randn(t, t) * 0.02, "model.mm_projector.2.bias": torch.zeros(t)}
    torch.save(state, out / "mm_projector.bin")
    return {"clip": out / "clip", "language_model": out / "language_model", "projector": out / "mm_projector.bin"}
