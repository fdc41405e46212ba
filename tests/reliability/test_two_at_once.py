"""Two `dvc repro` in one checkout: the second must refuse at once, with one clear line, and
the first must finish. (The soak repeats this on the real smoke checkout.)"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def test_second_repro_refuses_while_the_first_runs(tmp_path, ledger):
    root = tmp_path / "p"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python -c \"import time, pathlib; time.sleep(6); "
                                   "pathlib.Path('out.txt').write_text('done')\"\n    outs: [out.txt]\n")
    env = {"DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    first = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (root / ".dvc/tmp/rwlock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    t0 = time.monotonic()
    second = subprocess.run([str(BIN / "dvc"), "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    refused_s = time.monotonic() - t0
    out, _ = first.communicate(timeout=120)
    errors = [ln for ln in (second.stdout + second.stderr).splitlines() if ln.startswith("ERROR")]
    # DVC's own words: "ERROR: failed to reproduce 'slow': 'out.txt' is busy, it is being blocked
    # by: (PID ...: dvc repro)", then where its rwlock lives
    ok = second.returncode != 0 and len(errors) == 1 and "is busy" in errors[0] and "rwlock" in second.stderr
    ledger("second `dvc repro` while one runs", "dvc (tiny project)",
           f"refused in {refused_s:.1f} s ({'output is busy, blocked by the first' if ok else second.stderr[-70:]!r}); "
           f"first exit {first.returncode}",
           lost=int(not ok) + int(first.returncode != 0))
    assert ok, second.stdout + second.stderr
    assert first.returncode == 0 and (root / "out.txt").read_text() == "done", out
