"""Judge backend ``openai``: any OpenAI-compatible chat-completions endpoint.

Requests run in a bounded thread pool (``concurrency`` in flight). Each one has a timeout and
is retried on 429, 5xx, timeouts, connection errors and unusable 200 replies (a cut-off body, no
choices, no content) with exponential backoff; a server's ``Retry-After`` (or ``retry-after-ms``)
is honoured as the minimum wait. The openai client's own retries are switched off so that this
policy - and its counts - are the only one.

The run stops sending early, and :meth:`OpenAIJudge.complete` raises :class:`JudgeAborted`, when
retrying cannot help: the endpoint rejects the key (401/403: at most ``concurrency`` requests,
those already in flight), or more prompts failed for good than ``max_failed_fraction`` allows
(an outage: no retry storm over the rest of the pool). Answered prompts are cached either way,
so the rerun resumes. Request bound per run: ``(prompts not cached) x (max_retries + 1)``.

The API key is handed to the client and nowhere else: it is not in the usage counts, the cache
(keyed by model + prompt), logs, or any file.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from selfilter.holdpoints import hold
from selfilter.judge.cache import ResponseCache
from selfilter.judge.prompt import cache_key

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429}  # plus every 5xx
AUTH_STATUS = {401, 403}          # the key is wrong for every request: stop at once


class JudgeAborted(ValueError):
    """The run stopped sending requests; the message says why and that a rerun resumes."""


class EmptyReply(Exception):
    """A 200 reply with nothing to rate (no choices or no content): retried like a 5xx."""


@dataclass
class Usage:
    requests: int = 0          # HTTP requests sent, retries included (what the endpoint bills/limits)
    completed: int = 0         # prompts answered by the endpoint in this run
    cache_hits: int = 0        # prompts answered from the cache (no request)
    retries: int = 0
    failed: int = 0            # prompts with no answer after all retries (or a non-retryable error)
    skipped: int = 0           # prompts not sent because the run was aborted (wrong key, outage)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class OpenAIJudge:
    """Send chat prompts, with caching, bounded concurrency, timeouts and retries.

    ``sleep`` is injectable so tests can check the waits without waiting.
    """

    def __init__(self, *, base_url: str, model: str, api_key: str, cache: ResponseCache | None = None,
                 concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 5,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, temperature: float = 0.0,
                 max_tokens: int = 256, max_failed_fraction: float = 1.0, key_source: str = "the API key",
                 sleep: Callable[[float], None] = time.sleep):
        import openai

        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.base_url, self.model, self.cache = base_url, model, cache
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_failed_fraction, self.key_source = max_failed_fraction, key_source
        self.sleep = sleep
        self.usage = Usage()
        self._lock = threading.Lock()
        self._max_failed = 0
        self._abort: str | None = None  # why no more requests are sent (set once, by the first cause)

    def _stop(self, reason: str) -> None:
        with self._lock:
            self._abort = self._abort or reason

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self.usage, k, getattr(self.usage, k) + v)

    def _delay(self, attempt: int, error: Exception) -> float:
        response = getattr(error, "response", None)
        hinted = retry_after_seconds(getattr(response, "headers", None))
        # Full jitter on our own backoff spreads out threads that failed together.
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        return max(hinted, backoff) if hinted is not None else backoff

    def _retryable(self, e: Exception) -> bool:
        o = self._openai
        if isinstance(e, (o.APITimeoutError, o.APIConnectionError, o.APIResponseValidationError,
                          EmptyReply, json.JSONDecodeError)):
            return True
        return isinstance(e, o.APIStatusError) and (e.status_code in RETRY_STATUS or e.status_code >= 500)

    def complete_one(self, messages: list[dict[str, str]]) -> str | None:
        """The reply text for one prompt (cached), or None when it failed for good."""
        key = cache_key(self.model, messages)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self._count(cache_hits=1)
            return hit["text"]
        for attempt in range(self.max_retries + 1):
            if self._abort is not None:
                self._count(skipped=1)
                return None
            self._count(requests=1)
            try:
                resp = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature,
                    max_tokens=self.max_tokens)
                if not resp.choices or resp.choices[0].message.content is None:
                    raise EmptyReply("a 200 reply with no choices or no content")
            except (self._openai.APIError, EmptyReply, json.JSONDecodeError) as e:
                status = getattr(e, "status_code", None)
                if status in AUTH_STATUS:
                    self._count(failed=1)
                    self._stop(f"the judge endpoint {self.base_url} refused {self.key_source} "
                               f"(HTTP {status}): check the key; no request was retried")
                    return None
                if attempt < self.max_retries and self._retryable(e):
                    self._count(retries=1)
                    self.sleep(self._delay(attempt, e))
                    continue
                self._count(failed=1)
                # The exception text names the status and the server's message, never the key.
                log.warning("judge request failed after %d attempt(s): %s", attempt + 1, type(e).__name__)
                if self.usage.failed > self._max_failed:
                    self._stop(f"judge prompts failed for good (last: {type(e).__name__}"
                               f"{f' {status}' if status else ''}) more often than "
                               f"judge.max_failed_fraction={self.max_failed_fraction} allows: stopped sending")
                return None
            text = resp.choices[0].message.content
            usage = resp.usage
            p, c = (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)
            self._count(completed=1, prompt_tokens=p, completion_tokens=c)
            if self.cache is not None:
                self.cache.put(key, {"text": text, "prompt_tokens": p, "completion_tokens": c})
            hold("judge.reply_stored")  # test-only kill point (selfilter/holdpoints.py); off unless the suite sets it
            return text
        return None  # pragma: no cover - the loop always returns

    def complete(self, prompts: Sequence[list[dict[str, str]]], progress: bool = True) -> list[str | None]:
        """Replies in prompt order; at most ``concurrency`` requests in flight. Raises
        :class:`JudgeAborted` when the run stopped early (see the module docstring)."""
        self._max_failed = int(self.max_failed_fraction * len(prompts))
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            replies = list(tqdm(pool.map(self.complete_one, prompts), total=len(prompts), unit="prompt",
                                desc=f"judge {self.model}", disable=not progress))
        if self._abort is not None:
            answered = sum(r is not None for r in replies)
            raise JudgeAborted(f"{self._abort} ({self.usage.failed} of {len(prompts)} prompts failed, {answered} "
                               f"answered, {self.usage.requests} requests); answered ones are cached: rerun to resume")
        return replies

    def respond(self, records: Sequence[dict[str, Any]], scenes: dict[str, dict[str, Any]],
                progress: bool = True) -> list[str | None]:
        """One reply per record: the rating prompt with its scene annotation when there is one."""
        from selfilter.data.records import conversation_text
        from selfilter.judge.prompt import build_messages

        prompts = [build_messages(conversation_text(r["conversations"]), scenes.get(r.get("image") or ""))
                   for r in records]
        return self.complete(prompts, progress=progress)

    def usage_report(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": self.base_url, "model": self.model, **self.usage.as_dict()}
