"""Self-Filter stage-2 speed, memory and exactness: the fast greedy against the reference.

    python -m benchmarks.bench_select --features gaussian --n 158000 --d 1536 --budget 25000
    python -m benchmarks.bench_select --features clusters --n-clusters 1000 --noise 0.05
    python -m benchmarks.bench_select --features clip --clip features/clip.npy --noise 0.1
    python -m benchmarks.bench_select --n 1000000 --ref-picks 0          # scale: time and memory

Features (float32, seeded):
- ``gaussian``: standard normal rows - no structure, no index can prune (the worst case);
- ``clusters``: ``--n-clusters`` standard normal centres plus ``--noise`` x N(0, 1) per entry;
- ``clip``: the pipeline's own CLIP features (``features/clip.npy``) tiled to N rows with
  Gaussian noise of ``--noise`` x each column's standard deviation, and to D columns by
  repeating the columns (each repeat with its own noise) when the file is narrower.

Reported, all from this run on this machine: the CPU (model and the flags that decide the fast
path) and any ISA caps in the environment; the float32 (and bf16) matrix-product rate of this
machine on a block-shaped product; the *machine bound* = budget exact top-k queries over the
pool at the float32 rate (budget x N x D x 2 flop / rate: what the dense path must at least
pay without native bf16); the fast run's wall and CPU time, the backend/precision it chose and
why; peak RSS against the feature matrix; and the first ``--ref-picks`` picks and scores compared
with ``reference_greedy`` (the literal float64 re-sort per pick, run on a float64 copy of the
features so it costs one pass per pick). ``--fp32-loop-picks`` times the original code's way
(one float32 similarity pass + a full sort per pick) as the speed anchor.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE")


def _rss_gb() -> float:
    """Peak RSS since the last :func:`_reset_peak` (Linux VmHWM), else since start."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB


def _current_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return float("nan")


def _reset_peak() -> None:
    """Reset the peak-RSS mark so it measures the selection only (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def make_features(kind: str, n: int, d: int, seed: int, n_clusters: int, noise: float,
                  clip_path: str) -> np.ndarray:
    """[n, d] float32 features of the given kind, built in chunks (no float64 temporaries)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    chunk = 16384
    if kind == "gaussian":
        for s in range(0, n, chunk):
            out[s:s + chunk] = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        return out
    if kind == "clusters":
        base = rng.standard_normal((n_clusters, d), dtype=np.float32)
        scale = np.float32(noise)
    elif kind == "clip":
        src = np.load(clip_path).astype(np.float32)
        reps = -(-d // src.shape[1])
        base = np.tile(src, (1, reps))[:, :d]
        scale = (noise * src.std(axis=0)).astype(np.float32)
        scale = np.tile(scale, reps)[:d]
    else:
        raise ValueError(f"unknown --features {kind!r}: gaussian, clusters, clip")
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        out[s:s + m] = base[rng.integers(0, base.shape[0], m)] + scale * rng.standard_normal((m, d), dtype=np.float32)
    return out


def matmul_rate(n: int, d: int, dtype) -> float:
    """FLOP/s of a block-shaped product ([512, D] x [D, min(N, 40K)]) in ``dtype``, best of 3."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(512, d, generator=gen).to(dtype)
    b = torch.randn(min(n, 40_000), d, generator=gen).to(dtype)
    a @ b[:512].T
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - t)
    return 2 * a.shape[0] * b.shape[0] * d / best


def reference_fp32(difficulty: np.ndarray, features: np.ndarray, picks: int, k: int) -> np.ndarray:
    """The reference semantics at the speed of the original code: one float32 similarity
    pass over the normalised pool and a full stable sort per pick. Its similarities are
    float32, so it may differ from the canonical float64 ones at ~1e-7."""
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


MARKDOWN_HEADER = ("| features | N x D, picks | ISA | chose | fast wall / CPU s | float32 bound s "
                   "(GFLOP/s) | wall / bound | reference s/pick (fp32 loop) | same as reference | "
                   "peak RSS GB (before) | selection's own RSS / features | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_row(out: dict) -> str:
    """One row of benchmarks/README.md's stage-2 table, straight from a run's figures."""
    st = out["fast_stats"]
    isa = "AVX2 (capped)" if out["isa_env"].get("ONEDNN_MAX_CPU_ISA") else "native"
    feat = out["features"] + (f" (noise {out['noise']})" if out.get("noise") is not None else "")
    same = (f"yes, {out['reference_picks_compared']} picks" if out.get("same_picks_and_scores")
            else ("NO" if "same_picks_and_scores" in out else "-"))
    return (f"| {feat} | {out['n']:,} x {out['d']:,}, {out['budget']:,} | {isa} | "
            f"{st.get('backend')} / {st.get('precision')} | {out['fast_wall_s']} / {out['fast_cpu_s']} | "
            f"{out.get('machine_bound_float32_s', '-')} ({out.get('float32_gflops', '-')}) | "
            f"{out.get('fast_over_bound', '-')} | {out.get('reference_wall_s_per_pick', '-')} "
            f"({out.get('fp32_loop_s_per_pick', '-')}) | {same} | {out['peak_rss_gb']} "
            f"({out['rss_before_select_gb']}) | {out['selection_rss_over_features']} | "
            f"{out['load_avg_before']}-{out['load_avg_after']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--features", default="gaussian", choices=["gaussian", "clusters", "clip"])
    p.add_argument("--n", type=int, default=158_000)
    p.add_argument("--d", type=int, default=1536)
    p.add_argument("--budget", type=int, default=25_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--n-clusters", type=int, default=1000, help="--features clusters: centres")
    p.add_argument("--noise", type=float, default=0.05, help="clusters: noise std; clip: x column std")
    p.add_argument("--clip", default="features/clip.npy", help="--features clip: the source matrix")
    p.add_argument("--ref-picks", type=int, default=1000, help="picks compared with reference_greedy (0: skip)")
    p.add_argument("--fp32-loop-picks", type=int, default=20, help="picks of the original-code loop to time (0: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=["auto", "dense", "clustered"])
    p.add_argument("--precision", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--block-size", type=int, default=512, help="neighbour lists computed together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    from selfilter.selection import diverse_greedy, reference_greedy
    from selfilter.machine import cpu_description

    features = make_features(args.features, args.n, args.d, args.seed, args.n_clusters, args.noise, args.clip)
    difficulty = np.random.default_rng(args.seed + 1).standard_normal(args.n)
    out = {"features": args.features, "n": args.n, "d": args.d, "budget": args.budget, "k": args.k,
           "noise": args.noise if args.features != "gaussian" else None,
           "n_clusters": args.n_clusters if args.features == "clusters" else None,
           "device": args.device, "cpu": cpu_description(), "threads": torch.get_num_threads(),
           "isa_env": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
           "load_avg_before": round(os.getloadavg()[0], 2), "features_gb": round(features.nbytes / 1e9, 4)}
    if args.device == "cpu":
        r32 = matmul_rate(args.n, args.d, torch.float32)
        r16 = matmul_rate(args.n, args.d, torch.bfloat16)
        out["float32_gflops"] = round(r32 / 1e9, 1)
        out["bfloat16_gflops"] = round(r16 / 1e9, 1)
        bound = args.budget * args.n * args.d * 2 / r32
        out["machine_bound_float32_s"] = round(bound, 1 if bound > 10 else 4)

    import gc

    gc.collect()
    out["rss_before_select_gb"] = round(_current_rss_gb(), 3)  # features + runtime
    _reset_peak()
    w0, c0 = time.perf_counter(), _cpu()
    fast = diverse_greedy(difficulty, features, args.budget, args.k, device=args.device,
                          backend=args.backend, precision=args.precision,
                          block_size=args.block_size, show_progress=True)
    wall = time.perf_counter() - w0
    out["fast_wall_s"] = round(wall, 2)
    out["fast_cpu_s"] = round(_cpu() - c0, 2)
    if args.device == "cpu":
        out["fast_over_bound"] = round(wall / bound, 3)
    out["fast_stats"] = {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v)
                         for k, v in fast.stats.items()}
    peak = _rss_gb()
    out["peak_rss_gb"] = round(peak, 3)
    # the selection's own working set (peak minus features + runtime), relative to the features
    out["selection_rss_over_features"] = round((peak - out["rss_before_select_gb"]) / (features.nbytes / 1e9), 2)
    out["load_avg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2), flush=True)

    if args.ref_picks:
        m = min(args.ref_picks, args.budget)
        # a float64 copy makes each reference pick one pass instead of a conversion per pick;
        # skipped when it would not fit comfortably (1M x 1,536: 12 GB)
        f64 = features.astype(np.float64) if features.nbytes <= 2e9 else features
        w0 = time.perf_counter()
        ref = reference_greedy(difficulty, f64, m, args.k, show_progress=True)
        out["reference_picks_compared"] = m
        out["reference_wall_s_per_pick"] = round((time.perf_counter() - w0) / m, 4)
        diff = np.flatnonzero((ref.indices != fast.indices[:m]) | (ref.scores != fast.scores[:m]))
        out["same_picks_and_scores"] = not diff.size
        out["first_difference"] = int(diff[0]) if diff.size else None
        del f64
    if args.fp32_loop_picks:
        m = min(args.fp32_loop_picks, args.budget)
        w0 = time.perf_counter()
        ref32 = reference_fp32(difficulty, features, m, args.k)
        wall = time.perf_counter() - w0
        out["fp32_loop_s_per_pick"] = round(wall / m, 4)
        out["fp32_loop_extrapolated_s"] = round(wall / m * args.budget, 1)
        out["fp32_loop_same_prefix"] = bool(np.array_equal(ref32, fast.indices[:m]))
    print(json.dumps({k: v for k, v in out.items() if k not in ("fast_stats",)}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    print(markdown_row(out))
    if args.ref_picks and not out["same_picks_and_scores"]:
        print(f"MISMATCH: the fast run differs from the reference at pick {out['first_difference']}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
