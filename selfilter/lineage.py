"""The pipeline's lineage, read from the workspace into plain records: no MLflow here.

Stages never log to MLflow themselves; they write outputs, sidecars and metrics files (see
docs/ARCHITECTURE.md). :func:`collect_lineage` reads those files (dvc.lock, params.yaml, the
stages' metrics, training curves and logs, the selections, the comparison index) into a
:class:`Lineage`: one :class:`RunRecord` per MLflow run that ``track`` will log, per pipeline run:

- one **parent** run (``selfilter.kind = pipeline``) tagged with the git commit, the DVC stage
  hashes from ``dvc.lock`` and the pipeline digest; the comparison report, plots, params.yaml
  and dvc.lock as artifacts; the pool as a dataset input with its digest;
- one nested **stage** run per DVC stage (``selfilter.kind = stage``): its params (from
  dvc.lock, else params.yaml), metrics (``metrics/<stage>.json``), training curves as step
  metrics (``stage1/*/loss.csv``), difficulty histograms, the score net, judge usage, sidecars;
- one nested **aggregate** run per (method, budget) (``selfilter.kind = aggregate``, no seed):
  the overall mean under the same ``overall`` key as the per-seed runs, its std, interval, seed
  count, gap to random and whether the report's test separates it, each benchmark's mean
  (``selfilter.report.aggregates``); the parent keeps a handful of headline metrics, and no run
  logs more than 200;
- one nested **comparison** run per (method, budget, seed) of ``reports/metrics.json``
  (``selfilter.kind = comparison``): params ``method``, ``budget``, ``seed`` + ``finetune.*`` and
  ``select.*``; every benchmark metric; the fine-tuning curve; the selected uids and the
  lmms-eval results file; the subset and the pool as dataset inputs with digests.

Why a module of its own: reading is separate from logging (:mod:`selfilter.tracking`, the only
module that talks to MLflow), so what gets logged is testable without a store, and this module
never imports MLflow. The names and values it produces already fit MLflow's rules
(:func:`mlflow_key`, the length limits below), so the records are logged as they are.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfilter.config import parse_yaml
from selfilter.io import file_digest, read_json
from selfilter.report.aggregates import aggregate_rows, headline

SELF_STAGE = "track"  # excluded from the pipeline digest: its own lock entry is stale while it runs
DIGEST = "selfilter.pipeline_digest"

# MLflow's own limits (mlflow.utils.validation): key length, param value length, dataset digest column.
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_DIGEST_CHARS = 32  # the sqlalchemy store's dataset digest column holds 36 characters


# --------------------------------------------------------------------------------------------
# Naming: MLflow keys allow only [A-Za-z0-9_ .-/:] and no path tricks ('..', '//', leading '/').
# --------------------------------------------------------------------------------------------
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.\- /]")  # ':' left out: Windows stores reject it


def mlflow_key(name: str) -> str:
    """Map a metric/param/tag name to a valid MLflow key, deterministically.

    lmms-eval names look like ``task/exact_match,none``: the comma separates the filter, so it
    becomes a path segment, and the default filter ``none`` is dropped (``task/exact_match``).
    Every other disallowed character becomes ``_``; empty, ``.`` and ``..`` segments are removed
    or replaced, so the key is a clean relative path. Use :func:`mlflow_keys` for a set of
    names: it resolves the rare collisions this mapping can create.
    """
    s = str(name).replace(",", "/")
    s = _BAD_CHARS.sub("_", s)
    parts = [p.strip() for p in s.split("/")]
    parts = ["_" if p in (".", "..") else p for p in parts if p]
    if len(parts) > 1 and parts[-1] == "none":
        parts = parts[:-1]
    key = "/".join(parts) or "_"
    return key[:_MAX_KEY]


def mlflow_keys(names: list[str] | Mapping[str, Any]) -> dict[str, str]:
    """``{name: key}`` for several names; names that collide get a short hash of themselves."""
    keys = {n: mlflow_key(n) for n in names}
    seen: dict[str, list[str]] = {}
    for n, k in keys.items():
        seen.setdefault(k, []).append(n)
    for k, group in seen.items():
        if len(group) > 1:
            for n in group:
                suffix = "_" + hashlib.sha1(n.encode()).hexdigest()[:6]
                keys[n] = k[: _MAX_KEY - len(suffix)] + suffix
    return keys


def flatten(obj: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": leaf}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{sep}{k}" if prefix else str(k), sep))
    elif prefix:
        out[prefix] = obj
    return out


def numeric_leaves(obj: Any, sep: str = "/") -> dict[str, float]:
    """The numeric leaves of a metrics JSON (bools and strings skipped)."""
    return {k: float(v) for k, v in flatten(obj, sep=sep).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s[:_MAX_PARAM_VALUE]


# --------------------------------------------------------------------------------------------
# Lineage identity: git commit, DVC stage hashes, pipeline digest.
# --------------------------------------------------------------------------------------------
def _canonical_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_dvc_lock(path: Path) -> dict[str, Any]:
    """The ``stages`` mapping of a dvc.lock, or ``{}`` when there is none."""
    if not path.is_file():
        return {}
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    stages = data.get("stages", {}) if isinstance(data, dict) else {}
    if not isinstance(stages, dict):
        raise ValueError(f"{path}: 'stages' is not a mapping")
    return stages


def dvc_stage_hashes(lock_stages: Mapping[str, Any]) -> dict[str, str]:
    """``{stage: hash}``: DVC keeps no single hash per stage, so hash its lock entry
    (cmd + deps/params/outs with their md5s): it changes exactly when the stage's inputs,
    command or outputs change. 12 hex characters, like a short git hash."""
    return {name: _canonical_digest(entry)[:12] for name, entry in sorted(lock_stages.items())}


def pipeline_digest(lock_stages: Mapping[str, Any], fallback: Path | None = None) -> str:
    """Identity of a pipeline run's outputs: the lock entries of every stage but ``track``
    (whose own entry is stale while it runs); without a dvc.lock, the digest of ``fallback``."""
    upstream = {k: v for k, v in lock_stages.items() if k.split("@")[0] != SELF_STAGE}
    if upstream:
        return _canonical_digest(upstream)[:_DIGEST_CHARS]
    if fallback is not None and fallback.exists():
        return file_digest(fallback)[:_DIGEST_CHARS]
    return "none"


def git_commit(root: Path) -> str:
    """HEAD's commit (``+dirty`` when tracked files changed), or ``unknown`` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


# --------------------------------------------------------------------------------------------
# Reading the pipeline's outputs into plain records (no MLflow here).
# --------------------------------------------------------------------------------------------
@dataclass
class DatasetRef:
    """A file used as data, identified by its sha256 (MLflow keeps the first 32 hex digits)."""

    name: str
    path: Path
    sha256: str
    num_rows: int | None = None


@dataclass
class RunRecord:
    """What one MLflow run will hold."""

    key: str  # idempotency key, unique within the parent
    name: str
    kind: str  # "stage" | "aggregate" | "comparison" | "regimes" | "regime"
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # name -> [(step, value)]
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[Path, str]] = field(default_factory=list)  # (file, artifact dir)
    histograms: dict[str, list[float]] = field(default_factory=dict)  # PNG name -> values
    json_artifacts: dict[str, Any] = field(default_factory=dict)  # file name -> content
    datasets: list[tuple[DatasetRef, str]] = field(default_factory=list)  # (dataset, context)


@dataclass
class Lineage:
    """Everything ``track`` logs for one pipeline run."""

    digest: str
    tags: dict[str, str]
    parent: RunRecord
    stages: list[RunRecord]
    comparisons: list[RunRecord]
    aggregates: list[RunRecord] = field(default_factory=list)


def _dataset(name: str, path: Path) -> DatasetRef:
    rows = None
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            rows = sum(1 for line in f if line.strip())
    elif path.suffix == ".json":
        data = read_json(path)
        rows = len(data) if isinstance(data, list) else None
    return DatasetRef(name=name, path=path, sha256=file_digest(path), num_rows=rows)


def read_curve_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """A CSV with a header -> one step series per numeric column (``step`` column, else row)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            step = _as_step(row.get("step"), i, path)
            for col, v in row.items():
                if col in ("step", None) or v in ("", None):
                    continue
                try:
                    value = float(v)
                except ValueError:
                    continue  # text columns (e.g. a phase name) are not curves
                curves.setdefault(col, []).append((step, value))
    return curves


def _train_log_head(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def _where_trained(path: Path) -> dict[str, str]:
    """The host and grid worker that trained a run (train_log.json; flows/grid.py), as tags."""
    head = _train_log_head(path)
    return {f"selfilter.{k}": str(head[k]) for k in ("host", "worker") if head.get(k)}


def _train_wall_s(path: Path) -> float | None:
    wall = _train_log_head(path).get("wall_s")
    return float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None


def read_train_log(path: Path) -> dict[str, list[tuple[int, float]]]:
    """A training log JSON -> step series. Accepted shapes: a list of ``{"step", <name>: number}``
    entries, or an object holding that list under ``log_history`` (Hugging Face's
    trainer_state.json), ``history`` or ``log``."""
    data = read_json(path)
    if isinstance(data, dict):
        data = next((data[k] for k in ("log_history", "history", "log") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of log entries (or one under 'log_history')")
    curves: dict[str, list[tuple[int, float]]] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {i} is not an object")
        step = _as_step(entry.get("step"), i, path)
        for k, v in entry.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                curves.setdefault(k, []).append((step, float(v)))
    return curves


def _as_step(v: Any, default: int, path: Path) -> int:
    if v in (None, ""):
        return default
    try:
        return int(float(v))
    except (TypeError, ValueError):
        raise ValueError(f"{path}: step {v!r} is not a number") from None


def _selected_uids(path: Path) -> list[int]:
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of LLaVA-format records")
    uids = []
    for i, r in enumerate(data):
        if not isinstance(r, dict) or not isinstance(r.get("uid"), int):
            raise ValueError(f"{path}: record {i} has no integer 'uid'")
        uids.append(r["uid"])
    return uids


def _stage_params(entries: list[Mapping[str, Any]], section: Mapping[str, Any] | None,
                  name: str) -> dict[str, str]:
    """Params a stage depends on: its dvc.lock ``params`` (exact keys), else its params.yaml
    section. For foreach stages the keys shared by every member with one value are kept."""
    merged: dict[str, Any] = {}
    conflicting: set[str] = set()
    for entry in entries:
        for values in (entry.get("params") or {}).values():  # {params file: {key: value}}
            for k, v in flatten(values or {}).items():
                if k in merged and merged[k] != v:
                    conflicting.add(k)
                merged.setdefault(k, v)
    if not merged and section:
        merged = flatten(section, prefix=name)
    return {k: param_value(v) for k, v in merged.items() if k not in conflicting}


def collect_lineage(root: str | Path, *, params_path: str | Path = "params.yaml",
                    records: str | Path = "data/pool/records.jsonl",
                    report: str | Path = "reports/metrics.json",
                    exclude: tuple[str | Path, ...] = ()) -> Lineage:
    """Read the pipeline's outputs under ``root`` (data contracts of docs/ARCHITECTURE.md).

    Relative paths are relative to ``root``; missing optional outputs are simply not logged,
    but ``report`` must exist: tracking a pipeline that produced no comparison is an error.
    ``exclude`` lists files not to read (the track stage's own output).
    """
    root = Path(root)

    def rel(p: str | Path) -> Path:
        return Path(p) if Path(p).is_absolute() else root / p

    params_file, records_file, report_file = rel(params_path), rel(records), rel(report)
    excluded = {rel(p).resolve() for p in exclude}

    params = parse_yaml(params_file.read_text(encoding="utf-8")) if params_file.is_file() else {}
    params = params or {}
    lock = read_dvc_lock(root / "dvc.lock")
    hashes = dvc_stage_hashes(lock)
    digest = pipeline_digest(lock, fallback=report_file)
    if not report_file.is_file():
        raise FileNotFoundError(f"{report_file}: comparison index not found (run the compare stage first)")
    report_data = read_json(report_file)
    if not isinstance(report_data, dict) or not isinstance(report_data.get("runs"), list):
        raise ValueError(f"{report_file}: expected an object with a 'runs' list")

    pool = _dataset("pool", records_file) if records_file.is_file() else None
    tags = {"git.commit": git_commit(root), DIGEST: digest}
    tags["mlflow.source.git.commit"] = tags["git.commit"].removesuffix("+dirty")
    # one tag per stage but track: while it runs, its own lock entry is its previous run's
    upstream = {s: h for s, h in hashes.items() if s.split("@")[0] != SELF_STAGE}
    tag_keys = mlflow_keys([f"dvc.stage.{s}" for s in upstream])
    tags.update({tag_keys[f"dvc.stage.{s}"]: h for s, h in upstream.items()})

    # Parent: the report, plots and the files that define the run.
    parent = RunRecord(key="pipeline", name=f"pipeline {digest[:8]}", kind="pipeline", tags=dict(tags))
    for p in [report_file, report_file.parent / "comparison.md", report_file.parent / "comparison.html",
              params_file, root / "dvc.lock"]:
        if p.is_file():
            parent.artifacts.append((p, "pipeline"))
    for p in sorted((report_file.parent / "plots").glob("*.png")):
        parent.artifacts.append((p, "pipeline/plots"))
    # A handful of headline numbers; the full index (thousands of leaves) stays the metrics.json artifact.
    summary = report_data.get("summary") if isinstance(report_data.get("summary"), dict) else {}
    parent.metrics = headline(summary, len(report_data["runs"]))
    if pool:
        parent.datasets.append((pool, "pool"))

    stages = _collect_stages(root, params, lock, hashes, excluded)
    comparisons = _collect_comparisons(root, params, report_file, report_data, pool)
    compare = params.get("compare") if isinstance(params.get("compare"), dict) else {}
    aggregates = [RunRecord(key=f"aggregate/{row['method']}/b{row['budget']:g}",
                            name=f"{row['method']} b{row['budget']:g} (mean of {row['params']['n_seeds']})",
                            kind="aggregate", params=row["params"], metrics=row["metrics"])
                  for row in aggregate_rows(summary, str(compare.get("baseline_method", "random")),
                                            float(compare.get("confidence", 0.95)))]
    return Lineage(digest=digest, tags=tags, parent=parent, stages=stages, comparisons=comparisons,
                   aggregates=aggregates)


def _collect_stages(root: Path, params: dict[str, Any], lock: Mapping[str, Any],
                    hashes: Mapping[str, str], excluded: set[Path]) -> list[RunRecord]:
    groups: dict[str, list[str]] = {}
    for name in lock:
        base = name.split("@")[0]
        if base != SELF_STAGE:
            groups.setdefault(base, []).append(name)
    metrics_files = {p.stem: p for p in sorted((root / "metrics").glob("*.json"))
                     if p.resolve() not in excluded and not p.name.endswith(".meta.json")}  # sidecars aren't metrics
    names = list(groups) + [s for s in metrics_files if s not in groups]
    for extra, present in (("stage1", (root / "stage1").is_dir()), ("judge", (root / "judge").is_dir())):
        if present and extra not in names:
            names.append(extra)

    runs = []
    for name in names:
        members = groups.get(name, [])
        run = RunRecord(key=f"stage/{name}", name=name, kind="stage")
        section = params.get(name) if isinstance(params.get(name), dict) else None
        run.params = _stage_params([lock[m] for m in members], section, name)
        if len(members) == 1:
            run.tags["dvc.stage_hash"] = hashes[members[0]]
        elif members:
            run.json_artifacts["dvc_stages.json"] = {m: hashes[m] for m in members}
        if name in metrics_files:
            run.metrics.update(numeric_leaves(read_json(metrics_files[name])))
        runs.append(run)

    by_name = {r.name: r for r in runs}
    if "stage1" in by_name:
        _collect_stage1(root / "stage1", by_name["stage1"])
    if "judge" in by_name:
        usage = root / "judge" / "usage.json"
        if usage.is_file():
            by_name["judge"].artifacts.append((usage, "judge"))
            by_name["judge"].metrics.update({f"usage/{k}": v for k, v in numeric_leaves(read_json(usage)).items()})
    return runs


def _collect_stage1(stage_dir: Path, run: RunRecord) -> None:
    """Per feature setting: loss curves, difficulty histogram + summary, score net, sidecars."""
    import pandas as pd

    for setting in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
        s = setting.name
        if (setting / "loss.csv").is_file():
            for col, series in read_curve_csv(setting / "loss.csv").items():
                run.curves[f"{s}/{col}"] = series
        diff_file = setting / "difficulty.parquet"
        if diff_file.is_file():
            df = pd.read_parquet(diff_file)
            if "difficulty" not in df.columns:
                raise ValueError(f"{diff_file}: no 'difficulty' column (columns: {list(df.columns)})")
            d = df["difficulty"].to_numpy(dtype=float)
            run.histograms[f"difficulty_{s}.png"] = d.tolist()
            if len(d):
                run.metrics.update({f"{s}/difficulty_mean": float(d.mean()), f"{s}/difficulty_std": float(d.std()),
                                    f"{s}/difficulty_min": float(d.min()), f"{s}/difficulty_max": float(d.max())})
        for p in sorted(setting.glob("*.safetensors")) + sorted(setting.glob("*.meta.json")):
            run.artifacts.append((p, f"stage1/{s}"))


def _collect_comparisons(root: Path, params: dict[str, Any], report_file: Path,
                         report_data: dict[str, Any], pool: DatasetRef | None) -> list[RunRecord]:
    # The recipe and selection knobs every compared run shares, under their params.yaml names.
    shared = {k: param_value(v) for sec in ("finetune", "select")
              for k, v in flatten(params.get(sec) or {}, prefix=sec).items()}
    runs, seen = [], set()
    for i, entry in enumerate(report_data["runs"]):
        where = f"{report_file}: runs[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: not an object")
        missing = [k for k in ("method", "budget", "seed", "metrics") if k not in entry]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        method, budget, seed = str(entry["method"]), float(entry["budget"]), int(entry["seed"])
        key = f"comparison/{method}/b{budget:g}/s{seed}"
        if key in seen:
            raise ValueError(f"{where}: ({method}, {budget:g}, {seed}) appears twice")
        seen.add(key)
        run = RunRecord(key=key, name=f"{method} b{budget:g} s{seed}", kind="comparison")
        run.params = {**shared, "method": method, "budget": param_value(budget), "seed": str(seed)}
        if entry.get("n_selected") is not None:
            run.params["n_selected"] = str(entry["n_selected"])
        metrics = entry["metrics"]
        if not isinstance(metrics, dict):
            raise ValueError(f"{where}: 'metrics' is not an object")
        run.metrics = {k: float(v) for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}

        selection = entry.get("selection")
        if selection:
            sel = root / selection
            if not sel.is_file():
                raise FileNotFoundError(f"{where}: selection {sel} not found")
            run.json_artifacts["selected_uids.json"] = _selected_uids(sel)
            run.datasets.append((_dataset(f"{method}_b{budget:g}_s{seed}", sel), "training"))
            if (sel.parent / "meta.json").is_file():
                run.artifacts.append((sel.parent / "meta.json", "selection"))
        if pool:
            run.datasets.append((pool, "pool"))
        if entry.get("eval"):
            ev = root / entry["eval"]
            if not ev.is_file():
                raise FileNotFoundError(f"{where}: eval results {ev} not found")
            run.artifacts.append((ev, "eval"))
        if entry.get("checkpoint"):
            ckpt = root / entry["checkpoint"]
            for name in ("train_log.json", "trainer_state.json"):
                if (ckpt / name).is_file():
                    run.curves.update({f"train/{k}": v for k, v in read_train_log(ckpt / name).items()})
                    break
            run.tags.update(_where_trained(ckpt / "train_log.json"))
            wall = _train_wall_s(ckpt / "train_log.json")
            if wall is not None:
                run.metrics["train_wall_s"] = wall
        runs.append(run)
    return runs
