from __future__ import annotations

from selfilter.judge.cache import ResponseCache
from selfilter.judge.openai_backend import OpenAIJudge, retry_after_seconds
from selfilter.judge.run import judge_records


def _records(*rates):
    return [{"uid": i, "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                         {"from": "gpt", "value": f"RATE={r}"}]} for i, r in enumerate(rates)]


def _judge(server, tmp_path, sleeps=None, **kw):
    kw = {"max_retries": 3, "backoff_s": 0.0, "concurrency": 2, "timeout_s": 5.0, **kw}
    return OpenAIJudge(base_url=server.base_url, model="fake-judge", api_key="sk-test",
                       cache=ResponseCache(tmp_path / "cache.sqlite"),
                       sleep=(sleeps.append if sleeps is not None else lambda s: None), **kw)


def test_ratings_parsed_and_rerun_hits_the_cache(server, tmp_path):
    records = _records("8", "8/10", "Score:_8.5", "no_idea", "11")
    table, usage = judge_records(records, {}, _judge(server, tmp_path), progress=False)
    assert list(table["rating"]) == [8.0, 8.0, 8.5, 8.625, 10.0]  # unparseable -> mean of the others
    assert list(table["parsed"]) == [True, True, True, False, True]
    assert (usage["requests"], usage["cache_hits"], usage["n_unparsed"]) == (5, 0, 1)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (55, 15)
    assert server.auth[0] == "Bearer sk-test"
    assert server.requests[0]["model"] == "fake-judge"

    again, usage2 = judge_records(records, {}, _judge(server, tmp_path), progress=False)
    assert len(server.requests) == 5  # zero calls the second time
    assert (usage2["requests"], usage2["cache_hits"]) == (0, 5)
    assert again.equals(table)


def test_429_honours_retry_after_then_succeeds(server, tmp_path):
    server.script = [(429, {"Retry-After": "3"}, 0.0), (429, {"retry-after-ms": "1500"}, 0.0)]
    sleeps = []
    judge = _judge(server, tmp_path, sleeps, concurrency=1)
    assert judge.complete_one([{"role": "user", "content": "RATE=6"}]).startswith("6")
    assert sleeps[0] >= 3.0 and sleeps[1] >= 1.5  # the server's hint is the minimum wait
    assert (judge.usage.requests, judge.usage.retries, judge.usage.completed) == (3, 2, 1)


def test_5xx_retried_with_backoff_4xx_not(server, tmp_path):
    server.script = [(500, {}, 0.0), (503, {}, 0.0)]
    sleeps = []
    judge = _judge(server, tmp_path, sleeps, backoff_s=0.5, concurrency=1)
    assert judge.complete_one([{"role": "user", "content": "RATE=4"}]).startswith("4")
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # doubling, jittered

    server.script = [(400, {}, 0.0)]
    assert judge.complete_one([{"role": "user", "content": "RATE=5"}]) is None
    assert judge.usage.failed == 1 and len(sleeps) == 2


def test_timeouts_are_retried_and_then_counted_as_failures(server, tmp_path):
    server.script = [(200, {}, 1.0)]  # the first request hangs past the timeout
    judge = _judge(server, tmp_path, timeout_s=0.3, concurrency=1)
    assert judge.complete_one([{"role": "user", "content": "RATE=3"}]).startswith("3")
    assert judge.usage.retries == 1

    server.script = [(200, {}, 1.0)] * 2
    judge = _judge(server, tmp_path, timeout_s=0.3, max_retries=1, concurrency=1)
    table, usage = judge_records(_records("9", "5"), {}, judge, progress=False)
    # Concurrency 1: uid 0 times out twice (fails), uid 1 answers; the failure gets the mean.
    assert usage["failed"] == 1 and list(table["parsed"]) == [False, True]
    assert list(table["rating"]) == [5.0, 5.0]


def test_concurrency_is_bounded(tmp_path):
    from fake_openai import FakeOpenAI, rating_from_prompt

    with FakeOpenAI(rating_from_prompt, delay_s=0.05) as slow:
        judge_records(_records(*[str(i) for i in range(12)]), {}, _judge(slow, tmp_path, concurrency=3),
                      progress=False)
        assert len(slow.requests) == 12 and 1 < slow.max_in_flight <= 3


def test_retry_after_formats():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
