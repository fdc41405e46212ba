"""Making the base VLM the way LLaVA is made, in miniature, plus the probes that grade it.

1. CLIP trained contrastively on image/caption pairs (``train_clip``);
2. a causal LM pretrained on the dataset's text (``pretrain_lm``);
3. LLaVA's feature alignment: vision tower and LM frozen, only the projector trained to
   caption images through the chat template (``align_projector``); optionally the LM too
   (``align.tune_language_model``, on by default for the tiny models: with the projector alone
   the captions barely depend on the image - caption-token accuracy 0.718 with the true image
   vs 0.709 with shuffled ones - and with the LM trained too 0.827 vs 0.699).

Every function takes tensors / encoded samples and plain hyperparameters (no files), and a
``device``. Training uses AdamW, linear warmup then cosine decay, and gradient clipping:
without warmup and clipping the tiny models stall (NOTES.md).
"""
from __future__ import annotations

import math
import random
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from selfilter.data.encode import collate
from selfilter.models.loading import projector_of


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batches(n: int, batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _fit(params: list[nn.Parameter], n: int, step_loss: Callable[[list[int]], torch.Tensor], *,
         epochs: int, batch_size: int, lr: float, warmup_ratio: float, max_grad_norm: float,
         seed: int, desc: str, progress: bool) -> list[float]:
    """The one training loop: shuffled minibatches of positions -> ``step_loss`` -> AdamW step."""
    if epochs == 0 or n == 0:
        return []
    rng = random.Random(seed)
    torch.manual_seed(seed)
    steps = epochs * math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, steps, warmup_ratio)
    losses = []
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            for idx in _batches(n, batch_size, rng):
                loss = step_loss(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)  # drawn by the update
                bar.update(1)
    return losses


# -- 1. CLIP --------------------------------------------------------------------------------
def train_clip(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               epochs: int, batch_size: int, lr: float, warmup_ratio: float = 0.1, max_grad_norm: float = 1.0,
               seed: int = 0, device: str | torch.device = "cpu", progress: bool = True) -> list[float]:
    """CLIP's symmetric InfoNCE over in-batch pairs; returns the per-step losses."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]

    def step(idx: list[int]) -> torch.Tensor:
        out = model(pixel_values=pixel_values[idx].to(device), input_ids=input_ids[idx].to(device),
                    attention_mask=attention_mask[idx].to(device), return_loss=True)
        return out.loss

    losses = _fit(params, len(pixel_values), step, epochs=epochs, batch_size=batch_size, lr=lr,
                  warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, seed=seed, desc="clip", progress=progress)
    model.eval()
    return losses


@torch.no_grad()
def clip_embeddings(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    device: str | torch.device = "cpu", batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text embeddings ``[N, D]`` each."""
    model.to(device).eval()
    imgs, txts = [], []
    for i in range(0, len(pixel_values), batch_size):
        img = model.get_image_features(pixel_values=pixel_values[i:i + batch_size].to(device))
        txt = model.get_text_features(input_ids=input_ids[i:i + batch_size].to(device),
                                      attention_mask=attention_mask[i:i + batch_size].to(device))
        # transformers 5 may return a model output whose pooler_output is the projection
        imgs.append(getattr(img, "pooler_output", img).float().cpu())
        txts.append(getattr(txt, "pooler_output", txt).float().cpu())
    return (nn.functional.normalize(torch.cat(imgs), dim=-1), nn.functional.normalize(torch.cat(txts), dim=-1))


def retrieval_accuracy(image_emb: torch.Tensor, text_emb: torch.Tensor, texts: Sequence[str], group: int) -> float:
    """Image -> caption top-1 accuracy within consecutive groups of ``group`` pairs (chance
    ~1/group). A retrieved caption that is word-for-word the true one counts as correct:
    two scenes can share a caption."""
    hits = total = 0
    for s in range(0, len(image_emb) - group + 1, group):
        sim = image_emb[s:s + group] @ text_emb[s:s + group].T
        best = sim.argmax(dim=1).tolist()
        hits += sum(texts[s + j] == texts[s + b] for j, b in enumerate(best))
        total += group
    return hits / max(1, total)


# -- 2. language model ----------------------------------------------------------------------
def pretrain_lm(model, sequences: Sequence[Sequence[int]], pad_token_id: int, *, epochs: int, batch_size: int,
                lr: float, warmup_ratio: float = 0.05, max_grad_norm: float = 1.0, seed: int = 0,
                device: str | torch.device = "cpu", progress: bool = True) -> list[float]:
    """Next-token prediction on tokenised texts (each already cut to the wanted length)."""
    model.to(device).train()
    tensors = [torch.as_tensor(s, dtype=torch.long) for s in sequences]
    params = [p for p in model.parameters() if p.requires_grad]

    def step(idx: list[int]) -> torch.Tensor:
        batch = collate([{"input_ids": tensors[i], "labels": tensors[i],
                          "attention_mask": torch.ones_like(tensors[i])} for i in idx], pad_token_id)
        return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     labels=batch["labels"].to(device)).loss

    losses = _fit(params, len(tensors), step, epochs=epochs, batch_size=batch_size, lr=lr,
                  warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, seed=seed, desc="lm", progress=progress)
    model.eval()
    return losses


# -- 3. feature alignment -------------------------------------------------------------------
def _to_device(batch: dict[str, torch.Tensor], device, dtype) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        if k == "index":
            continue
        v = v.to(device)
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out


def align_projector(model, samples: Sequence[dict[str, torch.Tensor]], pad_token_id: int, *, epochs: int,
                    batch_size: int, lr: float, warmup_ratio: float = 0.1, max_grad_norm: float = 1.0,
                    seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
                    tune_language_model: bool = False) -> list[float]:
    """LLaVA stage 1: train the projector on image -> caption samples (``ChatEncoder`` outputs,
    answer tokens supervised), and the language model too when ``tune_language_model``. The
    vision tower (and otherwise the LM) is frozen and left as it was."""
    model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(projector_of(model).parameters())
    if tune_language_model:
        params += list(model.get_decoder().parameters()) + list(model.get_output_embeddings().parameters())
    for p in params:
        p.requires_grad_(True)
    dtype = next(model.parameters()).dtype

    def step(idx: list[int]) -> torch.Tensor:
        return model(**_to_device(collate([samples[i] for i in idx], pad_token_id), device, dtype)).loss

    losses = _fit(params, len(samples), step, epochs=epochs, batch_size=batch_size, lr=lr,
                  warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, seed=seed, desc="align", progress=progress)
    model.eval()
    return losses


@torch.no_grad()
def answer_token_accuracy(model, samples: Sequence[dict[str, torch.Tensor]], pad_token_id: int, *,
                          shuffle_images: bool = False, seed: int = 0, batch_size: int = 64,
                          device: str | torch.device = "cpu") -> float:
    """Teacher-forced top-1 accuracy on the supervised (answer) tokens.

    ``shuffle_images=True`` gives every sample another sample's image: the gap to the true
    pairing is what the image contributes (the language prior alone scores the shuffled one).
    """
    model.to(device).eval()
    dtype = next(model.parameters()).dtype
    hits = total = 0
    perm = list(range(len(samples)))
    if shuffle_images:
        random.Random(seed).shuffle(perm)
    for s in range(0, len(samples), batch_size):
        idx = list(range(s, min(s + batch_size, len(samples))))
        items = []
        for i in idx:
            item = dict(samples[i])
            if shuffle_images:
                for k, v in samples[perm[i]].items():
                    if k not in ("input_ids", "labels", "attention_mask", "index"):
                        item[k] = v
            items.append(item)
        batch = _to_device(collate(items, pad_token_id), device, dtype)
        labels = batch.pop("labels")
        logits = model(**batch).logits[:, :-1]
        target = labels[:, 1:]
        mask = target != -100
        hits += int(((logits.argmax(-1) == target) & mask).sum())
        total += int(mask.sum())
    return hits / max(1, total)


def normalise_answer(text: str) -> str:
    """Lower-case words without punctuation: how short answers are compared."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


@torch.no_grad()
def short_answer_exact_match(model, processor, items: Sequence[tuple], *, max_new_tokens: int = 8,
                             device: str | torch.device = "cpu", progress: bool = True) -> tuple[float, list[str]]:
    """Greedy answers to ``(image, question, answer)`` items, prompted exactly as lmms-eval's
    ``llava_hf`` prompts (``<image>\\n{question}`` through the tokenizer's chat template)."""
    model.to(device).eval()
    tok = processor.tokenizer
    dtype = next(model.parameters()).dtype
    preds, hits = [], 0
    for image, question, answer in tqdm(items, desc="probe", unit="q", disable=not progress):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}],
                                         add_generation_prompt=True, tokenize=False)
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        pred = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        preds.append(pred)
        hits += normalise_answer(pred) == normalise_answer(str(answer))
    return hits / max(1, len(items)), preds


# -- the whole base stage, tiny source ------------------------------------------------------
def caption_conversation(caption: str, prompt: str) -> list[dict[str, str]]:
    """An LLaVA alignment sample (LCS-558K style): a fixed brief-description prompt, the caption."""
    return [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": caption}]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_tiny_base(pairs: Sequence[tuple], texts: Sequence[str], probe_pairs: Sequence[tuple],
                    questions: Sequence[tuple], cfg, *, progress: bool = True) -> dict:
    """Tokenizer -> CLIP -> LM -> aligned LLaVA, then the held-out probes.

    ``pairs``/``probe_pairs``: ``(PIL image, caption)``; ``texts``: the dataset's conversation
    text; ``questions``: held-out ``(image, question, answer)``; ``cfg``: a ``BaseConfig``.
    Returns ``{"clip", "clip_processor", "model", "processor", "metrics"}``.
    """
    from selfilter.data.encode import ChatEncoder
    from selfilter.models.loading import assemble_llava, vision_only
    from selfilter.models.tiny import tiny_clip, tiny_llama
    from selfilter.models.tokenizer import train_tokenizer

    c, l, a, pr = cfg.clip, cfg.llm, cfg.align, cfg.probe
    device, seed, clip_norm = cfg.device, cfg.seed, cfg.max_grad_norm
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    captions = [cap for _, cap in pairs]

    with clock("tokenizer"):
        tokenizer = train_tokenizer(list(texts) + captions, vocab_size=cfg.tokenizer.vocab_size,
                                    min_frequency=cfg.tokenizer.min_frequency)

    with clock("clip"):
        clip, clip_processor = tiny_clip(
            tokenizer, image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.hidden_size,
            num_layers=c.num_layers, num_heads=c.num_heads, text_hidden_size=c.text_hidden_size,
            text_layers=c.text_layers, projection_dim=c.projection_dim, max_text_length=c.max_text_length, seed=seed)
        train = clip_processor(text=captions[:c.n_pairs], images=[im for im, _ in pairs[:c.n_pairs]],
                               return_tensors="pt", padding=True, truncation=True)
        clip_losses = train_clip(clip, train["pixel_values"], train["input_ids"], train["attention_mask"],
                                 epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, warmup_ratio=c.warmup_ratio,
                                 max_grad_norm=clip_norm, seed=seed, device=device, progress=progress)

    with clock("lm"):
        llama = tiny_llama(tokenizer, hidden_size=l.hidden_size, num_layers=l.num_layers, num_heads=l.num_heads,
                           intermediate_size=l.intermediate_size, seed=seed + 1)
        eos = tokenizer.eos_token_id
        seqs = [ids[:l.max_length - 1] + [eos] for ids in tokenizer(list(texts) + captions)["input_ids"]]
        lm_losses = pretrain_lm(llama, seqs, tokenizer.pad_token_id, epochs=l.epochs, batch_size=l.batch_size,
                                lr=l.lr, warmup_ratio=l.warmup_ratio, max_grad_norm=clip_norm, seed=seed + 1,
                                device=device, progress=progress)

    with clock("align"):
        model, processor = assemble_llava(
            vision_only(clip), llama, {"tokenizer": tokenizer, "image_processor": clip_processor.image_processor},
            vision_feature_layer=a.vision_feature_layer, seed=seed + 2)
        encoder = ChatEncoder(processor)
        samples = [encoder.encode(caption_conversation(cap, a.prompt), im)
                   for im, cap in tqdm(pairs[:a.n_pairs], desc="encode", unit="pair", disable=not progress)]
        align_losses = align_projector(model, samples, encoder.pad_token_id, epochs=a.epochs,
                                       batch_size=a.batch_size, lr=a.lr, warmup_ratio=a.warmup_ratio,
                                       max_grad_norm=clip_norm, seed=seed + 2, device=device, progress=progress,
                                       tune_language_model=a.tune_language_model)

    with clock("probe"):
        metrics = probe_base(clip, clip_processor, model, processor, probe_pairs, questions,
                             prompt=a.prompt, group=pr.retrieval_group, max_new_tokens=pr.max_new_tokens,
                             device=device, progress=progress)

    metrics["train"] = {name: {"loss_first": round(ls[0], 4), "loss_last": round(ls[-1], 4), "steps": len(ls)}
                        for name, ls in (("clip", clip_losses), ("lm", lm_losses), ("align", align_losses)) if ls}
    metrics["params"] = {"clip": n_params(clip), "vision_tower": n_params(model.model.vision_tower),
                         "projector": n_params(projector_of(model)),
                         "language_model": n_params(model.model.language_model) + n_params(model.lm_head),
                         "vocab": len(tokenizer)}
    metrics["time_s"] = {k: round(v, 2) for k, v in timings.items()}
    return {"clip": clip, "clip_processor": clip_processor, "model": model, "processor": processor,
            "metrics": metrics}


def probe_base(clip, clip_processor, model, processor, probe_pairs: Sequence[tuple], questions: Sequence[tuple],
               *, prompt: str, group: int, max_new_tokens: int, device="cpu", progress: bool = True) -> dict:
    """How good the base is on held-out data. CLIP: image->caption retrieval vs chance. VLM:
    caption-token accuracy with the true image vs another image (what vision adds), and exact
    match on short-answer questions vs always giving the most common answer (a base that is
    not instruction-tuned should sit near or below that baseline)."""
    from collections import Counter

    from selfilter.data.encode import ChatEncoder

    out: dict = {}
    if probe_pairs:
        caps = [cap for _, cap in probe_pairs]
        enc = clip_processor(text=caps, images=[im for im, _ in probe_pairs], return_tensors="pt",
                             padding=True, truncation=True)
        img, txt = clip_embeddings(clip, enc["pixel_values"], enc["input_ids"], enc["attention_mask"], device=device)
        g = min(group, len(probe_pairs))
        out["clip"] = {"retrieval_top1": round(retrieval_accuracy(img, txt, caps, g), 4),
                       "retrieval_chance": round(1 / g, 4), "group": g, "n": len(probe_pairs)}
        encoder = ChatEncoder(processor)
        samples = [encoder.encode(caption_conversation(cap, prompt), im) for im, cap in probe_pairs]
        out["caption"] = {
            "token_acc": round(answer_token_accuracy(model, samples, encoder.pad_token_id, device=device), 4),
            "token_acc_shuffled_images": round(answer_token_accuracy(
                model, samples, encoder.pad_token_id, shuffle_images=True, device=device), 4),
            "n": len(samples)}
    if questions:
        em, preds = short_answer_exact_match(model, processor, questions, max_new_tokens=max_new_tokens,
                                             device=device, progress=progress)
        answers = Counter(normalise_answer(str(ans)) for _, _, ans in questions)
        out["vqa"] = {"exact_match": round(em, 4),
                      "majority_answer_baseline": round(answers.most_common(1)[0][1] / len(questions), 4),
                      "n": len(questions), "examples": [[q, str(ans), p] for (_, q, ans), p in
                                                        list(zip(questions, preds))[:5]]}
    return out


class _Clock:
    """``with clock("name"):`` adds the block's wall time to ``timings[name + '_s']``."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings

    def __call__(self, name: str):
        import contextlib
        import time

        @contextlib.contextmanager
        def block():
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.timings[f"{name}_s"] = time.perf_counter() - t0

        return block()
