"""finetune stage: fine-tune the base model on every (budget, seed) subset of one method.

    python -m stages.finetune --params params.yaml --method NAME --selections selections/NAME \
        --image-dir data/shapes --model models/base --out runs/NAME

All subsets ``selections/NAME/b<budget>_s<seed>/subset.json`` run in ONE process: the union of
their records is encoded once and every run reuses it. Each run writes OUT/b<budget>_s<seed>/:
the Hugging Face checkpoint (model + processor, ``save_pretrained``), ``train_log.json`` (steps,
final loss, wall seconds, the per-step log) and, last, ``done.json`` with the digest of (subset
file, recipe params, base model). A rerun skips runs whose marker digest matches (declare OUT
``persist: true`` in dvc.yaml), resumes an interrupted run from its ``checkpoint/``, and
removes run folders of subsets that no longer exist.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from selfilter.config import ConfigError, load_section
from selfilter.training.config import FinetuneConfig

log = logging.getLogger("finetune")
# params that change where/how fast a run goes, not what it computes
_NOT_IN_DIGEST = {"device", "checkpoint_every"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--method", required=True, help="selection method name (for the logs)")
    p.add_argument("--selections", required=True, help="folder of b<budget>_s<seed>/subset.json")
    p.add_argument("--image-dir", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--model", required=True, help="base VLM folder (save_pretrained) or hub name")
    p.add_argument("--out", required=True, help="output folder (one subfolder per run)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise
    try:
        return _run(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:  # user errors: one line, no traceback
        print(f"finetune: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("finetune", FinetuneConfig, args.params)
    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.io import file_digest, read_json, write_json
    from selfilter.models.loading import load_vlm, save_vlm
    from selfilter.training.finetune import discover_subsets, finetune, recipe_steps, run_digest
    from selfilter.training.loop import make_accelerator, remove_checkpoint

    out = Path(args.out)
    specs = discover_subsets(args.selections)
    recipe = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_DIGEST}
    base_digest = file_digest(args.model) if Path(args.model).exists() else str(args.model)
    accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
    main_proc = accelerator.is_main_process

    if main_proc and out.is_dir():  # run folders of subsets that are gone (budgets/seeds changed)
        wanted = {s.name for s in specs}
        for d in out.iterdir():
            if d.is_dir() and d.name not in wanted:
                log.info("removing stale run %s", d)
                shutil.rmtree(d)

    # Which runs are still to do, and the union of their records (encoded once, below).
    todo, subsets = [], {}
    for spec in specs:
        digest = run_digest(file_digest(spec.path), recipe, base_digest)
        run_dir = out / spec.name
        done = run_dir / "done.json"
        if done.is_file() and read_json(done).get("digest") == digest:
            log.info("%s/%s: done for these inputs, skipped", args.method, spec.name)
            continue
        records = read_json(spec.path)
        if not isinstance(records, list) or not records:
            raise ValueError(f"{spec.path}: expected a non-empty JSON array of records")
        for i, r in enumerate(records):
            if not isinstance(r, dict) or not isinstance(r.get("uid"), int):
                raise ValueError(f"{spec.path}: record {i} has no integer 'uid'")
        subsets[spec.name] = records
        todo.append((spec, digest))
    if not todo:
        log.info("%s: all %d runs up to date", args.method, len(specs))
        return 0

    union: dict[int, dict] = {}
    for records in subsets.values():
        for r in records:
            union.setdefault(r["uid"], r)
    _, processor = load_vlm(args.model, cfg.dtype, "cpu")
    encoder = ChatEncoder(processor, max_length=cfg.max_length)
    uids = sorted(union)
    pool = EncodedDataset([union[u] for u in uids], args.image_dir, encoder,
                          progress=not args.no_progress and main_proc)
    position = {u: i for i, u in enumerate(uids)}

    for spec, digest in todo:
        run_dir = out / spec.name
        if main_proc:
            marker = run_dir / "run.json"
            if run_dir.exists() and not (marker.is_file() and read_json(marker).get("digest") == digest):
                shutil.rmtree(run_dir)  # a different (older) run: nothing in it can be resumed
            write_json(marker, {"digest": digest, "method": args.method, "subset": str(spec.path)})
        accelerator.wait_for_everyone()
        data = pool.subset([position[r["uid"]] for r in subsets[spec.name]])
        steps = recipe_steps(len(data), spec.budget, recipe=cfg.recipe, epochs=cfg.epochs,
                             reference_budget=cfg.reference_budget, batch_size=cfg.batch_size,
                             world=accelerator.num_processes)
        model, _ = load_vlm(args.model, cfg.dtype, "cpu")
        seed = spec.seed + cfg.seed_offset
        result = finetune(model, data, encoder.pad_token_id, accelerator=accelerator, num_steps=steps, lr=cfg.lr,
                          weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, batch_size=cfg.batch_size,
                          grad_clip=cfg.grad_clip, freeze_vision=cfg.freeze_vision, seed=seed,
                          checkpoint_dir=run_dir, checkpoint_every=cfg.checkpoint_every, max_steps=cfg.max_steps,
                          group_by_length=cfg.group_by_length,
                          progress=not args.no_progress, desc=f"{args.method}/{spec.name}")
        if not result.finished:
            log.info("%s/%s: stopped at step %d of %d (max_steps); checkpoint kept", args.method, spec.name,
                     result.step, result.num_steps)
            continue
        if main_proc:
            save_started = time.perf_counter()
            save_vlm(accelerator.unwrap_model(model), processor, run_dir)
            tail = [r["loss"] for r in result.log[-5:]]
            write_json(run_dir / "train_log.json", {
                "method": args.method, "budget": spec.budget, "seed": spec.seed, "train_seed": seed,
                "n_samples": len(data), "recipe": cfg.recipe, "steps": result.step,
                "epochs": round(result.step * cfg.batch_size * accelerator.num_processes / len(data), 4),
                "final_loss": sum(tail) / len(tail), "resumed_from": result.resumed_from,
                "wall_s": round(result.wall_s, 3), "save_s": round(time.perf_counter() - save_started, 3),
                "log": result.log,
            })
        remove_checkpoint(accelerator, run_dir)
        if main_proc:  # the marker goes last: a run without it is redone
            write_json(run_dir / "done.json", {"digest": digest, "steps": result.step})
            log.info("%s/%s: %d samples, %d steps, loss %.4f, %.2f s", args.method, spec.name, len(data),
                     result.step, result.log[-1]["loss"], result.wall_s)
        accelerator.wait_for_everyone()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stages.finetune", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
