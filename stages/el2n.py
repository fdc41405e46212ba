"""el2n stage: EL2N scores of every pool sample from briefly fine-tuned copies of the base model.

    python -m stages.el2n --params params.yaml --records data/pool/records.jsonl \
        --image-dir data/shapes --model models/base --out el2n

Outputs (OUT): scores.parquet (uid, el2n = mean over seeds, el2n_seed<k> per seed), metrics.json,
and a sidecar. Works under ``accelerate launch`` (scoring is split across ranks).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from selfilter.config import load_section
from selfilter.training.config import EL2NConfig
from stages._common import StageParser, add_model_pass_arguments, run_stage

log = logging.getLogger("el2n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_pass_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_stage("el2n", _run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("el2n", EL2NConfig, args.params)
    import numpy as np
    import pandas as pd

    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.data.records import load_records
    from selfilter.io import write_json, write_parquet, write_sidecar
    from selfilter.models.loading import load_vlm
    from selfilter.training.el2n import el2n_scores
    from selfilter.training.loop import make_accelerator

    started = time.perf_counter()
    out = Path(args.out)
    accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
    records = load_records(args.records)
    _, processor = load_vlm(args.model, cfg.dtype, "cpu")
    encoder = ChatEncoder(processor, max_length=cfg.max_length)
    dataset = EncodedDataset(records, args.image_dir, encoder,
                             progress=not args.no_progress and accelerator.is_main_process)
    mean, per_seed = el2n_scores(lambda: load_vlm(args.model, cfg.dtype, "cpu")[0], dataset, encoder.pad_token_id,
                                 accelerator=accelerator, seeds=cfg.seeds, train_epochs=cfg.train_epochs, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
                                 batch_size=cfg.batch_size, grad_clip=cfg.grad_clip, freeze_vision=cfg.freeze_vision,
                                 score_batch_size=cfg.score_batch_size, chunk_tokens=cfg.chunk_tokens,
                                 group_by_length=cfg.group_by_length,
                                 progress=not args.no_progress)
    if accelerator.is_main_process:
        table = pd.DataFrame({"uid": np.array([r["uid"] for r in records], dtype=np.int64), "el2n": mean})
        for k, seed in enumerate(cfg.seeds):
            table[f"el2n_seed{seed}"] = per_seed[k]
        write_parquet(out / "scores.parquet", table)
        finite = np.isfinite(mean)
        write_json(out / "metrics.json", {
            "n_samples": len(records), "n_unscored": int((~finite).sum()), "seeds": cfg.seeds,
            "el2n_mean": float(mean[finite].mean()) if finite.any() else None,
            "seed_rank_corr": _mean_rank_corr(per_seed),
            "n_truncated": encoder.n_truncated, "wall_s": round(time.perf_counter() - started, 3),
        })
        write_sidecar(out / "scores.parquet", params=cfg, inputs={"records": args.records, "model": args.model},
                      n=len(records))
        log.info("%d samples scored over %d seed(s) -> %s", len(records), len(cfg.seeds), out / "scores.parquet")
    return 0


def _mean_rank_corr(per_seed) -> float | None:
    """Mean Spearman correlation between seeds' scores: how stable the ranking is."""
    import numpy as np
    import pandas as pd

    if len(per_seed) < 2:
        return None
    ranks = pd.DataFrame(per_seed.T).rank().to_numpy()
    c = np.corrcoef(ranks.T)
    return float(c[np.triu_indices_from(c, 1)].mean())


def main(argv: list[str] | None = None) -> int:
    p = StageParser("stages.el2n", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
