"""Stage-1 overhead: a Self-Filter co-training step vs a plain fine-tuning step, same batch/model.

    python -m benchmarks.bench_stage1 [--preset tiny|1b] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--batch 8] [--seq 128] [--feature-dim 1536] [--reps 30]

Both steps do forward, loss, backward, grad clipping and an AdamW step on the same LLaVA (random
weights at the preset's shapes, vision tower frozen); the Self-Filter step adds the score net's
forward on the batch's features and the batch-softmax weighting (``self_filter_loss``), and its
optimizer also updates the score net. Steps alternate (A, B, A, B, ...) so drifts in machine load
hit both; the medians and the median within-pair ratio are reported. Presets: ``tiny`` = the embedded default's shape (CLIP 2x64,
Llama 2x128, 32 px, 16 image tokens); ``1b`` = CLIP ViT-L/14-336 (576 image tokens) + a
TinyLlama-1.1B-shaped LM (the NOTES.md cost anchor). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from selfilter.models.loading import resolve_dtype, trainable_parameters
from selfilter.training.loop import adamw
from selfilter.training.loss import mean_cross_entropy, self_filter_loss
from selfilter.training.scorenet import ScoreNet

PRESETS = {
    "tiny": dict(vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8),
                 text=dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4), feature_layer=-1),
    "1b": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14),
               text=dict(vocab_size=32064, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4), feature_layer=-2),
}
IMAGE_TOKEN = 3


def build(preset: str, dtype: torch.dtype, device: str) -> LlavaForConditionalGeneration:
    p = PRESETS[preset]
    n_image = (p["vision"]["image_size"] // p["vision"]["patch_size"]) ** 2
    config = LlavaConfig(vision_config=CLIPVisionConfig(**p["vision"]).to_dict(),
                         text_config=LlamaConfig(**p["text"], max_position_embeddings=4096).to_dict(),
                         image_token_index=IMAGE_TOKEN, image_seq_length=n_image,
                         vision_feature_layer=p["feature_layer"], vision_feature_select_strategy="default")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    return model.to(dtype)


def batch_for(model, batch: int, seq: int, feature_dim: int, device: str, dtype: torch.dtype):
    cfg = model.config
    n_image = cfg.image_seq_length
    if seq <= n_image + 8:
        raise SystemExit(f"--seq {seq} must exceed the {n_image} image tokens by more than 8")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, cfg.text_config.vocab_size, (batch, seq), generator=g)
    ids[:, 1:1 + n_image] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, : 1 + n_image + 8] = -100  # prompt + image tokens unsupervised
    size = cfg.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=g)
    feats = torch.randn(batch, feature_dim, generator=g)
    return (ids.to(device), torch.ones_like(ids).to(device), pixels.to(device, dtype), labels.to(device),
            feats.to(device))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=None, help="tokens per sample (default: image tokens + 48)")
    ap.add_argument("--feature-dim", type=int, default=1536, help="score-net input (1536 = the clip setting)")
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    dtype = resolve_dtype(args.dtype)
    model = build(args.preset, dtype, args.device)
    seq = args.seq or model.config.image_seq_length + 48
    score_net = ScoreNet(args.feature_dim).to(args.device)
    params = trainable_parameters(model, freeze_vision=True)
    optimizer = adamw([{"params": params}, {"params": list(score_net.parameters())}], lr=1e-5, weight_decay=0.0,
                      device=args.device)
    ids, mask, pixels, labels, feats = batch_for(model, args.batch, seq, args.feature_dim, args.device, dtype)
    model.train()

    def step(self_filter: bool) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        if self_filter:
            loss = self_filter_loss(logits, labels, score_net(feats))
        else:
            loss = mean_cross_entropy(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params + list(score_net.parameters()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(args.warmup):
        step(False), step(True)
    plain, sf = [], []
    for _ in range(args.reps):
        plain.append(step(False))
        sf.append(step(True))
    p, s = statistics.median(plain), statistics.median(sf)
    # the ratio within each adjacent (plain, self-filter) pair cancels slow drifts in machine load
    pair_ratio = statistics.median(b / a for a, b in zip(plain, sf))
    print(json.dumps({
        "preset": args.preset, "device": args.device, "dtype": args.dtype, "batch": args.batch, "seq": seq,
        "feature_dim": args.feature_dim, "reps": args.reps, "threads": torch.get_num_threads(),
        "params_trainable": sum(x.numel() for x in params),
        "plain_step_s": round(p, 5), "self_filter_step_s": round(s, 5),
        "overhead_pct": round(100 * (s - p) / p, 2),
        "overhead_pct_paired": round(100 * (pair_ratio - 1), 2),
        "tokens_per_s_plain": round(args.batch * seq / p, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
