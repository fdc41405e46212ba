"""The ``base`` section of params.yaml: how the starting models are made (or loaded)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from selfilter.config import Section


class TokenizerParams(Section):
    vocab_size: int = Field(1024, ge=300)   # byte-level BPE: 256 bytes + 5 specials + merges
    min_frequency: int = Field(2, ge=1)


class ClipParams(Section):
    image_size: int = Field(32, ge=8)
    patch_size: int = Field(8, ge=1)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    text_hidden_size: int = 64
    text_layers: int = 2
    projection_dim: int = 64
    max_text_length: int = 64
    n_pairs: int = Field(4000, ge=2)         # caption pairs for contrastive training
    epochs: int = Field(4, ge=0)
    batch_size: int = Field(128, ge=2)
    lr: float = 2e-3
    warmup_ratio: float = Field(0.1, ge=0, le=1)


class LlmParams(Section):
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 256                   # pretraining texts are cut to this many tokens
    epochs: int = Field(2, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = 2e-3
    warmup_ratio: float = Field(0.05, ge=0, le=1)


class AlignParams(Section):
    n_pairs: int = Field(4000, ge=1)
    epochs: int = Field(2, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = 2e-3
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    vision_feature_layer: int = -1          # a 2-layer tower's penultimate layer is too shallow
    # Train the LM with the projector (LLaVA trains the projector only: its LM already reads
    # anything put in its embedding space; a 0.4M-parameter LM pretrained on text alone does not)
    tune_language_model: bool = False
    prompt: str = "Describe the image briefly."


class ProbeParams(Section):
    n_pairs: int = Field(256, ge=2)         # held-out caption pairs (fresh seed)
    retrieval_group: int = Field(32, ge=2)  # CLIP image->text top-1 among this many captions
    n_questions: int = Field(200, ge=0)     # short-answer bench questions for the base VLM
    max_new_tokens: int = Field(8, ge=1)


class PretrainedParams(Section):
    model: str | None = None                # an existing llava-hf checkpoint (path or hub name)
    clip: str | None = None                 # CLIP checkpoint: features extractor (+ tower if no `model`)
    language_model: str | None = None       # causal LM (path or hub name), with `clip`
    projector: str | None = None            # optional safetensors/bin of projector weights
    vision_feature_layer: int = -2          # LLaVA-1.5's choice for a 24-layer ViT
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class BaseConfig(Section):
    source: Literal["tiny", "pretrained"] = "tiny"
    seed: int = 0
    device: str = "cpu"
    max_grad_norm: float = Field(1.0, gt=0)
    tokenizer: TokenizerParams = TokenizerParams()
    clip: ClipParams = ClipParams()
    llm: LlmParams = LlmParams()
    align: AlignParams = AlignParams()
    probe: ProbeParams = ProbeParams()
    pretrained: PretrainedParams = PretrainedParams()

    @model_validator(mode="after")
    def _pretrained_has_a_source(self):
        p = self.pretrained
        if self.source == "pretrained":
            if p.clip is None:
                raise ValueError("source 'pretrained' needs pretrained.clip (the features extractor; "
                                 "also the vision tower when pretrained.model is not given)")
            if p.model is None and p.language_model is None:
                raise ValueError("source 'pretrained' needs pretrained.model (a llava-hf checkpoint) "
                                 "or pretrained.language_model (assembled with pretrained.clip)")
        if self.clip.image_size % self.clip.patch_size:
            raise ValueError("clip.image_size must be a multiple of clip.patch_size")
        return self
