"""DVC stage ``base``: the starting models (CLIP + LLaVA), built here or loaded.

    python -m stages.base --params params.yaml --pool data/pool --image-dir data/shapes \
        --clip-out models/clip --out models/base --metrics metrics/base.json

``base.source: tiny`` builds a base for whatever pool it is given, offline: a tokenizer and a
tiny Llama on the pool's text, a tiny CLIP (contrastive) and LLaVA's projector (feature
alignment) on image-text pairs - the shapes generator's captioned scenes for the embedded data,
each image record's picture and first answer for yours (selfilter.data.pairs) - then probes the
result on held-out pairs and questions (the shapes benchmark's, or your held-out split's).
``base.source: pretrained`` loads ``base.pretrained.*`` checkpoints (local paths, or hub names in
the GPU profiles) and saves them to the same places; the pool is then only used for the probe.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from selfilter import console
from selfilter.config import ConfigError, load_section
from selfilter.io import read_jsonl, write_json, write_sidecar
from selfilter.models.config import BaseConfig
from stages._common import StageParser


def _probe_questions(info, pool: Path, image_dir: str, n: int) -> tuple[list[tuple], Path | None]:
    """Held-out ``(image, question, answer)``: the shapes benchmark's VQA questions, or the first
    records of your held-out split; and the file they came from."""
    from selfilter.data.pairs import heldout_questions
    from selfilter.data.records import load_image

    if n == 0:
        return [], None
    if info.benchmark_kind == "shapes":
        path = Path(info.benchmark["dir"]) / "vqa.jsonl"
        if not path.exists():
            return [], None
        rows = read_jsonl(path)[:n]
        return [(load_image(path.parent, r["image"]), r["question"], r["answer"]) for r in rows], path
    path = pool / "heldout.jsonl"
    questions = heldout_questions(read_jsonl(path), image_dir, n) if path.is_file() else []
    return questions, (path if questions else None)


def _save_dir(out: Path, save) -> None:
    """Save into a temp folder beside ``out``, then swap it in: never a half-written model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    console.setup()
    parser = StageParser("stages.base", __doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--pool", required=True, help="the prepare stage's pool folder (records.jsonl, source.json)")
    parser.add_argument("--image-dir", required=True, help="folder the records' image paths are relative to")
    parser.add_argument("--clip-out", required=True, help="CLIPModel + CLIPProcessor folder")
    parser.add_argument("--out", required=True, help="LLaVA model + processor folder")
    parser.add_argument("--metrics", required=True, help="probe metrics and timings (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_section("base", BaseConfig, args.params)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pool, progress = Path(args.pool), not args.no_progress

    import torch

    from selfilter.data.records import conversation_text, load_records
    from selfilter.data.source import read_source
    from selfilter.models.loading import load_pretrained_base, save_vlm
    from selfilter.models.pretrain import build_tiny_base, probe_base

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    info = read_source(pool)
    questions, questions_file = _probe_questions(info, pool, args.image_dir, cfg.probe.n_questions)
    inputs: dict[str, Path] = {}
    if cfg.source == "tiny":
        records_file = pool / "records.jsonl"
        inputs["records"] = records_file
        records = load_records(records_file)
        texts = [conversation_text(r["conversations"]) for r in records]
        n_pairs = max(cfg.clip.n_pairs, cfg.align.n_pairs)
        if info.source == "shapes":
            from selfilter.data.shapes import caption_pairs

            pairs = caption_pairs(cfg.seed, n_pairs, cfg.clip.image_size)
            # a different seed: scenes the models never saw
            probe_pairs = caption_pairs(cfg.seed + 10_007, cfg.probe.n_pairs, cfg.clip.image_size)
        else:
            from selfilter.data.pairs import pool_caption_pairs

            pairs = pool_caption_pairs(records, args.image_dir, n_pairs, cfg.seed)
            if not pairs:
                print(f"error: {records_file}: no image record with a question and an answer: "
                      "the tiny base needs pictures to learn to see", file=sys.stderr)
                return 1
            held = read_jsonl(pool / "heldout.jsonl") if (pool / "heldout.jsonl").is_file() else []
            probe_pairs = pool_caption_pairs(held, args.image_dir, min(cfg.probe.n_pairs, len(held)), cfg.seed)
        built = build_tiny_base(pairs, texts, probe_pairs, questions, cfg, progress=progress)
        clip, clip_processor, model, processor, metrics = (
            built["clip"], built["clip_processor"], built["model"], built["processor"], built["metrics"])
    else:
        try:
            clip, clip_processor, model, processor = load_pretrained_base(
                clip=cfg.pretrained.clip, model=cfg.pretrained.model, language_model=cfg.pretrained.language_model,
                projector=cfg.pretrained.projector, vision_feature_layer=cfg.pretrained.vision_feature_layer,
                vision_feature_select_strategy=cfg.pretrained.vision_feature_select_strategy,
                dtype=cfg.pretrained.dtype, seed=cfg.seed)
        except (OSError, ValueError) as e:
            print(f"error: {args.params}: base.pretrained: {e}", file=sys.stderr)
            return 1
        metrics = probe_base(clip, clip_processor, model, processor, [], questions, prompt=cfg.align.prompt,
                             group=cfg.probe.retrieval_group, max_new_tokens=cfg.probe.max_new_tokens,
                             device=cfg.device, progress=progress)
    if questions_file is not None:
        inputs["probe_questions"] = questions_file

    model.to("cpu")
    clip.to("cpu")

    def save_clip(d: Path) -> None:
        clip.save_pretrained(d)
        clip_processor.save_pretrained(d)
        write_sidecar(d / "clip", params=cfg, inputs=inputs, source=cfg.source)

    def save_base(d: Path) -> None:
        save_vlm(model, processor, d)
        write_sidecar(d / "base", params=cfg, inputs=inputs, source=cfg.source)

    _save_dir(Path(args.clip_out), save_clip)
    _save_dir(Path(args.out), save_base)
    metrics["source"] = cfg.source
    metrics.setdefault("time_s", {})["total_s"] = round(time.perf_counter() - start, 2)
    metrics["time_s"]["cpu_s"] = round(time.process_time(), 2)
    write_json(args.metrics, metrics)
    summary = {k: v for k, v in metrics.items() if k in ("clip", "caption")}
    vqa = metrics.get("vqa", {})
    print(f"base: {cfg.source} -> {args.out}, {args.clip_out} ({metrics['time_s']['total_s']} s) {summary} "
          f"vqa_em={vqa.get('exact_match')} (majority {vqa.get('majority_answer_baseline')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
