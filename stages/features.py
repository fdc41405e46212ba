"""features stage: CLIP image/text embeddings + CLIP score of every pool record.

    python -m stages.features --params params.yaml --records data/pool/records.jsonl \
        --image-dir data/shapes --out features [--shard-index I --num-shards N | --merge-only]

Outputs (OUT): clip.npy (float32 [N, 2D]), scores.parquet (uid, clip_score, text_truncated,
has_image[, image_reward]), summary.json (counts, timing; a DVC metrics file), and sidecars.
Shards go to OUT/shards/<fingerprint>/ (or --work-dir) so an interrupted run resumes; they are
removed after a successful merge unless --keep-shards. With --num-shards N > 1 each worker
computes its slice and exits; a final call with --merge-only (or without --shard-index) merges.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from selfilter.config import load_section
from selfilter.data.records import load_records
from selfilter.features import clip
from selfilter.features.config import FeaturesConfig
from selfilter.io import file_digest, write_json, write_sidecar
from stages._common import StageParser, run_stage

log = logging.getLogger("features")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--records", required=True, help="records.jsonl from ingest")
    p.add_argument("--image-dir", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--work-dir", help="shard folder (default OUT/shards)")
    p.add_argument("--shard-index", type=int, help="compute only shards s with s %% num_shards == index")
    p.add_argument("--num-shards", type=int, default=1,
                   help="with --shard-index: how many processes/devices split the shards (default: %(default)s)")
    p.add_argument("--merge-only", action="store_true", help="only merge finished shards")
    p.add_argument("--keep-shards", action="store_true", help="keep the shard files after merging (default: delete)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    return run_stage("features", _run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("features", FeaturesConfig, args.params)
    records = load_records(args.records)
    items = clip.records_to_items(records)
    device = clip.resolve_device(cfg.device)
    dtype = clip.resolve_dtype(cfg.dtype, device)
    reward_ok = cfg.image_reward and clip.image_reward_available(cfg.image_reward_weights)[0]
    model_dir = Path(cfg.model)
    fp = clip.fingerprint(records=file_digest(args.records),
                          model=file_digest(model_dir) if model_dir.is_dir() else cfg.model,
                          image_dir=str(Path(args.image_dir).resolve()), dtype=str(dtype),
                          shard_size=cfg.shard_size, image_reward=reward_ok)
    out = Path(args.out)
    work_dir = Path(args.work_dir or out / "shards") / fp
    started = time.perf_counter()

    if not args.merge_only:
        model, processor = clip.load_clip(cfg.model, device, dtype)
        reward = clip.load_image_reward(cfg.image_reward_weights, device) if cfg.image_reward else None
        if not cfg.image_reward:
            log.info("ImageReward disabled (features.image_reward: false)")
        written = clip.extract_shards(
            items, args.image_dir, work_dir, model=model, processor=processor, device=device,
            batch_size=cfg.batch_size, num_workers=cfg.num_workers, shard_size=cfg.shard_size,
            shard_index=args.shard_index or 0, num_shards=args.num_shards if args.shard_index is not None else 1,
            image_reward=reward, progress=not args.no_progress)
        log.info("%d shard(s) computed in %s", len(written), work_dir)
        if args.shard_index is not None and args.num_shards > 1:
            return 0  # one worker of several: the merge is a separate call

    result = clip.merge_shards(work_dir, len(items), cfg.shard_size, out / "clip.npy", out / "scores.parquet")
    seconds = time.perf_counter() - started
    summary = {"n_records": result.n_rows, "dim": result.dim, "n_text_truncated": result.n_truncated,
               "n_text_only": result.n_text_only, "image_reward": result.has_image_reward,
               "device": device, "dtype": str(dtype).removeprefix("torch."), "seconds": round(seconds, 3)}
    inputs = {"records": args.records}
    if model_dir.is_dir():
        inputs["model"] = model_dir
    for path in (out / "clip.npy", out / "scores.parquet"):
        write_sidecar(path, params=cfg, inputs=inputs, fingerprint=fp, **summary)
    write_json(out / "summary.json", summary)
    log.info("%d records -> %s [%d x %d]; %d text truncated, %d text-only",
             result.n_rows, out / "clip.npy", result.n_rows, result.dim, result.n_truncated, result.n_text_only)
    if not args.keep_shards:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = StageParser("stages.features", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
