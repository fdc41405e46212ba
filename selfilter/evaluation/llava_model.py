"""``selfilter_llava_hf``: lmms-eval's built-in ``llava_hf`` with a log-likelihood that works.

lmms-eval 0.7.3's ``llava_hf`` implements ``loglikelihood`` but, measured here with
transformers 5.2x, it cannot run: it tokenizes the context alone through the processor with the
``<image>`` placeholder and no image, which transformers 5 refuses ("Found 1 <image> tokens in
the text but no images were passed"). With older transformers that call succeeds but leaves the
placeholder as one token while the scored sequence holds the expanded image tokens, so the
label mask stops ``image_seq_length - 1`` tokens short and the loss includes the end of the
question. This subclass changes ``loglikelihood``, and lets ``generate_until`` run in batches.

Generation at ``batch_size`` 1 is ``llava_hf``'s own, inherited unchanged. lmms-eval 0.7.3's
``llava_hf`` refuses any other batch size ("Do not support batch_size_per_gpu > 1"), and at batch
1 a small model's evaluation is per-token Python overhead: 94% of the embedded default's
evaluate stage was ``generate`` at batch 1. With ``batch_size`` > 1 the same prompts (chat
template, ``<image>`` prepended as ``llava_hf`` does), the same greedy/sampling arguments and
the same decoding (``skip_special_tokens``; ``until`` is not applied, as ``llava_hf`` does not)
go through one left-padded ``generate`` call per batch of requests with equal generation
arguments, each with exactly one image; any other request takes the batch-1 path. Outputs equal
the batch-1 path's up to float rounding: identical in float64 (tests/evaluation), and on the
default grid in float32 every one of 17,360 responses was identical (benchmarks/README.md).

What it returns keeps lmms-eval's convention - not lm-eval's summed log-probability: every
``loglikelihood`` of lmms-eval's models returns ``(outputs.loss, is_greedy)``, the *mean*
negative log-likelihood per continuation token, and its ``multiple_choice`` scoring takes the
argmin. The continuation is scored as the chat template renders it in the assistant turn (the
answer and the template's end-of-turn token), with the context (image and question) tokenized
with the same image so its length is right. A document that carries ``answer_tokens`` (the
held-out tasks' docs do) is checked against the span scored.

Registered with lmms-eval's model registry by :func:`register` (the evaluator calls it), so
``evaluate.model: selfilter_llava_hf`` selects it in-process and in the evaluation workers.
"""
from __future__ import annotations

import json

import PIL.Image
import torch
from lmms_eval.models.simple.llava_hf import (
    DEFAULT_IMAGE_TOKEN,
    VICUNA_CHAT_TEMPLATE,
    LlavaHf,
)
from tqdm.auto import tqdm

MODEL_NAME = "selfilter_llava_hf"


class SelfilterLlavaHf(LlavaHf):
    """``llava_hf`` whose ``loglikelihood`` scores exactly the continuation's tokens."""

    def _use_chat_template(self) -> None:
        """The template ``llava_hf`` prompts with: the model arg's, else the tokenizer's, else Vicuna."""
        if self.chat_template is not None:
            self.tokenizer.chat_template = self.chat_template
        elif self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = VICUNA_CHAT_TEMPLATE  # llava_hf's fallback

    def _render(self, context: str, continuation: str) -> tuple[str, str]:
        messages = [{"role": "user", "content": context}, {"role": "assistant", "content": continuation}]
        self._use_chat_template()
        prompt = self.tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return prompt, full

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        res = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in tqdm(
                [r.args for r in requests], disable=(self.rank != 0), desc="Model Responding"):
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            visuals = self.flatten([doc_to_visual(doc)])
            if visuals and DEFAULT_IMAGE_TOKEN not in context:  # as llava_hf's generate_until
                context = f"{' '.join([DEFAULT_IMAGE_TOKEN] * len(visuals))}\n{context}"
            prompt, full = self._render(context, continuation)
            images = visuals or None
            # Both through the processor with the same images: the placeholder expands to the
            # same image tokens, so the prompt's length is the scored span's start.
            inputs = self._image_processor(text=[full], images=images, return_tensors="pt")
            ctx_ids = self._image_processor(text=[prompt], images=images, return_tensors="pt")["input_ids"][0]
            ids = inputs["input_ids"][0]
            n_ctx = len(ctx_ids)
            if not full.startswith(prompt) or not torch.equal(ids[:n_ctx], ctx_ids) or n_ctx >= len(ids):
                raise ValueError(f"{task} doc {doc_id}: the prompt does not tokenize as a prefix of prompt + "
                                 f"continuation; cannot score the continuation alone ({full!r})")
            expected = doc.get("answer_tokens") if isinstance(doc, dict) else None
            if expected is not None and int(expected) != len(ids) - n_ctx:
                raise ValueError(f"{task} doc {doc_id}: scored {len(ids) - n_ctx} continuation tokens, the "
                                 f"document was built for {expected}: the benchmark was built with another "
                                 f"tokenizer than {self.pretrained}'s")
            inputs = inputs.to(self._device, self.model.dtype)
            with torch.inference_mode():
                logits = self.model(**inputs).logits[0]
            # token t is predicted at position t - 1
            logprobs = torch.log_softmax(logits[n_ctx - 1:-1].float(), dim=-1)
            targets = inputs["input_ids"][0, n_ctx:]
            token_lp = logprobs.gather(-1, targets[:, None])[:, 0]
            greedy = bool((logprobs.argmax(-1) == targets).all())
            res.append((float(-token_lp.mean()), greedy))
        return res

    def generate_until(self, requests) -> list[str]:
        """``llava_hf``'s generation, in batches of ``batch_size`` (see the module docstring)."""
        if self.batch_size_per_gpu <= 1:
            return super().generate_until(requests)
        res: list[str | None] = [None] * len(requests)
        # requests with equal generation arguments share batches; each group keeps its first
        # request's own arguments (the JSON key only groups them)
        groups: dict[str, tuple[dict, list[tuple[int, str, PIL.Image.Image]]]] = {}
        single = []
        for i, r in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = r.args
            visuals = self.flatten([doc_to_visual(self.task_dict[task][split][doc_id])])
            if len(visuals) != 1 or not isinstance(visuals[0], PIL.Image.Image):
                single.append(i)  # text-only, several images, video: llava_hf's own path
                continue
            key = json.dumps(gen_kwargs, sort_keys=True, default=repr)
            groups.setdefault(key, (dict(gen_kwargs), []))[1].append((i, context, visuals[0]))
        if single:
            batch, self.batch_size_per_gpu = self.batch_size_per_gpu, 1
            try:
                for i, text in zip(single, super().generate_until([requests[i] for i in single])):
                    res[i] = text
            finally:
                self.batch_size_per_gpu = batch
        n_batches = sum(-(-len(items) // self.batch_size_per_gpu) for _, items in groups.values())
        bar = tqdm(total=n_batches, disable=(self.rank != 0), desc="Model Responding")
        self._use_chat_template()
        for gen_kwargs, items in groups.values():
            gen_kwargs.pop("until", None)  # llava_hf stops at end-of-sequence only
            prompts = []
            for i, context, _ in items:
                if DEFAULT_IMAGE_TOKEN not in context:  # as llava_hf prepends it
                    context = f"{DEFAULT_IMAGE_TOKEN}\n{context}"
                prompts.append(self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": context}], tokenize=False, add_generation_prompt=True))
            # longest prompts first (as llava_hf orders them): rows of a batch pad little
            order = sorted(range(len(items)), key=lambda j: -len(self.tok_encode(prompts[j])))
            for start in range(0, len(order), self.batch_size_per_gpu):
                rows = order[start:start + self.batch_size_per_gpu]
                for (i, _, _), text in zip([items[j] for j in rows],
                                           self._generate_batch([prompts[j] for j in rows],
                                                                [items[j][2] for j in rows], gen_kwargs)):
                    res[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), text)
                bar.update(1)
        bar.close()
        return res

    def _generate_batch(self, prompts: list[str], images: list, gen_kwargs: dict) -> list[str]:
        """One left-padded ``generate`` over ``prompts`` (one image each), with llava_hf's defaults."""
        tok = self.tokenizer
        side, pad = tok.padding_side, tok.pad_token
        tok.padding_side = "left"  # generation continues every row from its last real token
        if tok.pad_token is None:
            tok.pad_token = tok.decode([self.eot_token_id])
        try:
            inputs = self._image_processor(images=images, text=prompts, padding=True, return_tensors="pt")
        finally:
            tok.padding_side, tok.pad_token = side, pad
        inputs = inputs.to(self._device, self.model.dtype)
        temperature = gen_kwargs.get("temperature", 0)
        do_sample = temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, do_sample=do_sample, temperature=temperature if do_sample else None,
                top_p=gen_kwargs.get("top_p"), num_beams=gen_kwargs.get("num_beams", 1),
                max_new_tokens=gen_kwargs.get("max_new_tokens", 1024), use_cache=self.use_cache,
                pad_token_id=self.eot_token_id, eos_token_id=self.eot_token_id)
        return tok.batch_decode(out[:, inputs["input_ids"].shape[-1]:], skip_special_tokens=True)


def register() -> None:
    """Make ``selfilter_llava_hf`` a model name lmms-eval resolves (idempotent)."""
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.models.registry_v2 import ModelManifest

    MODEL_REGISTRY_V2.register_manifest(
        ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.SelfilterLlavaHf"), overwrite=True)
