"""A synthetic finished grid (selections, runs, evals, hidden labels, bench) with chosen scores."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

N_POOL = 20
# method -> (control, budgets, base score); a run scores base + 0.01 * seed on every metric
GRID = {
    "full": (False, (1.0,), 0.80),
    "random": (False, (0.05, 0.15), 0.50),
    "self_filter_scores": (False, (0.05, 0.15), 0.45),
    "oracle_clean": (True, (0.05, 0.15), 0.70),
}
METRICS = ("shapes_vqa/exact_match", "shapes_vqa/acc_color", "shapes_vqa/acc_size",
           "shapes_pope/accuracy", "shapes_pope/accuracy_random", "shapes_count/exact_match")
KINDS = ["clean"] * 10 + ["wrong_answer"] * 10  # uid i -> kind; uids >= 10 are imperfect


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def build_grid(root: Path, seeds=(0, 1, 2), grid=GRID) -> Path:
    for method, (control, budgets, base) in grid.items():
        for b in budgets:
            n = max(1, round(b * N_POOL))
            for seed in seeds:
                name = f"b{float(b)}_s{seed}"
                sel = root / "selections" / method / name
                # oracle_clean picks clean uids only, the others half-and-half
                uids = list(range(n)) if control else [(i * 7 + seed) % N_POOL for i in range(n)]
                _write(sel / "meta.json", {"method": method, "budget": b, "seed": seed, "n_pool": N_POOL,
                                           "n_selected": n, "wall_seconds": 0.01, "control": control})
                pd.DataFrame({"rank": range(n), "uid": uids, "score": [0.0] * n}).to_parquet(sel / "trace.parquet")
                _write(sel / "subset.json", [])
                run = root / "runs" / method / name
                _write(run / "config.json", {})
                _write(run / "train_log.json", {"recipe": "equal_epochs", "steps": 3 * n, "wall_s": 0.1 * n, "log": []})
                _write(root / "evals" / method / name / "metrics.json",
                       {k: base + 0.01 * seed for k in METRICS})
    records = [{"id": f"r{i}", "uid": i} for i in range(N_POOL)]
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data/records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "data/imperfections.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "kind": k}) + "\n" for i, k in enumerate(KINDS)))
    bench = root / "bench"
    bench.mkdir(exist_ok=True)
    # majority baselines: color 2/3 (red), size 1/2, count 1/2, pope/random 1/2
    (bench / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"qtype": "color", "answer": "red"}, {"qtype": "color", "answer": "Red"}, {"qtype": "color", "answer": "blue"},
        {"qtype": "size", "answer": "small"}, {"qtype": "size", "answer": "large"}]))
    (bench / "count.jsonl").write_text('{"answer": "1"}\n{"answer": "2"}\n')
    (bench / "pope.jsonl").write_text('{"answer": "yes", "split": "random"}\n{"answer": "no", "split": "random"}\n')
    _write(root / "judge/usage.json", {"requests": 20, "prompt_tokens": 1000, "completion_tokens": 40})
    return root
