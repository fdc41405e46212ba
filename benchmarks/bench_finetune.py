"""Fine-tuning step: the answer-only loss against the reference way (full logits), same batches.

    python -m benchmarks.bench_finetune [--workspace .] [--batches 8] [--reps 5] [--threads 1]
    python -m benchmarks.bench_finetune --preset 1b --device cuda --dtype bfloat16 --batch 4 --seq 1024

Workspace mode (default): the pipeline's own base model (``models/base``) and pool
(``data/pool/records.jsonl``, images under ``data.image_dir``) after ``dvc repro base``, batches
of ``finetune.batch_size`` records encoded as the finetune stage encodes them, length-grouped
as it groups them - the default grid's real step. Preset mode: a random LLaVA of
benchmarks/bench_stage1.py's shapes and synthetic batches (image tokens + an 8-token prompt
unsupervised, the rest supervised; ``--answer-share`` of the text supervised).

Both steps do forward, loss, backward, grad clipping and an AdamW step on two copies of the
same model: the reference is ``FullLogitsLoss`` (the VLM's forward, ``mean_cross_entropy`` of
its full ``[B, T, V]`` logits: ``finetune.loss: full_logits``); the new step is ``AnswerLoss``.
Steps alternate batch by batch (A, B, A, B) so machine-load drifts hit both.
Reported (one JSON line): median ms/step of each, the median within-pair ratio, the losses of
the first step (equal to float rounding), the logits each step materialises (MB), peak CUDA
memory of each on a GPU, and the CPU (model and ISA flags) with its threads and load.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch


def _workspace_batches(root: Path, n_batches: int, dtype: str):
    from selfilter.config import load_section
    from selfilter.data.config import DataConfig
    from selfilter.data.encode import ChatEncoder, EncodedDataset, collate
    from selfilter.models.loading import load_vlm
    from selfilter.training.config import FinetuneConfig
    from selfilter.training.loop import epoch_batches

    params = root / "params.yaml"
    cfg = load_section("finetune", FinetuneConfig, params)
    data = load_section("data", DataConfig, params)
    for need in (root / "models/base", root / "data/pool/records.jsonl"):
        if not need.exists():
            raise SystemExit(f"bench_finetune: {need} not found - run `dvc repro base` in {root} first")
    model, processor = load_vlm(str(root / "models/base"), dtype, "cpu")
    records = [json.loads(line) for line in open(root / "data/pool/records.jsonl")]
    records = records[: cfg.batch_size * 16]  # one length-grouping window of the default sampler
    image_dir = Path(data.image_dir) if Path(data.image_dir).is_absolute() else root / data.image_dir
    ds = EncodedDataset(records, image_dir, ChatEncoder(processor, max_length=cfg.max_length), progress=False)
    order = epoch_batches(len(ds), cfg.batch_size, 0, 0, lengths=ds.num_tokens() if cfg.group_by_length else None)
    pad = processor.tokenizer.pad_token_id
    return model, [collate([ds[i] for i in b], pad) for b in order[:n_batches]], cfg.batch_size


def _preset_batches(args):
    from benchmarks.bench_stage1 import build

    from selfilter.models.loading import resolve_dtype

    model = build(args.preset, resolve_dtype(args.dtype), "cpu")
    cfg = model.config
    n_image = cfg.image_seq_length
    seq = args.seq or n_image + 48
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(10, cfg.text_config.vocab_size, (args.batch, seq), generator=g)
        ids[:, 1:1 + n_image] = 3  # bench_stage1's image token
        labels = ids.clone()
        start = 1 + n_image + 8
        n_answer = max(1, round(args.answer_share * (seq - start)))
        labels[:, : seq - n_answer] = -100
        size = cfg.vision_config.image_size
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                        "pixel_values": torch.randn(args.batch, 3, size, size, generator=g)})
    return model, batches, args.batch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--workspace", default=".", help="a checkout after `dvc repro base` (workspace mode)")
    ap.add_argument("--preset", default=None, help="tiny | 1b: a random LLaVA instead of the workspace's")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=4, help="preset mode: samples per batch")
    ap.add_argument("--seq", type=int, default=None, help="preset mode: tokens per sample")
    ap.add_argument("--answer-share", type=float, default=0.1, help="preset mode: supervised share of the text")
    ap.add_argument("--batches", type=int, default=8, help="distinct batches, each stepped by both")
    ap.add_argument("--reps", type=int, default=5, help="passes over the batches")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the finetune stage's default is 1)")
    ap.add_argument("--attn", default=None, help="attention implementation for both arms (eager, sdpa; default: "
                                                 "the checkpoint's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from selfilter.models.loading import trainable_parameters
    from selfilter.machine import cpu_description
    from selfilter.training.answer_loss import AnswerLoss, FullLogitsLoss
    from selfilter.training.loop import adamw, model_inputs

    if args.preset:
        model, batches, batch_size = _preset_batches(args)
    else:
        model, batches, batch_size = _workspace_batches(Path(args.workspace), args.batches, args.dtype)
    dev, cuda = args.device, args.device.startswith("cuda")
    if args.attn:
        model.set_attn_implementation(args.attn)
    ref_model, new_model = model.to(dev), copy.deepcopy(model).to(dev)
    dtype = next(ref_model.parameters()).dtype
    answer = AnswerLoss(new_model)
    arms = {}
    for name, m, loss_module in (("reference", ref_model, FullLogitsLoss(ref_model)),
                                 ("answer_only", new_model, answer)):
        params = trainable_parameters(m, freeze_vision=True)
        m.train()
        arms[name] = dict(loss_module=loss_module, params=params, times=[], first_loss=None, peak_mb=None,
                          opt=adamw(params, lr=1e-4, weight_decay=0.0, device=dev))

    def step(arm: dict, b: dict) -> None:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        loss = arm["loss_module"](labels=b["labels"].to(dev), **model_inputs(b, dev, dtype))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(arm["params"], 1.0)
        arm["opt"].step()
        arm["opt"].zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            arm["peak_mb"] = max(arm["peak_mb"] or 0, torch.cuda.max_memory_allocated() / 2**20)
        arm["times"].append(time.perf_counter() - t)
        if arm["first_loss"] is None:
            arm["first_loss"] = loss.item()

    for b in batches[:2]:  # warm-up; the first step of each arm is its loss check
        for arm in arms.values():
            step(arm, b)
    for arm in arms.values():
        arm["times"].clear()
    for _ in range(args.reps):
        for b in batches:
            for arm in arms.values():
                step(arm, b)
    ref, new = arms["reference"], arms["answer_only"]
    vocab = ref_model.get_output_embeddings().weight.shape[0]
    tokens = statistics.mean(b["labels"].numel() for b in batches)
    supervised = statistics.mean(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    size = torch.finfo(dtype).bits // 8
    print(json.dumps({
        "mode": f"preset {args.preset}" if args.preset else f"workspace {os.path.abspath(args.workspace)}",
        "device": dev, "dtype": str(dtype).replace("torch.", ""), "batch": batch_size,
        "tokens_per_batch": round(tokens), "supervised_per_batch": round(supervised), "vocab": vocab,
        "answer_only_path": answer.answer_only,
        "reference_ms": round(1000 * statistics.median(ref["times"]), 2),
        "answer_only_ms": round(1000 * statistics.median(new["times"]), 2),
        "speedup_paired": round(statistics.median(a / b for a, b in zip(ref["times"], new["times"])), 3),
        "first_loss": {"reference": ref["first_loss"], "answer_only": new["first_loss"]},
        "logits_mb": {"reference": round(tokens * vocab * size / 2**20, 1),
                      "answer_only": round(supervised * vocab * size / 2**20, 1)},
        "peak_cuda_mb": {"reference": ref["peak_mb"], "answer_only": new["peak_mb"]} if cuda else None,
        "attn": model.config._attn_implementation, "steps_each": len(ref["times"]),
        "threads": torch.get_num_threads(), "cpu": cpu_description(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
