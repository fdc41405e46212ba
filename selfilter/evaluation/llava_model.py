"""``selfilter_llava_hf``: lmms-eval's built-in ``llava_hf`` with a log-likelihood that works.

lmms-eval 0.7.3's ``llava_hf`` implements ``loglikelihood`` but, measured here with
transformers 5.2x, it cannot run: it tokenizes the context alone through the processor with the
``<image>`` placeholder and no image, which transformers 5 refuses ("Found 1 <image> tokens in
the text but no images were passed"). With older transformers that call succeeds but leaves the
placeholder as one token while the scored sequence holds the expanded image tokens, so the
label mask stops ``image_seq_length - 1`` tokens short and the loss includes the end of the
question. This subclass changes only ``loglikelihood``; prompting and generation are
``llava_hf``'s, unchanged (``generate_until`` is inherited), so generation tasks score exactly
as with ``llava_hf``.

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

import torch
from lmms_eval.models.simple.llava_hf import DEFAULT_IMAGE_TOKEN, VICUNA_CHAT_TEMPLATE, LlavaHf
from tqdm.auto import tqdm

MODEL_NAME = "selfilter_llava_hf"


class SelfilterLlavaHf(LlavaHf):
    """``llava_hf`` whose ``loglikelihood`` scores exactly the continuation's tokens."""

    def _render(self, context: str, continuation: str) -> tuple[str, str]:
        messages = [{"role": "user", "content": context}, {"role": "assistant", "content": continuation}]
        if self.chat_template is not None:
            self.tokenizer.chat_template = self.chat_template
        elif self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = VICUNA_CHAT_TEMPLATE  # llava_hf's fallback
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


def register() -> None:
    """Make ``selfilter_llava_hf`` a model name lmms-eval resolves (idempotent)."""
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.models.registry_v2 import ModelManifest

    MODEL_REGISTRY_V2.register_manifest(
        ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.SelfilterLlavaHf"), overwrite=True)
