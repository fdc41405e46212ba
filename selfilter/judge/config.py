"""The ``judge`` section of params.yaml."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from selfilter.config import Section


class OpenAIConfig(Section):
    # Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, Ollama).
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "gpt-4o-mini"
    # The NAME of the environment variable holding the key (the key itself is never written
    # anywhere); null for local servers that need no key.
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)        # requests in flight at once
    timeout_s: float = Field(60.0, gt=0)     # per request
    max_retries: int = Field(5, ge=0)        # on 429, 5xx, timeouts and connection errors
    backoff_s: float = Field(1.0, ge=0)      # first retry delay, doubled each time (Retry-After wins)
    max_backoff_s: float = Field(60.0, ge=0)
    temperature: float = 0.0
    max_tokens: int = Field(256, ge=1)


class AnnotationConfig(Section):
    # Std of Gaussian noise added to each rating (0-10 scale) to emulate an imperfect judge.
    noise: float = Field(0.0, ge=0)
    seed: int = 0                            # noise and caption seed (per uid / image: order-free)
    # What the judge is shown. scene: the full scene annotation (close to the hidden truth, as no
    # real judge is). caption: what a caption-reading LLM judge sees - a partial, sometimes wrong
    # summary: each object named with probability caption_recall, and a named object's colour or
    # shape is wrong with probability caption_error (judge/annotation.caption_view).
    view: Literal["scene", "caption"] = "scene"
    caption_recall: float = Field(0.7, gt=0, le=1)
    caption_error: float = Field(0.1, ge=0, le=1)


class JudgeConfig(Section):
    # annotation: rate against the scene annotations (offline, the shapes default);
    # openai: an LLM through an OpenAI-compatible endpoint.
    backend: Literal["annotation", "openai"] = "annotation"
    # Persistent response cache (sqlite) so a rerun repeats no call; outside the stage's outs.
    cache_dir: str = ".cache/judge"
    # Stage fails if more than this share of requests still fail after retries (rerun resumes
    # from the cache); failed ratings would otherwise be silently filled with the mean.
    max_failed_fraction: float = Field(0.0, ge=0, le=1)
    openai: OpenAIConfig = OpenAIConfig()
    annotation: AnnotationConfig = AnnotationConfig()
