"""Test-only hold points: where the fault-injection suite (tests/reliability) stops a stage in
the middle of its work, so that the SIGKILL it sends lands at a named point - not after a
guessed delay, which a faster machine outruns.

With ``SELFILTER_TEST_HOLD=<point>#<n>:<marker file>`` in the environment, the n-th arrival at
``hold("<point>")`` - counted over every process that has the variable, e.g. all the stage
processes one ``dvc repro`` runs - writes the marker (JSON: point, n, pid) and waits there until
the process is killed; every later arrival waits too (the other threads of a judge run, other
workers). ``#0`` only counts: each arrival adds one to ``<marker file>.count`` and none waits,
which tells a test how many arrivals a whole run makes. Removing the marker lets the waiters go
on. Without the variable ``hold`` returns at once and touches no file: the stages never set it.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

HOLD_ENV = "SELFILTER_TEST_HOLD"
MAX_HOLD_S = 900  # a held process nobody kills fails instead of lingering forever


def _spec() -> tuple[str, int, Path] | None:
    value = os.environ.get(HOLD_ENV)
    if not value:
        return None
    point, _, rest = value.partition("#")
    n, _, marker = rest.partition(":")
    if not point or not n.isdigit() or not marker:
        raise ValueError(f"{HOLD_ENV}={value!r}: expected <point>#<n>:<marker file>")
    return point, int(n), Path(marker)


def armed(point: str) -> bool:
    """True when ``SELFILTER_TEST_HOLD`` names ``point`` (for a hold that needs set-up)."""
    spec = _spec()
    return spec is not None and spec[0] == point


def hold(point: str) -> None:
    """Count this arrival at ``point``; the n-th and later ones write the marker (the n-th) and
    wait to be killed. A no-op unless ``SELFILTER_TEST_HOLD`` names ``point``."""
    spec = _spec()
    if spec is None or spec[0] != point:
        return
    _, n, marker = spec
    with open(marker.with_name(marker.name + ".count"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # one counter for all threads and processes
        f.seek(0)
        count = int(f.read() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(count))
        f.flush()
        if n and count == n:
            tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"point": point, "n": n, "pid": os.getpid()}))
            os.replace(tmp, marker)
    if not n or count < n:
        return
    deadline = time.monotonic() + MAX_HOLD_S
    while marker.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{HOLD_ENV}: held at {point} for {MAX_HOLD_S} s and not killed")
        time.sleep(0.05)
