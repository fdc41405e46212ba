"""One DVC workspace per regime, sharing the checkout's DVC cache.

A regime's workspace holds the checkout's source files (tracked and untracked-not-ignored, as
``git ls-files`` lists them; its own dvc.lock and DVC outputs are never overwritten), the base
params.yaml, and DVC's own folder with a local config
that points the cache at the checkout's (``.dvc/cache``): DVC's run-cache then restores every
stage whose command, dependencies and params a regime shares with one already run, and the
outputs of all regimes live once in one cache. Workspaces are not git repositories (DVC runs
with ``core.no_scm``); they persist, so a sweep that stopped resumes where DVC says it must.
"""
from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

from selfilter.io import write_text

# Never copied from a workspace a regime starts from: its own environment, stores and caches.
SKIP_COPY = (".git", ".venv", ".regimes", ".dvc", "mlruns.db", "mlartifacts", "mlruns", ".prefect", "__pycache__")


def source_files(root: Path) -> list[str]:
    """The checkout's files as git sees them: tracked plus untracked-not-ignored."""
    proc = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{root}: not a git checkout ({proc.stderr.strip()}); the regime sweep copies "
                           "the checkout's files as git lists them")
    return sorted(f for f in proc.stdout.split("\0") if f and (root / f).is_file())


def dvc_outputs(root: Path) -> set[str]:
    """Paths that are some stage's output in ``root``'s dvc.lock (git may track a few, e.g. a
    metrics file): a workspace's own copies are its results, never overwritten by the checkout's."""
    import yaml

    lock = root / "dvc.lock"
    if not lock.is_file():
        return set()
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}) or {}
    return {str(o["path"]) for st in stages.values() for o in (st.get("outs") or []) if "path" in o}


def local_config(cache_dir: Path) -> str:
    return f"[core]\n    no_scm = true\n[cache]\n    dir = {cache_dir}\n"


def prepare_workspace(root: Path, ws: Path, base_params: str, start_from: Path | None = None) -> dict[str, int]:
    """Create or refresh ``ws`` from ``root``; return how many files were copied / unchanged.

    ``start_from``: a workspace (or the checkout) whose outputs a new workspace begins with.
    Source files always come from ``root``, so every regime runs the same code."""
    root, ws = root.resolve(), ws.resolve()
    if not ws.exists() and start_from is not None:
        tmp = ws.with_name(ws.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(start_from, tmp, symlinks=True, ignore=shutil.ignore_patterns(*SKIP_COPY))
        os.replace(tmp, ws)  # a crash mid-copy leaves .partial, never a half workspace
    ws.mkdir(parents=True, exist_ok=True)
    copied = same = 0
    # the workspaces' own folder, when git does not ignore it, is never copied into a workspace
    inside = ws.parent.relative_to(root).as_posix() + "/" if ws.parent.is_relative_to(root) and ws.parent != root else None
    outputs = dvc_outputs(root)
    for rel in source_files(root):
        if rel == "params.yaml" or (inside and rel.startswith(inside)):
            continue
        # The workspace's dvc.lock and DVC outputs record *its* runs: taken from the checkout only
        # when it has none (a new workspace then starts from the checkout's lock and cache).
        if (rel == "dvc.lock" or rel in outputs) and (ws / rel).exists():
            continue
        src, dst = root / rel, ws / rel
        if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            same += 1
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied += 1
    write_text(ws / "params.yaml", base_params)
    (ws / ".dvc").mkdir(exist_ok=True)
    cache = root / ".dvc" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    write_text(ws / ".dvc" / "config.local", local_config(cache))
    return {"copied": copied, "unchanged": same}
