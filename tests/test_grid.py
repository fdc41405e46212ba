"""selfilter.grid: leases, the worker checks and the supervisor, with a scripted orchestrator.

The supervisor is tested against a fake pool whose runs follow a script (complete, fail,
hang with a dead worker, server away); the end-to-end grid on a real Prefect server with three
process workers is tests/reliability/test_grid_workers.py.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from selfilter.grid import (GridFailed, Lease, UnitRefused, code_digest, machine, preflight, profile_needs_gpu,
                            read_records, record_path, supervise, unit_done, unit_file_name, write_record)


def test_unit_file_names_are_flat_and_paths_are_refused():
    assert unit_file_name("random/b0.15_s0") == "random__b0.15_s0"
    assert unit_file_name("_base") == "_base"
    assert unit_file_name("stage:stage1@scores") == "stage--stage1@scores"
    assert unit_file_name("shard:3of8") == "shard--3of8"
    for bad in ("", "/etc/passwd", "../x", "a/../b", "a/b/c", ".hidden", "stage:a/b", "shard:x", "stage:..",
                "a/b\n"):
        with pytest.raises(ValueError, match="expected <method>/<run>"):
            unit_file_name(bad)


def test_machine_names_the_worker_from_the_environment(monkeypatch):
    monkeypatch.delenv("SELFILTER_WORKER", raising=False)
    assert machine()["worker"] == "local"
    monkeypatch.setenv("SELFILTER_WORKER", "gpu-07")
    assert machine()["worker"] == "gpu-07" and machine()["host"]


def test_code_digest_changes_with_the_code_only(tmp_path):
    for d in ("selfilter", "stages", "evaluation"):
        (tmp_path / d).mkdir()
    (tmp_path / "selfilter" / "a.py").write_text("x = 1\n")
    first = code_digest(tmp_path)
    (tmp_path / "selfilter" / "__pycache__").mkdir()
    (tmp_path / "selfilter" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "selfilter" / "notes.txt").write_text("not code")
    (tmp_path / "README.md").write_text("docs")
    assert code_digest(tmp_path) == first
    (tmp_path / "selfilter" / "a.py").write_text("x = 2\n")
    assert code_digest(tmp_path) != first
    (tmp_path / "selfilter" / "a.py").write_text("x = 1\n")
    (tmp_path / "evaluation" / "task.yaml").write_text("task: t\n")
    assert code_digest(tmp_path) != first


def test_a_lease_has_one_holder_and_a_stale_one_is_taken_over(tmp_path):
    a = Lease.for_unit(tmp_path, "random/b0.15_s0", timeout_s=5)
    a.acquire({"worker": "w1", "host": "h1"})
    b = Lease.for_unit(tmp_path, "random/b0.15_s0", timeout_s=5)
    with pytest.raises(UnitRefused, match="held by w1 on h1"):
        b.acquire({"worker": "w2", "host": "h2"})
    old = time.time() - 60
    os.utime(a.path, (old, old))  # w1 stopped beating a minute ago
    assert b.stale()
    b.acquire({"worker": "w2", "host": "h2"})
    assert b.read()["worker"] == "w2"
    assert list(tmp_path.glob(".grid/leases/*.stale-*"))  # the dead holder's lease, kept for the record
    a.release()  # w1 comes back late: it must not remove w2's lease
    assert b.path.is_file()
    b.release()
    assert not b.path.exists()


def test_a_held_lease_stays_fresh_while_its_holder_beats(tmp_path):
    lease = Lease.for_unit(tmp_path, "_base", timeout_s=0.6)
    with lease.held({"worker": "w1"}, every_s=0.1):
        time.sleep(1.5)  # 2.5 x the timeout
        assert not lease.stale()
    assert not lease.path.exists()


def test_preflight_says_in_one_line_what_the_worker_lacks(tmp_path):
    with pytest.raises(UnitRefused, match="shared workspace .* is not visible here"):
        preflight(tmp_path / "not-mounted")
    with pytest.raises(UnitRefused, match="dvc.yaml is missing"):
        preflight(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    preflight(tmp_path)
    with pytest.raises(UnitRefused, match="trains on cuda and this machine has no usable GPU"):
        preflight(tmp_path, needs_gpu=True, cuda_available=lambda: False)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / ".grid").chmod(0o500)
        try:
            with pytest.raises(UnitRefused, match="cannot write to the shared workspace"):
                preflight(tmp_path)
        finally:
            (tmp_path / ".grid").chmod(0o700)
    assert profile_needs_gpu({"finetune": {"device": "cuda"}}) and profile_needs_gpu({"evaluate": {"device": "cuda:1"}})
    assert not profile_needs_gpu({"finetune": {"device": "auto"}, "evaluate": {"device": "cpu"}})


def test_unit_records_decide_what_is_done(tmp_path):
    write_record(record_path(tmp_path, "g1", "random/b0.15_s0", "run-a"), {"unit": "random/b0.15_s0", "status": "started"})
    assert not unit_done(tmp_path, "g1", "random/b0.15_s0")
    write_record(record_path(tmp_path, "g1", "random/b0.15_s0", "run-b"), {"unit": "random/b0.15_s0", "status": "done"})
    assert unit_done(tmp_path, "g1", "random/b0.15_s0")
    assert not unit_done(tmp_path, "g2", "random/b0.15_s0")  # another grid
    assert not unit_done(tmp_path, "g1", "random/b0.15_s1")
    assert [r["status"] for r in read_records(tmp_path, "g1")] == ["started", "done"]


class FakePool:
    """A scripted orchestrator: each submitted run follows the script given for its (unit,
    attempt) - a list of states, one per poll; "done" writes the unit's completion record."""

    def __init__(self, tmp_path, scripts, lease_timeout_s=10.0):
        self.root, self.scripts, self.timeout = tmp_path, scripts, lease_timeout_s
        self.now = 1000.0
        self.runs: dict[str, list] = {}
        self.submitted: list[tuple[str, int]] = []
        self.crashed: list[tuple[str, str]] = []
        self.down_polls = 0

    def clock(self):
        return self.now

    def sleep(self, s):
        self.now += s

    def submit(self, unit, attempt):
        run_id = f"{unit}#{attempt}"
        self.submitted.append((unit, attempt))
        self.runs[run_id] = list(self.scripts.get((unit, attempt), ["RUNNING", "done"]))
        return run_id

    def state_of(self, run_id):
        if self.down_polls > 0:
            self.down_polls -= 1
            raise ConnectionError("server unreachable")
        unit = run_id.split("#")[0]
        step = self.runs[run_id].pop(0) if len(self.runs[run_id]) > 1 else self.runs[run_id][0]
        lease = Lease.for_unit(self.root, unit, self.timeout)
        if step == "done":
            write_record(record_path(self.root, "g", unit, run_id.replace("/", "_")), {"status": "done"})
            return "COMPLETED", ""
        if step == "RUNNING":  # a live worker: fresh heartbeat
            lease.path.parent.mkdir(parents=True, exist_ok=True)
            lease.path.write_text(json.dumps({"flow_run_id": run_id}))
            os.utime(lease.path, (self.now, self.now))
        if step == "DEAD":  # the worker was killed: the lease stops beating, the state stays RUNNING
            return "RUNNING", ""
        if step.startswith("FAILED"):
            return "FAILED", step.partition(":")[2]
        return step, ""

    def run(self, units, **kw):
        return supervise(units, submit=self.submit, state_of=self.state_of,
                         is_done=lambda u: unit_done(self.root, "g", u),
                         lease_of=lambda u: Lease.for_unit(self.root, u, self.timeout),
                         mark_crashed=lambda r, why: self.crashed.append((r, why)),
                         sleep=self.sleep, clock=self.clock, log=lambda s: None, poll_s=2.0, **kw)


UNITS = ["a/b0.1_s0", "b/b0.1_s0", "_base"]


def test_supervise_every_unit_once_when_nothing_goes_wrong(tmp_path):
    pool = FakePool(tmp_path, {})
    out = pool.run(UNITS)
    assert sorted(out.done) == sorted(UNITS) and out.attempts == dict.fromkeys(UNITS, 1)
    assert pool.submitted == [(u, 1) for u in UNITS] and not out.resubmitted


def test_supervise_skips_units_already_done(tmp_path):
    write_record(record_path(tmp_path, "g", "_base", "old"), {"status": "done"})
    pool = FakePool(tmp_path, {})
    pool.run(UNITS)
    assert [u for u, _ in pool.submitted] == UNITS[:2]


def test_supervise_resubmits_a_unit_whose_worker_died_mid_unit(tmp_path):
    # b's first worker beats twice, then dies: RUNNING forever, lease goes stale after 10 s
    pool = FakePool(tmp_path, {("b/b0.1_s0", 1): ["RUNNING", "RUNNING"] + ["DEAD"] * 20})
    out = pool.run(UNITS)
    assert sorted(out.done) == sorted(UNITS)
    assert out.attempts["b/b0.1_s0"] == 2 and out.attempts["a/b0.1_s0"] == 1
    (crashed,) = pool.crashed
    assert crashed[0] == "b/b0.1_s0#1" and "stopped beating" in crashed[1]


def test_supervise_resubmits_a_refused_unit_and_gives_up_after_max_attempts(tmp_path):
    pool = FakePool(tmp_path, {("a/b0.1_s0", 1): ["FAILED:shared workspace /w is not visible here"]})
    out = pool.run(UNITS)
    assert out.attempts["a/b0.1_s0"] == 2 and "not visible here" in out.resubmitted[0][1]
    always = {("a/b0.1_s0", i): ["FAILED:cuda missing"] for i in (1, 2, 3)}
    with pytest.raises(GridFailed, match=r"unit a/b0.1_s0: 3 attempt\(s\) failed; last: .*cuda missing"):
        FakePool(tmp_path / "x", always).run(UNITS, max_attempts=3)


def test_supervise_waits_out_a_server_outage_without_resubmitting(tmp_path):
    pool = FakePool(tmp_path, {})
    pool.down_polls = 7  # the first 7 state reads fail: the server is away
    out = pool.run(UNITS)
    assert sorted(out.done) == sorted(UNITS) and out.attempts == dict.fromkeys(UNITS, 1)


def test_supervise_does_not_take_a_dead_holders_stale_lease_for_the_new_attempts(tmp_path):
    # attempt 1 dies; attempt 2 is RUNNING a while before it takes the lease over: the stale
    # lease is attempt 1's, so attempt 2 must not be crashed for it
    script = {("b/b0.1_s0", 1): ["RUNNING"] + ["DEAD"] * 20,
              ("b/b0.1_s0", 2): ["PENDING", "PENDING", "STARTING"] + ["STARTING"] * 10 + ["RUNNING", "done"]}

    class Starting(FakePool):
        def state_of(self, run_id):
            state, msg = super().state_of(run_id)
            return ("RUNNING", msg) if state == "STARTING" else (state, msg)

    pool = Starting(tmp_path, script)
    out = pool.run(UNITS)
    assert out.attempts["b/b0.1_s0"] == 2 and len(pool.crashed) == 1


def test_supervise_resubmits_a_run_that_never_took_its_lease(tmp_path):
    # RUNNING per the server but no lease ever written: its worker died before the unit began
    pool = FakePool(tmp_path, {("_base", 1): ["PENDING", "DEAD"] + ["DEAD"] * 400})
    out = pool.run(UNITS, start_grace_s=60)
    assert out.attempts["_base"] == 2 and "without taking its lease" in pool.crashed[0][1]
