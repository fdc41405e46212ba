"""Feature-extraction throughput: the batched path vs the reference way, same run, same machine.

    python -m benchmarks.bench_features --device cpu --models tiny,b32 --n-images 256
    python -m benchmarks.bench_features --device cuda --models l14 --n-images 4096 --batch-size 512

The reference way (Self-Filter's code): one record at a time, fp32, image then text encoder.
The batched way: ``selfilter.features.extract_shards`` (DataLoader workers decode images,
batches, bf16 on CUDA / fp32 on CPU). Models are randomly initialised at real shapes (nothing is
downloaded): ``tiny`` (the embedded default), ``b32`` (CLIP ViT-B/32, 224 px), ``l14`` (ViT-L/14,
224 px). Prints a markdown table; ``--append-readme`` adds it to benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfilter.data.records import conversation_text, load_image
from selfilter.features import clip

SHAPES = {  # (vision hidden, layers, heads, patch, text hidden, layers, heads, projection)
    "b32": (768, 12, 12, 32, 512, 12, 8, 512),
    "l14": (1024, 24, 16, 14, 768, 12, 12, 768),
}


def build_model(name: str, out_dir: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from selfilter.models.tiny import build_tiny_clip

    tiny = build_tiny_clip(out_dir / "tiny", seed=0)
    if name == "tiny":
        return tiny
    vh, vl, vheads, patch, th, tl, theads, proj = SHAPES[name]
    processor = CLIPProcessor.from_pretrained(tiny)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}), tokenizer=processor.tokenizer)
    tok = processor.tokenizer
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=th, intermediate_size=4 * th, num_hidden_layers=tl,
                         num_attention_heads=theads, max_position_embeddings=77,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=vh, intermediate_size=4 * vh, num_hidden_layers=vl,
                           num_attention_heads=vheads, image_size=224, patch_size=patch),
        projection_dim=proj)
    torch.manual_seed(0)
    path = out_dir / name
    CLIPModel(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_pool(n: int, out_dir: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        name = f"images/{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)).save(out_dir / name, quality=90)
        records.append({"uid": i, "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the large circle on the left?"},
            {"from": "gpt", "value": "The large circle on the left is red, next to a small blue square."}]})
    return records


def reference(model, processor, records, image_root, device) -> float:
    """Self-Filter's loop: one sample at a time, fp32."""
    max_len = clip.text_max_length(model)
    start = time.perf_counter()
    with torch.no_grad():
        for r in records:
            pix = processor.image_processor(load_image(image_root, r["image"]), return_tensors="pt")["pixel_values"]
            ids = processor.tokenizer(conversation_text(r["conversations"]), truncation=True,
                                      max_length=max_len, return_tensors="pt")
            i = clip._pooled(model.get_image_features(pixel_values=pix.to(device)))
            t = clip._pooled(model.get_text_features(**{k: v.to(device) for k, v in ids.items()}))
            (i / i.norm()).cpu(), (t / t.norm()).cpu()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(records) / (time.perf_counter() - start)


def batched(model, processor, records, image_root, work_dir, device, batch_size, num_workers) -> float:
    items = clip.records_to_items(records)
    start = time.perf_counter()
    clip.extract_shards(items, image_root, work_dir, model=model, processor=processor, device=device,
                        batch_size=batch_size, num_workers=num_workers, shard_size=len(items), progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(records) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="tiny,b32", help="comma list of tiny, b32, l14")
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--n-reference", type=int, default=None, help="images for the slow reference loop (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--append-readme", action="store_true")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = make_pool(args.n_images, tmp / "pool")
        for name in args.models.split(","):
            path = build_model(name, tmp / "models")
            dtype = clip.resolve_dtype("auto", args.device)
            fp32, proc = clip.load_clip(str(path), args.device, torch.float32)
            ref_records = records[: args.n_reference or len(records)]
            batched(fp32, proc, records[: args.batch_size], tmp / "pool", tmp / f"warm-{name}",
                    args.device, args.batch_size, 0)  # warm-up (allocator, kernels)
            ref = reference(fp32, proc, ref_records, tmp / "pool", args.device)
            model = fp32 if dtype == torch.float32 else clip.load_clip(str(path), args.device, dtype)[0]
            fast = batched(model, proc, records, tmp / "pool", tmp / f"work-{name}", args.device,
                           args.batch_size, args.num_workers)
            rows.append({"model": name, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
                         "batch": args.batch_size, "workers": args.num_workers, "n_images": len(records),
                         "reference_img_s": round(ref, 1), "batched_img_s": round(fast, 1),
                         "speedup": round(fast / ref, 1)})
            print(json.dumps(rows[-1]), flush=True)
    machine = (torch.cuda.get_device_name() if args.device.startswith("cuda")
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    table = ["| model | device | dtype | batch | workers | images | reference img/s (1 at a time, fp32) "
             "| batched img/s | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['device']} | {r['dtype']} | {r['batch']} | {r['workers']} | {r['n_images']} "
              f"| {r['reference_img_s']} | {r['batched_img_s']} | {r['speedup']}x |" for r in rows]
    text = "\n".join(table)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.append_readme:
        readme = Path(__file__).with_name("README.md")
        cmd = "python -m benchmarks.bench_features " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
        with open(readme, "a", encoding="utf-8") as f:
            f.write(f"\n### Features: {machine}\n\n`{cmd}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
