"""stage1 stage: Self-Filter co-training of the base VLM and a score net on the whole pool.

    python -m stages.stage1 --params params.yaml --setting scores|clip \
        --records data/pool/records.jsonl --image-dir data/shapes --model models/base \
        --features features --judge judge/ratings.parquet --out stage1/<setting>

Outputs (OUT): difficulty.parquet (uid, difficulty = -raw score, score_raw), score_net.safetensors,
loss.csv (step, loss, lr), metrics.json, and sidecars. Works under ``accelerate launch``. The
resumable checkpoint lives in --checkpoint-dir (default .checkpoints/<OUT>, outside the DVC out,
which DVC clears before a run) and is removed after success.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from selfilter import needs
from selfilter.config import load_section
from selfilter.training.config import Stage1Config
from stages._common import StageParser, run_stage

log = logging.getLogger("stage1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--setting", required=True, choices=["scores", "clip"], help="score-net input features")
    p.add_argument("--records", required=True, help="records.jsonl from ingest")
    p.add_argument("--image-dir", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--model", required=True, help="base VLM folder (save_pretrained) or hub name")
    p.add_argument("--features", required=True, help="features folder (clip.npy, scores.parquet)")
    p.add_argument("--judge", help="judge ratings.parquet (scores setting)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint-dir", help="resumable checkpoint folder (default .checkpoints/OUT)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    return run_stage("stage1", _run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("stage1", Stage1Config, args.params)
    import numpy as np
    import pandas as pd
    from safetensors.torch import save_file

    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.data.records import load_records
    from selfilter.io import (
        atomic_path,
        write_json,
        write_parquet,
        write_sidecar,
        write_text,
    )
    from selfilter.models.loading import load_vlm
    from selfilter.training.loop import make_accelerator, remove_checkpoint
    from selfilter.training.stage1 import cotrain, difficulty_table, setting_features

    started = time.perf_counter()
    out = Path(args.out)
    why = needs.stage1_missing(args.setting, needs.judge_left_out(args.judge))
    if why:
        needs.write_left_out(out, f"stage1@{args.setting}", why)
        print(needs.line(f"stage1@{args.setting}", why))
        return 0
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else _default_checkpoint_dir(out)
    accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
    records = load_records(args.records)
    uids = np.array([r["uid"] for r in records], dtype=np.int64)
    features, names = setting_features(args.setting, uids, args.features, args.judge)
    model, processor = load_vlm(args.model, cfg.dtype, "cpu")
    encoder = ChatEncoder(processor, max_length=cfg.max_length)
    dataset = EncodedDataset(records, args.image_dir, encoder,
                             progress=not args.no_progress and accelerator.is_main_process)
    result = cotrain(model, dataset, features, encoder.pad_token_id, accelerator=accelerator,
                     epochs=cfg.epochs, lr=cfg.lr, score_net_lr=cfg.score_net_lr, weight_decay=cfg.weight_decay,
                     warmup_ratio=cfg.warmup_ratio, batch_size=cfg.batch_size, grad_clip=cfg.grad_clip,
                     freeze_vision=cfg.freeze_vision, seed=cfg.seed, checkpoint_dir=ckpt_dir,
                     checkpoint_every=cfg.checkpoint_every, max_steps=cfg.max_steps,
                     score_batch_size=cfg.score_batch_size, group_by_length=cfg.group_by_length,
                     progress=not args.no_progress)
    if not result.train.finished:
        log.info("stopped at step %d of %d (max_steps); checkpoint kept in %s, no outputs written",
                 result.train.step, result.train.num_steps, ckpt_dir)
        return 0
    if accelerator.is_main_process:
        inputs = {"records": args.records, "model": args.model, "features": args.features}
        if args.judge and args.setting == "scores":
            inputs["judge"] = args.judge
        table = difficulty_table(uids, result.raw_scores)
        write_parquet(out / "difficulty.parquet", table)
        with atomic_path(out / "score_net.safetensors", suffix=".safetensors") as tmp:
            # one metadata key: safetensors writes its metadata map in no fixed order, and two keys
            # made the same weights differ in bytes from run to run
            save_file(result.score_net, str(tmp),
                      metadata={"selfilter": json.dumps({"features": ",".join(names[:16]), "setting": args.setting},
                                                        sort_keys=True)})
        curve = pd.DataFrame(result.train.log, columns=["step", "loss", "lr"])
        write_text(out / "loss.csv", curve.to_csv(index=False))
        log_tail = result.train.log[-10:]
        metrics = {
            "setting": args.setting, "n_samples": len(dataset), "feature_dim": int(features.shape[1]),
            "features": names if len(names) <= 16 else f"{len(names)} clip dims",
            "steps": result.train.step, "resumed_from": result.train.resumed_from,
            "final_loss": float(np.mean([r["loss"] for r in log_tail])) if log_tail else None,
            "n_truncated": encoder.n_truncated, "n_unsupervised": encoder.n_unsupervised,
            "train_s": round(result.train.wall_s, 3), "wall_s": round(time.perf_counter() - started, 3),
            "score_raw_mean": float(result.raw_scores.mean()), "score_raw_std": float(result.raw_scores.std()),
            "world_size": accelerator.num_processes,
        }
        write_json(out / "metrics.json", metrics)
        for name in ("difficulty.parquet", "score_net.safetensors"):
            write_sidecar(out / name, params=cfg, inputs=inputs, setting=args.setting, n=len(dataset))
        log.info("%s: %d samples, %d steps, final loss %.4f -> %s", args.setting, len(dataset), result.train.step,
                 metrics["final_loss"] or float("nan"), out)
    remove_checkpoint(accelerator, ckpt_dir)
    if accelerator.is_main_process and ckpt_dir.exists() and not any(ckpt_dir.iterdir()):
        shutil.rmtree(ckpt_dir)
    return 0


def _default_checkpoint_dir(out: Path) -> Path:
    """``.checkpoints/<OUT relative to the working directory>`` (or ``.checkpoints/<OUT name>``)."""
    out, cwd = out.resolve(), Path.cwd().resolve()
    return Path(".checkpoints") / (out.relative_to(cwd) if out.is_relative_to(cwd) else out.name)


def main(argv: list[str] | None = None) -> int:
    p = StageParser("stages.stage1", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
