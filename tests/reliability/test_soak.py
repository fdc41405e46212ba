"""The soak (SELFILTER_SOAK=1, `make reliability`): the real pipeline on the smoke profile in a
fresh clone of HEAD, then faults injected into it.

- Secrets: the run uses the openai judge backend (the fake endpoint, which accepts only the
  canary key); the canary appears in no file the pipeline wrote (outputs, .dvc cache, dvc.lock,
  mlruns.db, mlartifacts/, the judge cache, the Prefect home: database and logs) nor in the
  console output.
- Two `dvc repro` in one checkout: the second refuses at once; the first finishes.
- Crash anywhere: every long stage group is first rerun uninterrupted - counting the arrivals at
  a named point inside its work (HOLD_AT; selfilter/holdpoints.py) and checking that its outputs
  equal the run before it (field by field, as below) - then run 3 times held at a seeded arrival in (0.15, 0.85) of
  that count and SIGKILLed there (dvc and the stage: the whole session; a case whose hold was
  never reached fails), then `dvc repro --no-run-cache --force -s <group>` (the killed stage
  really reruns, resuming what it can; a plain `dvc repro` would check its last outputs out of
  .dvc/cache) and `dvc repro --no-run-cache`: both finish; every output file equals the
  uninterrupted run's field by field, with only wall-clock fields exempt (smoke_checkout.py says
  which, and how the few fields derived from them are checked); finished fine-tunes and
  evaluations are not redone; MLflow holds no duplicate, orphaned or RUNNING run.
About 20-25 minutes on 2 busy cores.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fake_openai import FakeOpenAI, rating_from_prompt
from holds import arrivals, hold_env, wait_held
from judge_env import CANARY, KEY_ENV
from services import snapshot
from smoke_checkout import (BIN, REPO, RESUME_ACCOUNTING, differences, kill_group, marker_mtimes, read_outputs, run,
                            stage_env, start, wait_for_stage)

pytestmark = [pytest.mark.soak, pytest.mark.slow]

# stage group -> what to clear first so that a forced run does real work (DVC clears the rest)
PREP = {"features": [".cache/features"], "judge": [".cache/judge"], "stage1": [], "el2n": [],
        "select": [], "finetune": ["runs"], "evaluate": ["evals"], "track": ["mlruns.db", "mlartifacts"]}
SEEDS = (0, 1, 2)
# stage group -> where inside its work the killed run is held, then killed (selfilter/holdpoints.py)
HOLD_AT = {"features": "features.shard_written", "judge": "judge.reply_stored", "stage1": "train.step_done",
           "el2n": "train.step_done", "select": "select.subset_written", "finetune": "train.step_done",
           "evaluate": "evaluate.checkpoint_done", "track": "track.run_opened"}
N_POOL = 200  # profiles/smoke.yaml: a killed judge run and its rerun ask each prompt about once


@dataclass
class Checkout:
    root: Path
    home: Path
    env: dict
    console: Path
    server: FakeOpenAI
    flow_s: float
    t: dict = field(default_factory=dict)          # stage group -> seconds, uninterrupted forced run
    arrivals: dict = field(default_factory=dict)   # stage group -> arrivals at HOLD_AT[group] in that run
    ref: dict = field(default_factory=dict)        # stage group -> its outputs after it (read_outputs)
    ref_runs: dict = field(default_factory=dict)   # stage group -> MLflow snapshot after it
    resumed: set = field(default_factory=set)      # stage groups rerun after a kill so far


def _dvc(c: Checkout, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], c.root, c.env, c.console, timeout)


def _prep(c: Checkout, group: str) -> None:
    import shutil

    for rel in PREP[group]:
        p = c.root / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    if group == "judge":
        c.server.answered.clear()
        c.server.repeats = 0
        c.server.requests.clear()


def _rerun(c: Checkout, group: str) -> subprocess.CompletedProcess:
    """The killed stage really rerun (`--force`: a plain `dvc repro` checks its last good
    outputs out of .dvc/cache - "is cached - skipping run" - even with `--no-run-cache`, which
    would test nothing), resuming from what the killed run left; then `dvc repro` for the rest."""
    forced = _dvc(c, "repro", "--no-run-cache", "--force", "--single-item", group)
    return forced if forced.returncode else _dvc(c, "repro", "--no-run-cache")


def _store(c: Checkout) -> dict:
    return snapshot(f"sqlite:///{c.root / 'mlruns.db'}")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    home = tmp_path_factory.mktemp("soak")
    root = home / "selfilter"
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
    console = home / "console.log"
    with FakeOpenAI(rating_from_prompt, api_key=CANARY) as server:
        env = stage_env(home, **{KEY_ENV: CANARY})
        sets = ["judge.backend=openai", f"judge.openai.base_url={server.base_url}",
                f"judge.openai.api_key_env={KEY_ENV}", "judge.openai.timeout_s=10", "judge.openai.backoff_s=0.05",
                "judge.openai.max_backoff_s=0.2", "judge.openai.concurrency=4"]
        started = time.monotonic()
        proc = run([str(BIN / "python"), "-m", "flows.pipeline", "--profile", "smoke",
                    *[a for s in sets for a in ("-S", s)]], root, env, console, timeout=3600)
        flow_s = time.monotonic() - started
        assert proc.returncode == 0, console.read_text()[-6000:]
        yield Checkout(root, home, env, console, server, flow_s)


def test_secrets_canary_appears_nowhere(checkout, ledger):
    c = checkout
    assert f"Bearer {CANARY}" in c.server.auth  # the canary really was the key in use
    places = [p for base in (c.root, c.home / "prefect") for p in base.rglob("*") if p.is_file()] + [c.console]
    leaks = [str(p) for p in places if CANARY.encode() in p.read_bytes()]
    ledger("canary API key (openai judge backend)", f"{len(places)} files: outputs, .dvc cache, dvc.lock, mlruns.db, "
           "mlartifacts, judge cache, Prefect DB + logs, console", f"found in {len(leaks)} files",
           lost=len(leaks), calls=len(c.server.requests))
    assert not leaks, leaks
    assert (c.home / "prefect").is_dir() and any((c.home / "prefect").rglob("*.db"))


def test_two_repro_in_one_checkout(checkout, ledger):
    c = checkout
    first = start([str(BIN / "dvc"), "repro", "-f", "-s", "stage1"], c.root, c.env, c.console)
    time.sleep(3)
    t0 = time.monotonic()
    second = _dvc(c, "repro", timeout=600)
    refused_s = time.monotonic() - t0
    first_rc = first.wait(timeout=1800)
    settle = _dvc(c, "repro")
    status = _dvc(c, "status")
    refused = second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower()
    ledger("second `dvc repro` while one runs", "dvc (smoke checkout)",
           f"second refused in {refused_s:.1f} s (exit {second.returncode}); first exit {first_rc}",
           lost=int(not refused) + int(first_rc != 0))
    assert refused, second.stdout + second.stderr
    assert first_rc == 0 and settle.returncode == 0 and "up to date" in status.stdout.lower() + status.stderr.lower()


def _uninterrupted(c: Checkout, group: str, ledger) -> None:
    """The group forced to rerun without a fault: its time, how often it passes its hold point,
    and the reference outputs - which must equal the previous run's (timing aside): two runs of
    the same work that differ elsewhere would make the kill cases' comparison meaningless."""
    if group in c.t:
        return
    before = read_outputs(c.root)
    _prep(c, group)
    count = c.home / "holds" / f"{group}-count"
    count.parent.mkdir(exist_ok=True)
    proc = start([str(BIN / "dvc"), "repro", "-f", "-s", group], c.root, c.env | hold_env(HOLD_AT[group], 0, count),
                 c.console)
    t0 = wait_for_stage(proc)
    assert proc.wait(timeout=1800) == 0 and t0 is not None, c.console.read_text()[-3000:]
    c.t[group] = time.monotonic() - t0
    c.arrivals[group] = arrivals(count)
    settle = _dvc(c, "repro")
    assert settle.returncode == 0, settle.stderr[-3000:]
    c.ref[group] = read_outputs(c.root)
    c.ref_runs[group] = _store(c)
    # the previous run may be the rerun of another group's kill: that group's resume accounting aside
    resumed = {f: keys for g in c.resumed for f, keys in RESUME_ACCOUNTING.get(g, {}).items()}
    unstable = differences(before, c.ref[group], resumed)
    ledger("none (uninterrupted forced rerun)", group,
           f"{c.t[group]:.0f} s, {c.arrivals[group]} x {HOLD_AT[group]}; {len(unstable)} fields differ from the "
           f"previous run{': ' + '; '.join(unstable[:3]) if unstable else ''}", lost=len(unstable))
    assert c.arrivals[group] >= 1, f"{group} never reached {HOLD_AT[group]}: its kills could not be held"
    assert not unstable, unstable  # two clean runs agree: the comparison below exempts nothing else


def resume_accounting(c: Checkout, group: str) -> list[str]:
    """What a resumed run's own accounting (RESUME_ACCOUNTING) must add up to."""
    if group == "judge":  # every prompt answered once, by the endpoint or from the cache
        u = json.loads((c.root / "judge/usage.json").read_text())
        if u["completed"] + u["cache_hits"] == u["n_records"] == N_POOL and u["failed"] == u["skipped"] == 0:
            return []
        return [(f"judge/usage.json: {u['completed']} completed + {u['cache_hits']} cache hits is not {N_POOL}, "
                 f"or {u['failed']} failed / {u['skipped']} skipped")]
    if group == "track":  # every run logged once, by the killed attempt or the rerun
        t = json.loads((c.root / "metrics/tracking.json").read_text())
        if t["runs_created"] + t["runs_skipped"] == t["stage_runs"] + t["aggregate_runs"] + t["comparison_runs"]:
            return []
        return [f"metrics/tracking.json: {t['runs_created']} created + {t['runs_skipped']} kept is not every run"]
    return []


@pytest.mark.parametrize("group,seed", [(g, s) for g in PREP for s in SEEDS])
def test_sigkill_then_repro(checkout, ledger, group, seed):
    c = checkout
    _uninterrupted(c, group, ledger)
    rng = np.random.default_rng([seed, list(PREP).index(group)])
    frac = float(rng.uniform(0.15, 0.85))
    total = c.arrivals[group]
    nth = max(1, min(total - 1, round(frac * total)))  # an arrival strictly before the last where there are 2+
    _prep(c, group)
    marker = c.home / "holds" / f"{group}-{seed}"
    proc = start([str(BIN / "dvc"), "repro", "-f", "-s", group], c.root,
                 c.env | hold_env(HOLD_AT[group], nth, marker), c.console)
    held = wait_held(marker, proc, timeout=1800)
    landed = kill_group(proc) and held is not None  # still running, and held inside its work
    # finished before the kill: they must survive the rerun untouched (a fine-tune's checkpoint
    # is new after `finetune` reruns, so its evaluation is rightly redone: only done.json counts)
    markers = {k: v for k, v in marker_mtimes(c.root).items()
               if not (group == "finetune" and k.startswith("evals/"))}
    t0 = time.monotonic()
    rerun = _rerun(c, group)
    rerun_s = time.monotonic() - t0
    c.resumed.add(group)
    status = _dvc(c, "status")
    differ = differences(c.ref[group], read_outputs(c.root), RESUME_ACCOUNTING.get(group))
    differ += resume_accounting(c, group)
    redone = sorted(k for k, m in markers.items() if marker_mtimes(c.root).get(k) != m)
    try:
        runs = _store(c)
        duplicates = 0
    except AssertionError as e:  # snapshot raises on a duplicate key
        runs, duplicates = {}, 1
        print(e)
    open_runs = [k for k, v in runs.items() if v["status"] != "FINISHED"]
    orphans = [k for k, v in runs.items() if k[1] != "pipeline" and v["parent"] is None]
    same_lineage = group != "track" or runs == c.ref_runs[group]
    if not same_lineage:
        ref_runs = c.ref_runs[group]
        diff = [f"{k[1]}: {sorted(f for f in ('status', 'parent', 'params', 'metrics', 'tags', 'artifacts') if runs.get(k, {}).get(f) != ref_runs.get(k, {}).get(f))}"
                for k in sorted(set(runs) | set(ref_runs), key=str) if runs.get(k) != ref_runs.get(k)]
        print("lineage differs:", diff)
    ok_status = rerun.returncode == 0 and "up to date" in (status.stdout + status.stderr).lower()
    repeat = c.server.repeats if group == "judge" else 0
    outcome = (f"killed held at {HOLD_AT[group]} {nth} of {total}{'' if landed else ' - NOT LANDED: the work ended first'}; "
               f"repro exit {rerun.returncode} in {rerun_s:.0f} s; {len(differ)} output fields differ"
               f"{': ' + '; '.join(differ[:3]) if differ else ''}; "
               f"{len(redone)} finished runs redone; MLflow: {duplicates} dup, {len(orphans)} orphan, "
               f"{len(open_runs)} open{'' if same_lineage else ', lineage differs: ' + '; '.join(diff[:2])}")
    # a reply that arrived but was not yet stored when the kill landed is asked again: at most
    # the requests in flight (judge.openai.concurrency = 4)
    ledger(f"SIGKILL (seed {seed})", group, outcome,
           lost=len(differ) + len(redone) + duplicates + len(orphans) + len(open_runs) + (not same_lineage)
           + (not ok_status) + (not landed), repeat_calls=repeat,
           calls=len(c.server.requests) if group == "judge" else None, bound=2 * N_POOL if group == "judge" else None)
    assert landed, f"{group} ended before arrival {nth} at {HOLD_AT[group]}: the kill tested nothing"
    assert ok_status, rerun.stderr[-3000:]
    assert not differ and not redone and not duplicates and not orphans and not open_runs and same_lineage, differ
    assert repeat <= 4
