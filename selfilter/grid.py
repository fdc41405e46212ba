"""The grid over many machines: units, leases and the supervisor that hands units to workers.

A *unit* is one fine-tune run and its evaluation (``random/b0.15_s0``), the base model's
evaluation (``_base``), one whole stage that no other stage of its step waits for
(``stage:stage1@scores``, ``stage:el2n``) or one feature shard (``shard:0of4``). Units are independent: each reads the shared workspace's inputs
(selections, the base model, the pool) and writes only its own run and evaluation folders, so
any number of workers on any number of machines can do them at once. The finetune and evaluate
stages do a unit with ``--only``; their completion markers (``done.json``; the evaluation's
``metrics.json`` sidecar) are written last, so a half-written unit is never taken for a
finished one. DVC stays the judge: after the units, ``dvc repro finetune`` and ``dvc repro
evaluate`` run on the host as always, find every unit's marker, redo nothing, and write
``dvc.lock`` from that one process.

What this module adds, with no Prefect in it (flows/grid.py is the Prefect side):
- ``machine()``: which host and worker did a piece of work (train_log.json, unit records);
- ``code_digest()``: a worker refuses a unit when its checkout's code differs from the host's;
- ``Lease``: one holder per unit at a time, kept fresh by a heartbeat; a lease whose holder
  stopped beating (its machine died, its worker was killed) goes stale and can be taken over;
- ``preflight()``: what a worker lacks for a unit (the shared workspace, a GPU), in one line;
- ``supervise()``: submit every unit, watch them, resubmit the ones whose worker died or
  failed, until every unit is done or one ran out of attempts. The completion markers on the
  shared storage, not the orchestrator's states, decide what is done: a server that goes away
  and comes back loses no finished unit.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_ENV = "SELFILTER_WORKER"       # the worker's name, set by `python -m flows.grid worker`
GRID_DIR = ".grid"                     # in the shared workspace: leases and unit records (not DVC outputs)
BASE_UNIT = "_base"
# Code a unit runs: a worker whose checkout differs here would compute something else.
CODE_DIRS = ("selfilter", "stages", "evaluation")
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".jinja", ".json")


class UnitRefused(RuntimeError):
    """A worker cannot do a unit; the message is the one line that says what is missing."""


def machine() -> dict[str, str]:
    """Where this process runs: the host name, the grid worker's name (``local`` outside a grid)
    and the CPU with the flags that pick its float kernels (another CPU redraws a run's noise)."""
    from selfilter.machine import cpu_description

    return {"host": socket.gethostname(), "worker": os.environ.get(WORKER_ENV) or "local", "cpu": cpu_description()}


_UNIT = re.compile(r"^(?:[A-Za-z0-9_][\w.-]*/[\w.-]+|_base|stage:[\w.@-]+|shard:\d+of\d+)$")


def unit_file_name(unit: str) -> str:
    """``random/b0.15_s0`` -> ``random__b0.15_s0``, ``stage:stage1@scores`` ->
    ``stage--stage1@scores``: a file name. Units are ``<method>/<run>``, ``_base``,
    ``stage:<dvc stage>`` or ``shard:<i>of<n>``."""
    if not _UNIT.fullmatch(unit or "") or ".." in unit:
        raise ValueError(f"unit {unit!r}: expected <method>/<run>, {BASE_UNIT}, stage:<name> or shard:<i>of<n>")
    return unit.replace("/", "__").replace(":", "--")


def code_digest(root: str | os.PathLike) -> str:
    """sha256 over the relative paths and bytes of the code a unit runs (CODE_DIRS)."""
    root = Path(root)
    h = hashlib.sha256()
    for top in CODE_DIRS:
        base = root / top
        if not base.is_dir():
            h.update(f"missing:{top}\n".encode())
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                h.update(f"{path.relative_to(root).as_posix()}\n".encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- leases

@dataclass
class Lease:
    """``<workspace>/.grid/leases/<unit>.json``: who holds a unit. Created with O_EXCL (one
    holder); its mtime is the heartbeat. A lease older than ``timeout_s`` is stale: its holder
    is presumed dead and another worker may take it over (the old file is renamed away first,
    so of two workers taking over at once only one wins)."""

    path: Path
    timeout_s: float
    holder: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_unit(cls, workspace: str | os.PathLike, unit: str, timeout_s: float) -> Lease:
        return cls(Path(workspace) / GRID_DIR / "leases" / f"{unit_file_name(unit)}.json", timeout_s)

    def age_s(self, now: float | None = None) -> float | None:
        try:
            return (time.time() if now is None else now) - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def stale(self, now: float | None = None) -> bool:
        age = self.age_s(now)
        return age is not None and age > self.timeout_s

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def acquire(self, holder: Mapping[str, Any]) -> None:
        """Take the lease or raise UnitRefused naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.stale():
            with contextlib.suppress(FileNotFoundError):  # another taker renamed it first
                os.replace(self.path, self.path.with_name(f"{self.path.name}.stale-{time.time_ns()}"))
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            other = self.read()
            raise UnitRefused(f"{self.path}: held by {other.get('worker', '?')} on {other.get('host', '?')} "
                              f"(heartbeat {self.age_s() or 0:.0f} s ago)") from None
        self.holder = dict(holder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.holder, f)

    def beat(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)

    def release(self) -> None:
        if self.read() == self.holder:  # never remove a lease someone else took over
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    @contextlib.contextmanager
    def held(self, holder: Mapping[str, Any], every_s: float | None = None) -> Iterator[Lease]:
        """Acquire, beat every ``every_s`` (default timeout/4) from a thread, release at the end."""
        self.acquire(holder)
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(every_s or max(self.timeout_s / 4, 0.2)):
                self.beat()

        thread = threading.Thread(target=heartbeat, name=f"lease {self.path.name}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.release()


# --------------------------------------------------------------------------- unit records

def record_path(workspace: str | os.PathLike, grid_id: str, unit: str, attempt_id: str) -> Path:
    return Path(workspace) / GRID_DIR / grid_id / "units" / f"{unit_file_name(unit)}.{attempt_id}.json"


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    from selfilter.io import write_json

    write_json(path, dict(record))


def read_records(workspace: str | os.PathLike, grid_id: str) -> list[dict[str, Any]]:
    """Every attempt's record of one grid (``status``: started | done | refused | failed)."""
    folder = Path(workspace) / GRID_DIR / grid_id / "units"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(path.read_text(encoding="utf-8")))
    return out


def unit_done(workspace: str | os.PathLike, grid_id: str, unit: str) -> bool:
    """A unit is done when an attempt recorded ``done`` - written after both stages' markers."""
    folder = Path(workspace) / GRID_DIR / grid_id / "units"
    prefix = f"{unit_file_name(unit)}."
    for path in folder.glob(f"{prefix}*.json") if folder.is_dir() else ():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            if json.loads(path.read_text(encoding="utf-8")).get("status") == "done":
                return True
    return False


# --------------------------------------------------------------------------- preflight

def preflight(workspace: str | os.PathLike, *, needs_gpu: bool = False,
              cuda_available: Callable[[], bool] | None = None) -> None:
    """Raise UnitRefused (one line) when this machine cannot do units of ``workspace``: the
    shared workspace is not there or not writable, or the profile asks for a GPU it lacks."""
    ws = Path(workspace)
    host = socket.gethostname()
    if not ws.is_dir():
        raise UnitRefused(f"{host}: shared workspace {ws} is not visible here (mount it at the same path)")
    for needed in ("dvc.yaml", "params.yaml"):
        if not (ws / needed).is_file():
            raise UnitRefused(f"{host}: {ws / needed} is missing: {ws} is not the grid's workspace")
    grid = ws / GRID_DIR
    try:
        grid.mkdir(exist_ok=True)
        probe = grid / f".probe-{host}-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UnitRefused(f"{host}: cannot write to the shared workspace {grid} ({e.strerror})") from None
    if needs_gpu:
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available
        if not cuda_available():
            raise UnitRefused(f"{host}: the profile trains on cuda and this machine has no usable GPU "
                              f"(torch.cuda.is_available() is False)")


def profile_needs_gpu(params: Mapping[str, Any]) -> bool:
    """True when the fine-tune or the evaluation is set to run on cuda."""
    devices = [str((params.get(section) or {}).get("device", "")) for section in ("finetune", "evaluate")]
    return any(d.startswith("cuda") for d in devices)


# --------------------------------------------------------------------------- supervisor

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Attempt:
    unit: str
    run_id: str
    submitted: float


@dataclass
class GridOutcome:
    done: list[str]
    attempts: dict[str, int]
    resubmitted: list[tuple[str, str]]  # (unit, why)


class GridFailed(RuntimeError):
    """A unit ran out of attempts; the message names it and its last error."""


def supervise(units: Iterable[str], *, submit: Callable[[str, int], str], state_of: Callable[[str], tuple[str, str]],
              is_done: Callable[[str], bool], lease_of: Callable[[str], Lease],
              mark_crashed: Callable[[str, str], None], max_attempts: int = 3, poll_s: float = 2.0,
              start_grace_s: float = 600.0, sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.time, log: Callable[[str], None] = print) -> GridOutcome:
    """Hand every unit to the pool and watch it to the end.

    submit(unit, attempt) -> run id; state_of(run id) -> (state type, message), raising OSError
    (or any ConnectionError) while the server is unreachable; is_done(unit): the unit's
    completion record exists on the shared storage. A unit is resubmitted when its run ended
    without the record (a refusal, an error, a crash) or when its run is RUNNING but its lease
    (the one naming this run) went stale, or was not taken within ``start_grace_s`` of the
    submission (the worker died); then
    ``mark_crashed(run id, why)`` tells the orchestrator. ``max_attempts`` per unit."""
    pending = [u for u in dict.fromkeys(units) if not is_done(u)]
    attempts = {u: 0 for u in pending}
    active: dict[str, Attempt] = {}
    resubmitted: list[tuple[str, str]] = []
    done: list[str] = []

    def launch(unit: str) -> None:
        attempts[unit] += 1
        active[unit] = Attempt(unit, submit(unit, attempts[unit]), clock())

    for unit in pending:
        launch(unit)
    while active:
        sleep(poll_s)
        for unit, att in list(active.items()):
            if is_done(unit):
                done.append(unit)
                del active[unit]
                continue
            try:
                state, message = state_of(att.run_id)
            except (OSError, ConnectionError) as e:  # the server is away: units keep running
                log(f"grid: cannot read the state of {unit} ({e}); waiting")
                continue
            why = None
            if state in TERMINAL:
                if is_done(unit):  # finished between the two reads
                    done.append(unit)
                    del active[unit]
                    continue
                why = f"run {att.run_id} ended {state}" + (f": {message}" if message else "")
            elif state == "RUNNING":
                lease = lease_of(unit)
                # only this attempt's lease counts: a dead earlier holder's stale lease is
                # taken over by this attempt once it starts
                mine = lease.read().get("flow_run_id") == att.run_id
                age = lease.age_s(clock()) if mine else None
                if mine and lease.stale(clock()):
                    why = f"worker stopped beating ({age:.0f} s > {lease.timeout_s:.0f} s)"
                elif age is None and clock() - att.submitted > start_grace_s:
                    why = f"running {clock() - att.submitted:.0f} s without taking its lease"
                if why:
                    with contextlib.suppress(Exception):  # best effort: the resubmission does not depend on it
                        mark_crashed(att.run_id, why)
            if why is None:
                continue
            del active[unit]
            if attempts[unit] >= max_attempts:
                raise GridFailed(f"unit {unit}: {attempts[unit]} attempt(s) failed; last: {why}")
            log(f"grid: resubmitting {unit} ({why})")
            resubmitted.append((unit, why))
            launch(unit)
    return GridOutcome(done=done, attempts=attempts, resubmitted=resubmitted)
