"""Judge backends by name. Each has ``respond(records, scenes, progress) -> [reply | None]``
(a reply is an LLM-style "<score>\\n<explanation>" text) and ``usage_report() -> dict``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from selfilter.judge.config import JudgeConfig


def _annotation(cfg: JudgeConfig, **_: Any):
    from selfilter.judge.annotation import AnnotationJudge

    a = cfg.annotation
    caption = (a.caption_recall, a.caption_error) if a.view == "caption" else None
    return AnnotationJudge(noise=a.noise, seed=a.seed, caption=caption)


def _openai(cfg: JudgeConfig, cache_dir: str | Path | None = None, **kw: Any):
    from selfilter.judge.cache import ResponseCache
    from selfilter.judge.openai_backend import OpenAIJudge

    o = cfg.openai
    if o.api_key_env:
        api_key = os.environ.get(o.api_key_env)
        if not api_key:
            raise ValueError(f"judge.openai.api_key_env: environment variable {o.api_key_env} is not set "
                             "(set it, or set api_key_env: null for an endpoint that needs no key)")
    else:
        api_key = "EMPTY"  # vLLM / Ollama accept any key; the client insists on one
    cache = ResponseCache(Path(cache_dir or cfg.cache_dir) / "responses.sqlite")
    return OpenAIJudge(base_url=o.base_url, model=o.model, api_key=api_key, cache=cache,
                       concurrency=o.concurrency, timeout_s=o.timeout_s, max_retries=o.max_retries,
                       backoff_s=o.backoff_s, max_backoff_s=o.max_backoff_s, temperature=o.temperature,
                       max_tokens=o.max_tokens, max_failed_fraction=cfg.max_failed_fraction,
                       key_source=f"the key in ${o.api_key_env}" if o.api_key_env else "the placeholder key",
                       **kw)


BACKENDS: dict[str, Callable[..., Any]] = {"annotation": _annotation, "openai": _openai}


def build_backend(cfg: JudgeConfig, **kw: Any):
    """The backend named by ``judge.backend``, built from its params (plain values passed on)."""
    try:
        factory = BACKENDS[cfg.backend]
    except KeyError:
        raise ValueError(f"judge.backend={cfg.backend!r} is unknown; valid: {', '.join(BACKENDS)}") from None
    return factory(cfg, **kw)
