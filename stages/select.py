"""select stage: one selection method over every (budget, seed) of params.

    python -m stages.select --params params.yaml --method NAME --records data/pool/records.jsonl \
        [--features features/clip.npy] [--stage1 stage1] [--judge judge/ratings.parquet] \
        [--el2n el2n/scores.parquet] [--clip-scores features/scores.parquet] [--ifd ifd/scores.parquet] \
        [--activations ifd/activations.npy] [--less less/scores.parquet] \
        [--hidden data/pool/hidden.jsonl] [--scenes data/pool/scenes.jsonl] [--source data/pool/source.json] --out selections/NAME

Reads only the inputs the method declares (the registry enforces it; only the ``oracle_*``
controls read the hidden labels and, for ``oracle_hard``, the scene annotations). Writes, per budget fraction and seed, OUT/b{budget}_s{seed}/:
``subset.json`` (the selected records exactly as read from records.jsonl, ``uid`` included, in
pick/rank order: a LLaVA-format JSON array), ``trace.parquet`` (rank, uid, score at pick) and
``meta.json`` (method, budget, seed, counts, wall_seconds of the selection, params, input digests,
``stats`` of how it ran - for Self-Filter the neighbour index chosen and its counters -
and ``scoring``: the wall time and model passes of the scoring stage the method's inputs came from,
read from that stage's metrics.json, so model-pass methods show their whole cost).
Deterministic methods (Self-Filter variants, full) are computed once per budget and written for
every seed (``meta.json``: ``"deterministic": true``), so downstream stages see a full grid.
``full`` runs only at budget 1.0 whatever ``select.budgets`` says.
A method that reads what this data lacks (judge ratings without a judge that can rate it, hidden
labels) is left out: OUT holds only ``left_out.json`` with the reason (selfilter.needs).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from selfilter import console, needs
from selfilter.config import ConfigError, load_section
from selfilter.data.records import load_records
from selfilter.data.source import read_source
from selfilter.holdpoints import hold
from selfilter.io import file_digest, read_jsonl, write_json, write_parquet
from selfilter.selection import registry as reg
from selfilter.selection.config import SelectConfig, budget_count, subset_dirname
from stages._common import StageParser

STAGE1_SETTINGS = {reg.DIFFICULTY_SCORES: "scores", reg.DIFFICULTY_CLIP: "clip"}
# input name -> command-line flag (attribute) of its file
FLAGS = {reg.FEATURES: "features", reg.JUDGE: "judge", reg.EL2N: "el2n", reg.CLEAN: "hidden", reg.SCENE_SIZE: "scenes",
         reg.CLIP_SCORE: "clip_scores", reg.IFD: "ifd", reg.ACTIVATIONS: "activations", reg.LESS: "less"}
# uid-keyed score tables: input name -> column
COLUMNS = {reg.CLIP_SCORE: "clip_score", reg.IFD: "ifd", reg.LESS: "less"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(reg.METHODS)}")
    p.add_argument("--records", required=True, help="records.jsonl from ingest")
    p.add_argument("--features", help="CLIP features clip.npy [N, 2D] (Self-Filter, prototypicality)")
    p.add_argument("--stage1", help="stage1 folder holding <setting>/difficulty.parquet (Self-Filter)")
    p.add_argument("--judge", help="judge ratings.parquet (alpagasus)")
    p.add_argument("--el2n", help="el2n scores.parquet (el2n)")
    p.add_argument("--clip-scores", dest="clip_scores", help="features scores.parquet (clip_score)")
    p.add_argument("--ifd", help="ifd scores.parquet (ifd)")
    p.add_argument("--activations", help="ifd activations.npy [N, L*H] (coincide)")
    p.add_argument("--less", help="less scores.parquet (less)")
    p.add_argument("--hidden", help="hidden imperfection labels, {id, kind} per line (oracle_* controls only)")
    p.add_argument("--scenes", help="scene annotations, {image, objects} per line (oracle_hard control only)")
    p.add_argument("--source", help="the pool's source.json: which side files the data has (selfilter.needs)")
    p.add_argument("--method-params", dest="method_params",
                   help="select_params/<method>.json of the select_params stage: checked against params")
    p.add_argument("--out", required=True, help="output folder, selections/<method>")
    p.add_argument("--no-progress", action="store_true")


def _aligned(path: str, column: str, uids: np.ndarray, allow_nan: bool = False) -> np.ndarray:
    """``column`` of a uid-keyed parquet table, in records.jsonl row order."""
    try:
        df = pd.read_parquet(path, columns=["uid", column])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: needs columns 'uid' and '{column}' ({e})") from None
    if df["uid"].duplicated().any():
        raise ValueError(f"{path}: uid={int(df['uid'][df['uid'].duplicated()].iloc[0])} appears twice")
    s = df.set_index("uid")[column]
    missing = np.setdiff1d(uids, s.index.to_numpy())
    if missing.size:
        raise ValueError(f"{path}: no row for uid={int(missing[0])} ({missing.size} records missing)")
    values = s.loc[uids].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values) & ~(allow_nan & np.isnan(values)))
    if bad.size:
        raise ValueError(f"{path}: '{column}' is not finite for uid={int(uids[bad[0]])}")
    return values


def _features(path: str, n: int) -> np.ndarray:
    x = np.load(path, mmap_mode="r", allow_pickle=False)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"{path}: expected [{n}, F] rows aligned with records.jsonl, got {list(x.shape)}")
    return x


def _clean_mask(path: str, records: list[dict]) -> np.ndarray:
    kinds: dict = {}
    for row in read_jsonl(path):
        kinds[row["id"]] = row["kind"]
    mask = np.empty(len(records), dtype=bool)
    for i, r in enumerate(records):
        if r.get("id") not in kinds:
            raise ValueError(f"{path}: no label for record uid={r['uid']} id={r.get('id')!r}")
        mask[i] = kinds[r["id"]] == "clean"
    return mask


def _scene_sizes(path: str, records: list[dict]) -> np.ndarray:
    """Objects in each record's scene annotation (keyed by the record's image), row-aligned."""
    from selfilter.judge.annotation import index_scenes

    scenes = index_scenes(read_jsonl(path), source=path)
    out = np.empty(len(records), dtype=np.int64)
    for i, r in enumerate(records):
        scene = scenes.get(str(r.get("image")))
        if scene is None:
            raise ValueError(f"{path}: no scene for record uid={r['uid']} image={r.get('image')!r}")
        if not isinstance(scene.get("objects"), list):
            raise ValueError(f"{path}: the scene of image {r['image']!r} has no 'objects' list")
        out[i] = len(scene["objects"])
    return out


def build_inputs(args: argparse.Namespace, method: reg.Method, records: list[dict]) -> reg.SelectionInputs:
    """Lazy loaders for exactly the inputs ``method`` declares; a missing path is a user error."""
    uids = np.array([r["uid"] for r in records], dtype=np.int64)
    n = len(records)
    flag = {**FLAGS, reg.DIFFICULTY_SCORES: "stage1", reg.DIFFICULTY_CLIP: "stage1"}
    loaders = {}
    for need in method.needs:
        path = getattr(args, flag[need])
        if not path:
            raise ValueError(f"method '{method.name}' needs --{flag[need]}")
        if need in (reg.FEATURES, reg.ACTIVATIONS):
            loaders[need] = lambda p=path: _features(p, n)
        elif need in STAGE1_SETTINGS:
            f = Path(path) / STAGE1_SETTINGS[need] / "difficulty.parquet"
            loaders[need] = lambda p=f: _aligned(str(p), "difficulty", uids)
        elif need == reg.JUDGE:
            loaders[need] = lambda p=path: _aligned(p, "rating", uids)
        elif need == reg.EL2N:
            loaders[need] = lambda p=path: _aligned(p, "el2n", uids)
        elif need in COLUMNS:
            loaders[need] = lambda p=path, c=COLUMNS[need]: _aligned(p, c, uids, allow_nan=need == reg.IFD)
        elif need == reg.CLEAN:
            loaders[need] = lambda p=path: _clean_mask(p, records)
        elif need == reg.SCENE_SIZE:
            loaders[need] = lambda p=path: _scene_sizes(p, records)
    return reg.SelectionInputs(n, loaders)


def input_paths(args: argparse.Namespace, method: reg.Method) -> dict[str, Path]:
    paths = {"records": Path(args.records)}
    for need in method.needs:
        if need in STAGE1_SETTINGS:
            paths[need] = Path(args.stage1) / STAGE1_SETTINGS[need] / "difficulty.parquet"
        else:
            paths[need] = Path(getattr(args, FLAGS[need]))
    return paths


def scoring_cost(args: argparse.Namespace, method: reg.Method) -> dict | None:
    """Wall time and model passes of the model-pass stage(s) whose outputs ``method`` reads, from
    the ``metrics.json`` next to them (``wall_s``, ``model_passes``); None when it reads none."""
    total, parts = {"wall_s": 0.0, "model_passes": 0}, []
    for need in method.needs:
        if need not in (reg.EL2N, reg.IFD, reg.ACTIVATIONS, reg.LESS):
            continue
        metrics = Path(getattr(args, FLAGS[need])).parent / "metrics.json"
        if not metrics.is_file() or str(metrics) in parts:
            continue
        m = json.loads(metrics.read_text())
        total["wall_s"] += float(m.get("wall_s") or 0.0)
        passes = m.get("model_passes")  # unknown (None) once any source does not say
        total["model_passes"] = None if passes is None or total["model_passes"] is None else \
            total["model_passes"] + int(passes)
        parts.append(str(metrics))
    return {**total, "sources": parts} if parts else None


def left_out_reason(args: argparse.Namespace, method: reg.Method) -> str | None:
    """Why ``method`` cannot run on this data (selfilter.needs), or None."""
    source = read_source(args.source) if args.source else None
    has_hidden = source.hidden_labels if source else bool(args.hidden)
    has_scenes = source.scenes if source else bool(args.scenes)
    stage1 = {s: needs.read_left_out(Path(args.stage1) / s) for s in ("scores", "clip")} if args.stage1 else {}
    why = needs.method_missing(method.needs, judge_reason=needs.judge_left_out(args.judge),
                               has_hidden=has_hidden, stage1_reasons=stage1, has_scenes=has_scenes)
    for need in method.needs:  # a scoring stage that left itself out (e.g. less on data it cannot target)
        path = getattr(args, FLAGS.get(need, ""), None)
        upstream = needs.read_left_out(Path(path).parent) if path else None
        if not why and upstream:
            why = f"it reads {need} scores, and their stage was left out: {upstream}"
    return why


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("select", SelectConfig, args.params)
    method = reg.get_method(args.method)
    records = load_records(args.records)
    options = reg.options_from_config(cfg, show_progress=not args.no_progress)
    params = reg.method_params(method, cfg)
    if args.method_params:
        # DVC reruns this stage only when that file changes: it must say what params.yaml says
        written = json.loads(Path(args.method_params).read_text())
        if written != json.loads(json.dumps(params)):
            raise ValueError(f"{args.method_params} does not match {args.params} (select section); "
                             "rerun the select_params stage (dvc repro)")
    out = Path(args.out)
    why = left_out_reason(args, method)
    if why:
        for old in out.glob("b*_s*") if out.is_dir() else ():
            shutil.rmtree(old)
        needs.write_left_out(out, method.name, why)
        print(needs.line(method.name, why))
        return 0
    (out / needs.LEFT_OUT_FILE).unlink(missing_ok=True)
    # after the left-out check: a method the data cannot feed is said in one line, not refused
    # for a missing --flag
    inputs = build_inputs(args, method, records)
    digests = {name: {"path": str(p), "sha256": file_digest(p)} for name, p in input_paths(args, method).items()}
    scoring = scoring_cost(args, method)
    budgets = method.budgets or tuple(cfg.budgets)
    wanted = {subset_dirname(b, s) for b in budgets for s in cfg.seeds}
    if out.is_dir():  # outputs of a previous grid must not linger next to this one
        for old in out.glob("b*_s*"):
            if old.is_dir() and old.name not in wanted:
                shutil.rmtree(old)
    written, compute_s = [], 0.0
    for budget in budgets:
        n_sel = budget_count(budget, len(records))
        picked = None
        for seed in cfg.seeds:
            if picked is None or not method.deterministic:
                t0 = time.perf_counter()
                picked = reg.run_method(method.name, inputs, n_sel, seed, options)
                wall = time.perf_counter() - t0
                compute_s += wall
            folder = out / subset_dirname(budget, seed)
            idx = picked.indices
            write_json(folder / "subset.json", [records[i] for i in idx], indent=None)
            write_parquet(folder / "trace.parquet", pd.DataFrame({
                "rank": np.arange(len(idx), dtype=np.int64),
                "uid": np.array([records[i]["uid"] for i in idx], dtype=np.int64),
                "score": picked.scores.astype(np.float64)}))
            write_json(folder / "meta.json", {
                "method": method.name, "budget": budget, "seed": seed, "n_pool": len(records),
                "n_selected": len(idx), "wall_seconds": round(wall, 4),
                "deterministic": method.deterministic, "control": method.control,
                "scoring": scoring, "params": params, "inputs": digests,
                "stats": picked.stats})
            written.append((budget, len(idx)))
            hold("select.subset_written")  # test-only kill point (selfilter/holdpoints.py); off unless the suite sets it
    # one line for the stage (the per-subset figures are in each meta.json)
    sizes = ", ".join(f"{b * 100:g}%: {n}" for b, n in dict.fromkeys(written))
    print(f"select: {method.name}: {len(written)} subsets of the {len(records)}-record pool ({sizes}; "
          f"{len(cfg.seeds)} seed(s)), {compute_s:.2f} s -> {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, KeyError, FileNotFoundError, ConfigError, reg.InputNotAllowed) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"select: error: {msg}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    console.setup()
    p = StageParser("stages.select", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
