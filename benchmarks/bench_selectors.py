"""Speed of the field's selectors (clip_score, semdedup, coincide, ifd, less) on this machine.

    python -m benchmarks.bench_selectors features --n 157712 --d 1536 --budget 25000
    python -m benchmarks.bench_selectors model --model models/base --records data/pool/records.jsonl \
        --image-dir data/shapes --n 1000

``features``: the selection step of the feature-only methods at LLaVA-Instruct-158K's size on
synthetic float32 features (``--clusters`` Gaussian centres + ``--noise`` per entry, with
``--dup-share`` of the rows planted as near-copies of others, so SemDeDup has something to
remove). COINCIDE's selection runs on the same matrix standing in for its activations.
``model``: the model passes per ``--n`` samples (the pool's records repeated to ``--n``) - IFD's
two forward passes (which also give COINCIDE's activations) and LESS's per-sample
forward+backward with its projection - on the given base model, device and thread count.

Prints one JSON line per measurement, each with its wall and CPU seconds, the 1-minute load
average, the CPU model, the torch thread count and the command's arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_CPU0 = [time.process_time()]


def _report(name: str, seconds: float, args: argparse.Namespace, **extra) -> None:
    """One JSON line: wall seconds, this process's CPU seconds since the last report (on a shared
    machine the wall time depends on the load, reported too), the machine."""
    import torch

    cpu_s, _CPU0[0] = time.process_time() - _CPU0[0], time.process_time()
    print(json.dumps({"measure": name, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_s, 3), **extra,
                      "load_avg_1m": round(os.getloadavg()[0], 2), "cpu": cpu_model(),
                      "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                      "args": {k: v for k, v in vars(args).items() if k != "func"}}), flush=True)


def synthetic(n: int, d: int, clusters: int, noise: float, dup_share: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    x = centres[rng.integers(0, clusters, n)]
    x += noise * rng.standard_normal((n, d), dtype=np.float32)
    n_dup = int(dup_share * n)
    src, dst = rng.choice(n, n_dup, replace=False), rng.choice(n, n_dup, replace=False)
    x[dst] = x[src] + 0.01 * rng.standard_normal((n_dup, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_features(args: argparse.Namespace) -> None:
    from selfilter.selection import baselines, field

    x = synthetic(args.n, args.d, args.clusters, args.noise, args.dup_share, args.seed)
    scores = x[:, : args.d // 2].sum(1) * x[:, args.d // 2:].sum(1)  # a stand-in CLIP score
    t0 = time.perf_counter()
    _CPU0[0] = time.process_time()
    baselines.top_k(scores, args.budget, args.seed)
    _report("clip_score", time.perf_counter() - t0, args)
    t0 = time.perf_counter()
    _CPU0[0] = time.process_time()
    redundancy = field.semdedup_redundancy(x, args.semdedup_clusters, args.seed)
    t_red = time.perf_counter() - t0
    field.semdedup(x, args.budget, n_clusters=args.semdedup_clusters, threshold=args.threshold, seed=args.seed,
                   redundancy=redundancy)
    _report("semdedup", time.perf_counter() - t0, args, kmeans_and_redundancy_s=round(t_red, 3),
            above_0_95=int((redundancy > 0.95).sum()), planted=int(args.dup_share * args.n))
    t0 = time.perf_counter()
    _CPU0[0] = time.process_time()
    idx, _ = field.coincide(x, args.budget, n_clusters=args.coincide_clusters, temperature=0.1, kernel_width=1.0,
                            seed=args.seed)
    _report("coincide_selection", time.perf_counter() - t0, args, selected=len(idx))


def bench_model(args: argparse.Namespace) -> None:
    import torch

    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.data.records import load_records
    from selfilter.models.loading import load_vlm
    from selfilter.training.less import gradient_features
    from selfilter.training.modelpass import encode_answer_only, score_pass

    records = load_records(args.records)
    records = [records[i % len(records)] for i in range(args.n)]
    model, processor = load_vlm(args.model, "float32", args.device)
    encoder = ChatEncoder(processor, max_length=512)
    t0 = time.perf_counter()
    _CPU0[0] = time.process_time()
    dataset = EncodedDataset(records, args.image_dir, encoder, progress=False)
    answers = [encode_answer_only(r, encoder.tokenizer, 512) for r in records]
    _report("encode", time.perf_counter() - t0, args, samples=args.n)
    n_layers = model.config.text_config.num_hidden_layers
    t0 = time.perf_counter()
    _CPU0[0] = time.process_time()
    score_pass(model, dataset, answers, encoder.pad_token_id, device=args.device, batch_size=32,
               layers=list(range(1, n_layers + 1)), progress=False)
    _report("ifd+coincide_activations (2 forward passes)", time.perf_counter() - t0, args, samples=args.n)
    items = [dataset[i] for i in range(len(dataset))]
    t0 = time.perf_counter()
    _CPU0[0] = time.process_time()
    gradient_features(model, items, encoder.pad_token_id, params=args.less_params, dim=args.proj_dim, seed=0,
                      device=args.device, progress=False)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _report("less (forward+backward per sample + projection)", time.perf_counter() - t0, args, samples=args.n,
            grad_params=int(n_params))
    del torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_selectors", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    f = sub.add_parser("features")
    f.add_argument("--n", type=int, default=157_712)
    f.add_argument("--d", type=int, default=1536)
    f.add_argument("--budget", type=int, default=25_000)
    f.add_argument("--clusters", type=int, default=1000, help="Gaussian centres of the synthetic features")
    f.add_argument("--noise", type=float, default=0.5)
    f.add_argument("--dup-share", type=float, default=0.1)
    f.add_argument("--semdedup-clusters", type=int, default=100)
    f.add_argument("--threshold", type=float, default=None, help="semdedup cosine (default: set by the budget)")
    f.add_argument("--coincide-clusters", type=int, default=100)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=bench_features)
    m = sub.add_parser("model")
    m.add_argument("--model", required=True)
    m.add_argument("--records", required=True)
    m.add_argument("--image-dir", required=True)
    m.add_argument("--n", type=int, default=1000)
    m.add_argument("--device", default="cpu")
    m.add_argument("--less-params", nargs="+", default=["multi_modal_projector", "lm_head"])
    m.add_argument("--proj-dim", type=int, default=512)
    m.set_defaults(func=bench_model)
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
