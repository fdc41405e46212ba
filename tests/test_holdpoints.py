"""The test-only hold points (selfilter/holdpoints.py): inert without the variable, counting with
``#0``, and holding the n-th and every later arrival until the marker goes."""
from __future__ import annotations

import json
import threading
import time

import pytest

from selfilter.holdpoints import HOLD_ENV, armed, hold


def test_inert_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(HOLD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    for _ in range(3):
        hold("train.step_done")
    assert not armed("train.step_done") and not list(tmp_path.iterdir())


def test_other_points_and_count_only_never_wait(tmp_path, monkeypatch):
    marker = tmp_path / "held"
    monkeypatch.setenv(HOLD_ENV, f"judge.reply_stored#0:{marker}")
    for _ in range(5):
        hold("judge.reply_stored")
        hold("train.step_done")  # not the named point: not counted
    assert (tmp_path / "held.count").read_text() == "5" and not marker.exists()


def test_the_nth_and_later_arrivals_hold_until_the_marker_goes(tmp_path, monkeypatch):
    marker = tmp_path / "held"
    monkeypatch.setenv(HOLD_ENV, f"select.subset_written#2:{marker}")
    passed = []

    def arrive(i):
        hold("select.subset_written")
        passed.append(i)

    arrive(1)
    threads = [threading.Thread(target=arrive, args=(i,)) for i in (2, 3)]
    threads[0].start()
    while not marker.exists():
        time.sleep(0.01)
    threads[1].start()
    time.sleep(0.3)
    assert passed == [1] and json.loads(marker.read_text())["n"] == 2  # 2 and 3 wait
    marker.unlink()  # the release a test may use instead of SIGKILL
    for t in threads:
        t.join(timeout=5)
    assert sorted(passed) == [1, 2, 3]


def test_a_malformed_value_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(HOLD_ENV, "track.run_opened")
    with pytest.raises(ValueError, match=HOLD_ENV):
        hold("track.run_opened")
