"""Kills that land inside the work: a stage run with ``SELFILTER_TEST_HOLD`` stops at a named
point (selfilter/holdpoints.py) and writes a marker; the test waits for the marker, then sends
SIGKILL. A kill whose marker never came would have landed after the work: the case fails."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from selfilter.holdpoints import HOLD_ENV


def hold_env(point: str, n: int, marker: Path) -> dict[str, str]:
    """The variable that holds the n-th arrival at ``point`` (``n=0``: only count arrivals)."""
    return {HOLD_ENV: f"{point}#{n}:{marker}"}


def arrivals(marker: Path) -> int:
    """How many arrivals at the point the runs with ``hold_env(..., marker)`` made."""
    count = marker.with_name(marker.name + ".count")
    return int(count.read_text() or 0) if count.is_file() else 0


def wait_held(marker: Path, proc: subprocess.Popen, timeout: float) -> dict | None:
    """The marker's content once the process holds at the point; None when ``proc`` ended
    (or ``timeout`` passed) first - the work was over before the point was reached."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.is_file():
            return json.loads(marker.read_text())
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None
