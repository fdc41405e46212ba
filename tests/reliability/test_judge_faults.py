"""Judge endpoint faults against the fake OpenAI-compatible server on 127.0.0.1, through the
real judge stage (params file, response cache, usage.json).

Each case: run the stage with the fault scripted; if it fails, the endpoint recovers and the
stage is rerun. Checked against the planted ratings (an independent reference): zero ratings
lost, zero repeat requests for prompts the endpoint had answered, the request count within the
stated bound, and a failing run reports one line (no traceback).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fake_openai import FakeOpenAI, rating_from_prompt
from judge_env import (CANARY, CONCURRENCY, KEY_ENV, MAX_RETRIES, N, one_line_error, ratings_lost,
                       write_params, write_records)
from stages import judge as stage

# Transient faults: fewer per prompt than max_retries, so the first run must succeed with
# exactly one extra request per injected fault.
TRANSIENT = {
    "timeout (no reply within timeout_s)": [("hang", {}, 0.8)] * 2,
    "hang (connection held 3 s, dropped)": [("hang", {}, 3.0)],
    "429 with Retry-After: 1": [(429, {"Retry-After": "1"}, 0.0)],
    "429 without Retry-After": [(429, {}, 0.0)] * 3,
    "500, 502, 503": [(500, {}, 0.0), (502, {}, 0.0), (503, {}, 0.0)],
    "connection reset": [("reset", {}, 0.0)] * 2,
    "malformed JSON (200, body cut off)": [("malformed", {}, 0.0)] * 2,
    "empty choices list (200)": [("empty_choices", {}, 0.0)] * 2,
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, CANARY)
    rec = write_records(tmp_path / "records.jsonl")
    with FakeOpenAI(rating_from_prompt) as server:
        params = write_params(tmp_path / "params.yaml", server.base_url, tmp_path / "cache")
        args = ["--params", str(params), "--records", str(rec), "--out", str(tmp_path / "judge"), "--no-progress"]
        yield server, args, tmp_path / "judge"


def _run(args, capsys) -> tuple[int, str]:
    rc = stage.main(args)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("fault", list(TRANSIENT))
def test_transient_fault_is_retried_and_loses_nothing(env, capsys, ledger, fault):
    server, args, out = env
    server.script = list(TRANSIENT[fault])
    started = time.monotonic()
    rc, err = _run(args, capsys)
    elapsed = time.monotonic() - started
    assert rc == 0, err
    lost, calls = ratings_lost(out), len(server.requests)
    usage = json.loads((out / "usage.json").read_text())
    ledger(fault, "judge (openai backend)", f"retried, exit 0 in {elapsed:.1f} s", lost=lost,
           repeat_calls=server.repeats, calls=calls, bound=N * (MAX_RETRIES + 1))
    assert lost == 0 and server.repeats == 0
    assert calls == N + len(TRANSIENT[fault]) == usage["requests"]  # one extra request per fault
    assert usage["failed"] == 0 and usage["retries"] == len(TRANSIENT[fault])
    if "Retry-After: 1" in fault:
        assert elapsed >= 1.0  # the server's wait was honoured
    rc, _ = _run(args, capsys)  # a rerun calls nothing
    assert rc == 0 and len(server.requests) == calls


def test_outage_stops_early_then_a_rerun_resumes(env, capsys, ledger):
    """5 prompts answered, then the endpoint returns 503 to everything: the run stops after a
    bounded number of requests (no retry storm over the pool) with one line; once it recovers
    the rerun asks only for the unanswered prompts."""
    server, args, out = env
    server.script = [(200, {}, 0.0)] * 5 + [(503, {}, 0.0)] * 10_000
    rc, err = _run(args, capsys)
    calls_down = len(server.requests)
    bound = 5 + CONCURRENCY * (MAX_RETRIES + 1)  # answered + in-flight prompts' attempts
    assert rc == 1 and one_line_error(err, "judge") and "rerun to resume" in err, err
    assert calls_down <= bound
    server.script = []
    rc, err = _run(args, capsys)
    assert rc == 0, err
    lost = ratings_lost(out)
    ledger("endpoint down (503 to all) after 5 answers", "judge (openai backend)",
           "stopped early with one line; rerun after recovery finished", lost=lost,
           repeat_calls=server.repeats, calls=calls_down, bound=bound)
    assert lost == 0 and server.repeats == 0
    assert len(server.requests) - calls_down == N - 5


def test_wrong_key_fails_fast_with_one_clear_line(env, capsys, ledger, monkeypatch):
    server, args, out = env
    server.api_key = "sk-the-right-fake-key"
    rc, err = _run(args, capsys)
    calls = len(server.requests)
    assert rc == 1 and one_line_error(err, "judge"), err
    assert "HTTP 401" in err and f"${KEY_ENV}" in err and CANARY not in err
    assert calls <= CONCURRENCY  # only the requests already in flight: no retry, no storm
    monkeypatch.setenv(KEY_ENV, server.api_key)
    rc, err = _run(args, capsys)
    assert rc == 0, err
    lost = ratings_lost(out)
    ledger("wrong API key (401)", "judge (openai backend)", "failed fast, one line naming the env var; "
           "rerun with the right key finished", lost=lost, repeat_calls=server.repeats, calls=calls,
           bound=CONCURRENCY)
    assert lost == 0


def test_no_log_line_per_request(env, capsys, caplog, ledger):
    """The HTTP client's per-request INFO lines (URL included) stay out of the stage's output."""
    import logging

    server, args, out = env
    caplog.set_level(logging.INFO)
    rc, err = _run(args, capsys)
    per_request = [r for r in caplog.records if "HTTP Request" in r.getMessage()]
    ledger("per-request log lines (URL in each)", "judge (openai backend)", f"{len(per_request)} lines for {N} requests",
           lost=len(per_request))
    assert rc == 0 and not per_request


def test_unparseable_ratings_are_named_not_passed_off(env, capsys, ledger):
    server, args, out = env
    bad = frozenset({3, 7})
    server.reply = lambda user: ("I would rather not say." if any(f"Sample {u}:" in user for u in bad)
                                 else rating_from_prompt(user))
    rc, err = _run(args, capsys)
    assert rc == 0, err
    usage = json.loads((out / "usage.json").read_text())
    lost = ratings_lost(out, unparsed_ok=bad)
    ledger("unparseable ratings (2 of 12)", "judge (openai backend)",
           "kept, parsed=false, imputed with the mean, n_unparsed=2 in usage.json", lost=lost,
           repeat_calls=server.repeats, calls=len(server.requests), bound=N)
    assert lost == 0 and usage["n_unparsed"] == len(bad)


def test_sigkill_mid_judge_then_rerun_repeats_no_answered_prompt(tmp_path, ledger):
    """The judge stage as its own process, killed with SIGKILL after a seeded number of answers."""
    n = 60
    rec = write_records(tmp_path / "records.jsonl", n)
    kill_after = int(np.random.default_rng(11).integers(10, 40))
    env = dict(os.environ, **{KEY_ENV: CANARY}, OMP_NUM_THREADS="1")
    with FakeOpenAI(rating_from_prompt, delay_s=0.05) as server:
        params = write_params(tmp_path / "params.yaml", server.base_url, tmp_path / "cache", concurrency=2)
        cmd = [sys.executable, "-m", "stages.judge", "--params", str(params), "--records", str(rec),
               "--out", str(tmp_path / "judge"), "--no-progress"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(server.answered) < kill_after and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered_before = len(server.answered)
        assert 0 < answered_before < n, "the kill must land mid-run"
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        lost = ratings_lost(tmp_path / "judge", n)
        # The cache commits each reply as it arrives; at most the replies in flight at the kill
        # (concurrency) may have been answered but not yet stored.
        ledger(f"SIGKILL after {answered_before} of {n} answers", "judge (subprocess)",
               "rerun finished from the cache", lost=lost, repeat_calls=server.repeats,
               calls=len(server.requests), bound=n + 2)
        assert lost == 0 and server.repeats <= 2 and len(server.requests) <= n + 2
