"""A miniature finished pipeline on disk, following docs/ARCHITECTURE.md's data contracts.

Built in a temp folder by the tracking tests: every file `track` reads, none of the models.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

METHODS = ("self_filter_scores", "random")
BUDGETS = (0.05, 0.15)
SEEDS = (1,)  # kept small: every run is a few store transactions
N_POOL = 40
# lmms-eval style names: the comma separates the filter; '/' separates the task
BENCH_METRICS = ("shapes_vqa/exact_match,none", "shapes_pope/f1,adversarial", "shapes_count/acc,none")


def build_fake_pipeline(root: Path, *, tracking: dict | None = None) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    params = {
        "select": {"methods": list(METHODS), "budgets": list(BUDGETS), "seeds": list(SEEDS), "k_nearest": 10},
        "finetune": {"epochs": 3, "lr": 2e-4, "batch_size": 16},
        "stage1": {"epochs": 1, "lr": 1e-4},
        "tracking": tracking or {},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))

    records = [{"id": f"r{i}", "image": f"images/{i}.png",
                "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}],
                "uid": i} for i in range(N_POOL)]
    pool = root / "data/pool"
    pool.mkdir(parents=True)
    (pool / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    s1 = root / "stage1/scores"
    s1.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pd.DataFrame({"uid": range(N_POOL), "difficulty": rng.normal(size=N_POOL)}).to_parquet(s1 / "difficulty.parquet")
    (s1 / "loss.csv").write_text("step,loss,lr\n" + "".join(f"{s},{2.0 - 0.1 * s},{1e-4}\n" for s in range(5)))
    (s1 / "score_net.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (s1 / "difficulty.parquet.meta.json").write_text(json.dumps({"artifact": "difficulty.parquet", "n": N_POOL}))
    (root / "judge").mkdir()
    (root / "judge/usage.json").write_text(json.dumps({"calls": 40, "prompt_tokens": 4000, "cached": 0}))
    (root / "metrics").mkdir()
    (root / "metrics/stage1.json").write_text(json.dumps({"scores": {"final_loss": 1.6}, "wall_s": 3.5}))
    (root / "metrics/base.json").write_text(json.dumps({"probe_acc": 0.41, "chance": 0.25}))

    runs, lock = [], {"prepare": _lock_entry("prepare", {"data.seed": 0}),
                      "stage1": _lock_entry("stage1", {"stage1": params["stage1"]})}
    for m in METHODS:
        for b in BUDGETS:
            for s in SEEDS:
                tag = f"{m}/b{b}_s{s}"
                sel = root / "selections" / tag
                sel.mkdir(parents=True)
                n = round(b * N_POOL)
                (sel / "subset.json").write_text(json.dumps(records[s:s + n]))
                (sel / "meta.json").write_text(json.dumps({"method": m, "budget": b, "seed": s}))
                ckpt = root / "runs" / tag
                ckpt.mkdir(parents=True)
                (ckpt / "train_log.json").write_text(json.dumps(
                    [{"step": st, "loss": 3.0 - 0.5 * st, "epoch": st / 2} for st in range(3)]))
                ev = root / "evals" / tag
                ev.mkdir(parents=True)
                metrics = {k: round(0.3 + 0.1 * BUDGETS.index(b) + 0.01 * s + 0.05 * METHODS.index(m), 4)
                           for k in BENCH_METRICS}
                metrics["overall"] = round(sum(metrics.values()) / len(metrics), 4)
                (ev / "results.json").write_text(json.dumps({"results": metrics}))
                runs.append({"method": m, "budget": b, "seed": s, "n_selected": n,
                             "selection": f"selections/{tag}/subset.json", "checkpoint": f"runs/{tag}",
                             "eval": f"evals/{tag}/results.json", "metrics": metrics})
                lock[f"finetune@{m}-{b}-{s}"] = _lock_entry(f"finetune {tag}", {"finetune": params["finetune"]})
    lock["compare"] = _lock_entry("compare", {})
    lock["track"] = _lock_entry("track", {"tracking": {}})
    (root / "reports/plots").mkdir(parents=True)
    (root / "reports/metrics.json").write_text(json.dumps({"runs": runs, "summary": _summary(runs)}))
    (root / "reports/comparison.md").write_text("# Comparison\n")
    (root / "reports/plots/overall_vs_budget.png").write_bytes(_tiny_png())
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": lock}))
    return root


def _lock_entry(cmd: str, params: dict) -> dict:
    entry = {"cmd": cmd, "deps": [{"path": "x", "hash": "md5", "md5": "0" * 32, "size": 1}],
             "outs": [{"path": "y", "hash": "md5", "md5": "1" * 32, "size": 1}]}
    if params:
        entry["params"] = {"params.yaml": params}
    return entry


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    return buf.getvalue()


_TEMPLATE_DB: Path | None = None


def fresh_sqlite_store(db: Path) -> str:
    """An empty MLflow sqlite store at ``db``; returns its URI.

    MLflow migrates a new sqlite schema on first use, which takes seconds (tens of seconds on
    a busy 2-core box), so the tests migrate one template per session and copy it.
    """
    global _TEMPLATE_DB
    import atexit
    import shutil
    import tempfile

    if _TEMPLATE_DB is None:
        from mlflow.tracking import MlflowClient

        tmp = Path(tempfile.mkdtemp(prefix="selfilter-mlflow-template-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        MlflowClient(f"sqlite:///{tmp / 'mlruns.db'}").search_experiments()
        _TEMPLATE_DB = tmp / "mlruns.db"
    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE_DB, db)
    return f"sqlite:///{db}"


def _summary(runs: list[dict]) -> dict:
    """The compare stage's summary shape (per method and budget: seed statistics of every metric),
    with the statistics written out by hand - the tracking tests must not need the report code."""
    methods: dict = {}
    for r in runs:
        g = methods.setdefault(r["method"], {}).setdefault(f"{r['budget']:g}", {"control": False, "values": {}})
        for k, v in r["metrics"].items():
            g["values"].setdefault(k, []).append(v)
    for per in methods.values():
        for g in per.values():
            values = g.pop("values")
            g["metrics"] = {k: {"mean": sum(v) / len(v), "std": float("nan"), "n": len(v), "half_width": float("nan"),
                                "ci_low": float("nan"), "ci_high": float("nan")} for k, v in values.items()}
            g["relative_to_full"] = float("nan")
    return {"n_runs": len(runs), "methods": methods, "calibration_status": "not established",
            "reference_overall": float("nan")}
