"""Self-Filter stage-2 speed and memory: the fast exact greedy vs the reference semantics.

    python -m benchmarks.bench_select --n 158000 --d 1536 --budget 25000 [--ref-picks 100]
    python -m benchmarks.bench_select --n 1000000 --d 1536 --budget 25000 --ref-picks 0

Random inputs (standard normal features, standard normal difficulties), one process, one
machine. The reference (``reference_greedy``: re-scores and re-sorts the pool for every pick)
is timed on its first ``--ref-picks`` picks and extrapolated per pick to the full budget; the
fast version's picks must equal the reference's on that common prefix. ``reference_fp32`` (the
same loop with one float32 matrix-vector product and a sort per pick, like the original code)
is timed the same way, as the speed anchor of the original implementation. Peak memory is the
process's max RSS, printed next to the size of the feature matrix. CPU time is printed too:
on a shared machine it is the figure that other processes do not inflate.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def reference_fp32(difficulty: np.ndarray, features: np.ndarray, picks: int, k: int) -> np.ndarray:
    """The reference semantics at the speed of the original code: one float32 similarity
    pass over the normalised pool and a full stable sort per pick (what ~0.1 s/pick measures).
    Its similarities are float32, so it may differ from the canonical float64 ones at ~1e-7."""
    import torch

    x = torch.from_numpy(features)
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
    cur = difficulty.astype(np.float64).copy()
    picked = np.zeros(len(cur), dtype=bool)
    out = np.empty(picks, dtype=np.int64)
    for r in range(picks):
        p = int(np.argmax(np.where(picked, -np.inf, cur)))
        out[r], dstar = p, cur[p]
        picked[p] = True
        sims = (x @ x[p]).numpy().astype(np.float64)
        order = np.argsort(-sims, kind="stable")
        nbrs = order[~picked[order]][:k]
        cur[nbrs] -= dstar * (sims[nbrs] * sims[nbrs])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=158_000)
    p.add_argument("--d", type=int, default=1536)
    p.add_argument("--budget", type=int, default=25_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ref-picks", type=int, default=100, help="reference picks to time (0: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    from selfilter.selection import diverse_greedy, reference_greedy

    rng = np.random.default_rng(args.seed)
    features = rng.standard_normal((args.n, args.d), dtype=np.float32)
    difficulty = rng.standard_normal(args.n)
    base_rss = _rss_gb()
    out = {"n": args.n, "d": args.d, "budget": args.budget, "k": args.k, "device": args.device,
           "threads": __import__("torch").get_num_threads(), "load_avg_before": os.getloadavg()[0],
           "features_gb": features.nbytes / 1e9}

    w0, c0 = time.perf_counter(), _cpu()
    fast = diverse_greedy(difficulty, features, args.budget, args.k, device=args.device,
                          block_size=args.block_size, show_progress=True)
    out["fast_wall_s"] = round(time.perf_counter() - w0, 2)
    out["fast_cpu_s"] = round(_cpu() - c0, 2)
    out["fast_stats"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in fast.stats.items()}
    out["peak_rss_gb"] = round(_rss_gb(), 3)
    out["peak_rss_over_features"] = round(_rss_gb() / out["features_gb"], 2)
    out["rss_before_select_gb"] = round(base_rss, 3)
    out["load_avg_after"] = os.getloadavg()[0]

    if args.ref_picks:
        m = min(args.ref_picks, args.budget)
        w0, c0 = time.perf_counter(), _cpu()
        ref = reference_greedy(difficulty, features, m, args.k, show_progress=True)
        wall, cpu = time.perf_counter() - w0, _cpu() - c0
        out["reference_picks_timed"] = m
        out["reference_wall_s_per_pick"] = round(wall / m, 4)
        out["reference_cpu_s_per_pick"] = round(cpu / m, 4)
        out["reference_wall_s_extrapolated"] = round(wall / m * args.budget, 1)
        out["same_picks_on_prefix"] = bool(np.array_equal(ref.indices, fast.indices[:m])
                                           and np.array_equal(ref.scores, fast.scores[:m]))
        w0, c0 = time.perf_counter(), _cpu()
        ref32 = reference_fp32(difficulty, features, m, args.k)
        wall, cpu = time.perf_counter() - w0, _cpu() - c0
        out["reference_fp32_wall_s_per_pick"] = round(wall / m, 4)
        out["reference_fp32_cpu_s_per_pick"] = round(cpu / m, 4)
        out["reference_fp32_wall_s_extrapolated"] = round(wall / m * args.budget, 1)
        out["reference_fp32_same_picks_on_prefix"] = bool(np.array_equal(ref32, fast.indices[:m]))
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if args.ref_picks and not out["same_picks_on_prefix"]:
        print("MISMATCH: the fast picks differ from the reference on the common prefix")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
