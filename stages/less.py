"""less stage: LESS scores - each pool sample's projected-gradient cosine to a target set.

    python -m stages.less --params params.yaml --records data/pool/records.jsonl \
        --image-dir data/shapes --model models/base --out less

The target set (``less.target``): ``shapes`` generates ``n_target`` fresh held-out questions with
the shapes generator at seed ``data.shapes.seed + less.target_seed_offset`` (the embedded data
has no dev split, and the benchmark's own questions must not steer selection); ``llava`` reads
``less.target_annotations`` (a LLaVA-format dev set). Outputs (OUT): scores.parquet (uid, less),
metrics.json (wall_s, model_passes = 1 forward+backward per pool sample, n_target,
n_params) and a sidecar.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from selfilter.config import load_section
from selfilter.training.config import LESSConfig
from stages._common import StageParser, add_model_pass_arguments, run_stage

log = logging.getLogger("less")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_pass_arguments(p)


def run(args: argparse.Namespace) -> int:
    return run_stage("less", _run, args)


def shapes_target(seed: int, n: int, image_size: int, max_objects: int) -> list[tuple[list[dict], object]]:
    """``n`` (conversations, image) pairs: held-out VQA questions of a generator seed the
    pipeline's benchmark does not use."""
    from selfilter.data import shapes

    bench = shapes.generate_bench(seed, image_size, max_objects, vqa=n, pope_per_split=0, count=0, desc=0)
    out = []
    for row in bench.vqa:
        idx = int(row["image"].split("b")[-1].split(".")[0])
        image = shapes.render_scene(bench.scenes[idx], image_size)
        out.append(([{"from": "human", "value": "<image>\n" + row["question"]},
                     {"from": "gpt", "value": row["answer"]}], image))
    return out


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("less", LESSConfig, args.params)
    import numpy as np
    import pandas as pd

    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.data.records import load_records
    from selfilter.io import write_json, write_parquet, write_sidecar
    from selfilter.models.loading import load_vlm
    from selfilter.training.less import gradient_features, less_scores
    from selfilter.training.loop import resolve_device

    started = time.perf_counter()
    out = Path(args.out)
    if cfg.target == "shapes":
        from selfilter.data.config import DataConfig

        if load_section("data", DataConfig, args.params).source != "shapes":
            # a target set of shapes questions says nothing about which of your records help
            why = ("its target set is generated shapes questions (less.target: shapes) and this data is not the "
                   "shapes data; set less.target: llava and less.target_annotations to a dev set of your target "
                   "tasks (never the benchmark's questions)")
            from selfilter import needs

            needs.write_left_out(out, "less", why)
            print(needs.line("less", why))
            return 0
    device = resolve_device(cfg.device)
    records = load_records(args.records)
    model, processor = load_vlm(args.model, cfg.dtype, device)
    encoder = ChatEncoder(processor, max_length=cfg.max_length)
    if cfg.target == "shapes":
        from selfilter.data.config import DataConfig

        data = load_section("data", DataConfig, args.params)
        s = data.shapes
        target_items = [encoder.encode(conv, image) for conv, image in
                        shapes_target(s.seed + cfg.target_seed_offset, cfg.n_target, s.image_size, s.max_objects)]
        target_desc = f"shapes generator seed {s.seed + cfg.target_seed_offset}"
    else:
        if not cfg.target_annotations:
            raise ValueError("less.target: llava needs less.target_annotations (a LLaVA-format dev set)")
        target_records = load_records(cfg.target_annotations)[: cfg.n_target]
        target_items = [encoder.encode_record(r, cfg.target_image_dir) for r in target_records]
        target_desc = cfg.target_annotations
    pool = EncodedDataset(records, args.image_dir, encoder, progress=not args.no_progress)
    kw = dict(params=cfg.params, dim=cfg.proj_dim, seed=cfg.proj_seed, device=device,
              flush_every=cfg.flush_every, projection=cfg.projection, progress=not args.no_progress)
    target = gradient_features(model, target_items, encoder.pad_token_id, desc="less target", **kw)
    train = gradient_features(model, [pool[i] for i in range(len(pool))], encoder.pad_token_id, **kw)
    scores = less_scores(train, target)
    uids = np.array([r["uid"] for r in records], dtype=np.int64)
    write_parquet(out / "scores.parquet", pd.DataFrame({"uid": uids, "less": scores}))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    write_json(out / "metrics.json", {
        "n_samples": len(records), "n_target": len(target_items), "target": target_desc,
        "n_params": int(n_params), "proj_dim": cfg.proj_dim, "less_mean": float(scores.mean()),
        "model_passes": 1, "backward": True, "wall_s": round(time.perf_counter() - started, 3),
    })
    write_sidecar(out / "scores.parquet", params=cfg, inputs={"records": args.records, "model": args.model},
                  n=len(records))
    log.info("%d samples scored against %d targets (%d parameters, dim %d) -> %s", len(records),
             len(target_items), n_params, cfg.proj_dim, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = StageParser("stages.less", __doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
