"""ifd stage: one scoring pass of the base model - IFD per sample (Cherry LLM) and the
multi-layer activations COINCIDE clusters.

    python -m stages.ifd --params params.yaml --records data/pool/records.jsonl \
        --image-dir data/shapes --model models/base --out ifd

Outputs (OUT): scores.parquet (uid, ifd, loss_conditioned, loss_answer; ifd NaN where undefined),
activations.npy [N, len(ifd.activation_layers) * hidden] (row order of records.jsonl),
metrics.json (counts, wall_s, model_passes = 2: the pool is read twice) and a sidecar.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from selfilter.config import load_section
from selfilter.training.config import IFDConfig
from stages._common import StageParser, add_model_pass_arguments, run_stage

log = logging.getLogger("ifd")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_pass_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_stage("ifd", _run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("ifd", IFDConfig, args.params)
    import numpy as np
    import pandas as pd

    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.data.records import load_records
    from selfilter.io import write_json, write_npy, write_parquet, write_sidecar
    from selfilter.models.loading import load_vlm
    from selfilter.training.loop import resolve_device
    from selfilter.training.modelpass import encode_answer_only, ifd_ratio, score_pass

    started = time.perf_counter()
    out = Path(args.out)
    device = resolve_device(cfg.device)
    records = load_records(args.records)
    model, processor = load_vlm(args.model, cfg.dtype, device)
    encoder = ChatEncoder(processor, max_length=cfg.max_length)
    dataset = EncodedDataset(records, args.image_dir, encoder, progress=not args.no_progress)
    answers = [encode_answer_only(r, encoder.tokenizer, cfg.max_length) for r in records]
    cond, alone, acts = score_pass(model, dataset, answers, encoder.pad_token_id, device=device,
                                   batch_size=cfg.batch_size, layers=cfg.activation_layers,
                                   progress=not args.no_progress)
    ifd = ifd_ratio(cond, alone)
    uids = np.array([r["uid"] for r in records], dtype=np.int64)
    write_parquet(out / "scores.parquet", pd.DataFrame({"uid": uids, "ifd": ifd, "loss_conditioned": cond,
                                                        "loss_answer": alone}))
    write_npy(out / "activations.npy", acts.astype(cfg.activation_dtype))
    defined = np.isfinite(ifd)
    write_json(out / "metrics.json", {
        "n_samples": len(records), "n_undefined": int((~defined).sum()),
        "n_ifd_below_1": int((ifd[defined] < 1).sum()),
        "ifd_mean": float(ifd[defined].mean()) if defined.any() else None,
        "activation_dim": int(acts.shape[1]) if acts.ndim == 2 else 0,
        "n_truncated": encoder.n_truncated, "model_passes": 2,
        "wall_s": round(time.perf_counter() - started, 3),
    })
    write_sidecar(out / "scores.parquet", params=cfg, inputs={"records": args.records, "model": args.model},
                  n=len(records))
    log.info("%d samples: %d with IFD < 1, %d undefined -> %s", len(records), int((ifd[defined] < 1).sum()),
             int((~defined).sum()), out)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = StageParser("stages.ifd", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
