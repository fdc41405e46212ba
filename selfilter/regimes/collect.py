"""Keep one regime's results, and measure what the regime actually was.

The knobs say what a regime should be; the collected record says what it was: the share of the
pool with a broken answer and of near-duplicates (hidden labels), the share of crowded scenes
(5+ objects, from the scene annotations), and how well the judge told clean from broken
(selfilter.judge.quality). The results themselves are the workspace's reports/metrics.json and
calibration.json, copied as they are.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from selfilter.io import read_json, read_jsonl, write_json

CROWDED = 5       # objects in a scene from which it counts as crowded (hard to count, bind, describe)
RESULT_FILES = ("reports/metrics.json", "reports/calibration.json", "reports/summary.json")


def pool_profile(ws: Path) -> dict[str, Any]:
    """Shares measured on the workspace's ingested pool (what the source has)."""
    pool = ws / "data" / "pool"
    records = read_jsonl(pool / "records.jsonl")
    out: dict[str, Any] = {"n_records": len(records)}
    if (pool / "hidden.jsonl").is_file():
        kinds = Counter(str(h["kind"]) for h in read_jsonl(pool / "hidden.jsonl"))
        n = sum(kinds.values()) or 1
        out["kinds"] = dict(sorted(kinds.items()))
        out["broken_share"] = sum(kinds[k] for k in ("wrong_answer", "low_information", "truncated")) / n
        out["near_duplicate_share"] = kinds["near_duplicate"] / n
    if (pool / "scenes.jsonl").is_file():
        counts = [len(s.get("objects", [])) for s in read_jsonl(pool / "scenes.jsonl")]
        out["crowded_share"] = sum(c >= CROWDED for c in counts) / max(len(counts), 1)
        out["objects_histogram"] = dict(sorted(Counter(counts).items()))
    return out


def judge_profile(ws: Path) -> dict[str, Any] | None:
    """The judge's accuracy on this pool, or None when the data has no hidden labels or no judge ran."""
    import pandas as pd

    from selfilter.judge.quality import quality_from_files

    ratings, hidden = ws / "judge" / "ratings.parquet", ws / "data" / "pool" / "hidden.jsonl"
    if not ratings.is_file() or not hidden.is_file():
        return None
    table = pd.read_parquet(ratings)
    if table.empty:
        return None
    usage = read_json(ws / "judge" / "usage.json") if (ws / "judge" / "usage.json").is_file() else {}
    quality = quality_from_files(table.to_dict("records"), read_jsonl(ws / "data" / "pool" / "records.jsonl"),
                                 read_jsonl(hidden))
    return {"view": usage.get("view", usage.get("backend")), **quality}


def collect_regime(ws: Path, dest: Path, name: str, regime: Mapping[str, Any],
                   overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Copy the results into ``dest`` and write ``dest/regime.json``; return the latter."""
    missing = [f for f in RESULT_FILES[:2] if not (ws / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{ws}: no {', '.join(missing)} - the regime's pipeline did not finish")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in RESULT_FILES:
        if (ws / rel).is_file():
            tmp = dest / (Path(rel).name + ".partial")
            shutil.copyfile(ws / rel, tmp)
            tmp.replace(dest / Path(rel).name)
    from selfilter.grid import code_digest
    from selfilter.machine import cpu_description

    # the code and the CPU the results came from: training this small model is chaotic, so a rerun
    # on other code or another instruction set (AVX2 vs AVX-512 kernels) is a fresh draw of its
    # seed noise - a map mixing them says so
    record = {"name": name, **dict(regime), "overrides": dict(overrides), "workspace": str(ws),
              "code": code_digest(ws)[:16], "machine": cpu_description(),
              "pool": pool_profile(ws), "judge": judge_profile(ws)}
    write_json(dest / "regime.json", record)
    return record
