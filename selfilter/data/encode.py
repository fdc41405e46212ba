"""Conversation -> model inputs (``input_ids``, ``labels``, ``attention_mask``, vision tensors).

The model must see a conversation during training exactly as lmms-eval's ``llava_hf`` shows it a
question at evaluation: the tokenizer's chat template rendered to text (``tokenize=False``), then
the *processor* called on that text and the image (it expands the image placeholder into the
model's image tokens and adds special tokens the same way at both times). Training and
evaluation prompts therefore agree token for token.

Which tokens are supervised is decided on the rendered *text*, not by re-implementing any
template: each assistant message's content is located in the rendered string (in order), the
tokenizer's offset mapping turns those character spans into token positions, and the special
token(s) the template emits right after an answer (``</s>``, ``<|im_end|>``, ...) are supervised
too, so that generation learns to stop. Everything else - system text, role tags, user turns,
image tokens, padding - gets label ``-100``.

Image placeholders (documented choices):
- an image record whose first human turn lacks ``<image>`` gets ``"<image>\\n"`` prepended to that
  turn in the model's view (LLaVA's own convention; the record on disk is untouched);
- the ``<image>`` tag is written the way the processor's chat template writes an image part
  (``{"type": "image"}``): ``"<image>\\n"`` (LLaVA-1.5, so LLaVA text is unchanged),
  ``"<|vision_start|><|image_pad|><|vision_end|>"`` (Qwen2-VL). The tag together with LLaVA's
  separator newline becomes that text, so ``"<image>\\n{question}"`` renders exactly as the typed
  content ``[image, text question]`` does. A template that takes no typed parts (or does not
  write the processor's image token for one) gets the processor's image token in place of the tag;
- a text-only record whose text contains ``<image>`` has it removed (there are no pixels to put
  there), and has no vision tensors;
- more than one ``<image>`` in one record is an error (one image per record, as in LLaVA data).

Every tensor the processor returns for a sample is kept: per-token ones (shape ``[1, T]``, e.g.
Qwen2-VL's ``mm_token_type_ids``) as 1-D tensors aligned with ``input_ids`` (truncated with them,
padded by ``collate``), per-image ones (``pixel_values``, ``image_grid_thw``, ...) as returned.
The processor's ``attention_mask`` is not kept: the encoder writes its own (all ones).

Mixed batches: text-only samples carry no image tokens and no vision tensors, so ``collate``
concatenates the vision tensors of the samples that have them; LLaVA-style models scatter image
features into the image-token positions across the batch, which then line up. A text-only
sample lacking a per-token tensor that others have (it was not run through the processor) gets
0 there (for ``mm_token_type_ids``: "text").
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from selfilter.data.records import IMAGE_PLACEHOLDER, chat_messages, load_image

IGNORE_INDEX = -100
# Keys the encoder writes itself (or that are not model inputs): not copied from the processor.
_OWN_KEYS = {"input_ids", "labels", "attention_mask", "offset_mapping", "index"}
# The image tag with LLaVA's separator newline after it, if any.
_IMAGE_TAG = re.compile(re.escape(IMAGE_PLACEHOLDER) + "\n?")


class EncodeError(ValueError):
    """A record cannot be encoded; the message names it (``uid=`` / ``id=``)."""


def _record_name(record: dict[str, Any] | None) -> str:
    if not record:
        return "record"
    parts = [f"uid={record['uid']}" if "uid" in record else None, f"id={record['id']!r}" if "id" in record else None]
    return "record " + " ".join(p for p in parts if p) if any(parts) else "record"


class ChatEncoder:
    """Encode LLaVA-format conversations through any Hugging Face processor's chat template.

    ``max_length`` truncates from the end (never inside the image tokens); ``n_truncated`` and
    ``n_unsupervised`` (nothing left to learn after truncation) count what happened.
    """

    def __init__(self, processor: Any, max_length: int | None = None):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_length = max_length
        self.image_token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        # How one image is written in the rendered text (None: the processor's image token).
        self.image_text = self._image_part_text()
        # Special tokens that may close an assistant turn: all specials except padding, BOS and
        # the image token (a template never emits those right after an answer as an end marker).
        excluded = {self.tokenizer.pad_token_id, self.tokenizer.bos_token_id, self.image_token_id}
        self._end_ids = set(self.tokenizer.all_special_ids) - excluded
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        self._end_ids |= {i for i, t in added.items() if getattr(t, "special", False)} - excluded
        self.n_truncated = 0
        self.n_unsupervised = 0

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    # -- rendering ------------------------------------------------------------------------
    def _image_part_text(self) -> str | None:
        """The text the processor's chat template writes for an image part, found by rendering a
        user turn with and without ``{"type": "image"}`` before a text part; None when the
        template takes no typed parts or does not write exactly one image token for one."""
        render = getattr(self.processor, "apply_chat_template", None)
        if render is None:
            return None
        from jinja2 import TemplateError

        text = {"type": "text", "text": "Describe."}
        try:
            with_image = render([{"role": "user", "content": [{"type": "image"}, text]}], tokenize=False)
            without = render([{"role": "user", "content": [text]}], tokenize=False)
        # no template (ValueError), or one for string content only (TypeError, UndefinedError, ...)
        except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError):
            return None
        if not isinstance(with_image, str) or not isinstance(without, str):
            return None
        prefix = len(os.path.commonprefix([with_image, without]))
        suffix = len(os.path.commonprefix([with_image[prefix:][::-1], without[prefix:][::-1]]))
        part = with_image[prefix:len(with_image) - suffix]
        if len(part) != len(with_image) - len(without) or part.count(self.image_token) != 1:
            return None
        return part

    def _place_image(self, value: str) -> str:
        """``<image>`` (with its separator newline) -> the processor's image text."""
        if self.image_text is None:
            return value.replace(IMAGE_PLACEHOLDER, self.image_token)
        return _IMAGE_TAG.sub(lambda m: self.image_text if m.group().endswith("\n") else self.image_text.rstrip(),
                              value)

    def render(self, conversations: list[dict[str, str]], has_image: bool) -> tuple[str, list[dict[str, str]]]:
        """The chat-template text of a conversation and the messages it was rendered from."""
        turns = [dict(t) for t in conversations]
        if has_image:
            first_human = next((t for t in turns if t.get("from") == "human"), None)
            if first_human is not None and IMAGE_PLACEHOLDER not in first_human["value"]:
                first_human["value"] = f"{IMAGE_PLACEHOLDER}\n{first_human['value']}"
            for t in turns:
                t["value"] = self._place_image(t["value"])
        else:
            for t in turns:
                t["value"] = t["value"].replace(f"{IMAGE_PLACEHOLDER}\n", "").replace(IMAGE_PLACEHOLDER, "")
        messages = chat_messages(turns)
        # lmms-eval's llava_hf renders with the tokenizer's template; fall back to the processor's.
        owner = self.tokenizer if getattr(self.tokenizer, "chat_template", None) else self.processor
        text = owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return text, messages

    @staticmethod
    def answer_spans(text: str, messages: list[dict[str, str]], record: dict | None = None) -> list[tuple[int, int]]:
        """Character spans of every assistant content in ``text``, found in message order."""
        spans, cursor = [], 0
        for m in messages:
            content = m["content"].strip()
            if not content:
                continue
            start = text.find(content, cursor)
            if start < 0:
                raise EncodeError(f"{_record_name(record)}: the chat template changed the text of a "
                                  f"{m['role']} turn; cannot find {content[:40]!r} in the rendered prompt")
            cursor = start + len(content)
            if m["role"] == "assistant":
                spans.append((start, cursor))
        return spans

    # -- encoding -------------------------------------------------------------------------
    def _text_labels(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        enc = self.tokenizer(text, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            last = None
            for j, (a, b) in enumerate(offsets):
                if b > a and a < end and b > start and ids[j] not in self._end_ids:
                    labels[j] = ids[j]
                    last = j
            if last is None:
                continue
            # The end-of-turn special token(s) right after the answer: whitespace before them is
            # skipped (unsupervised); the first run of special tokens is supervised; anything
            # else (or the next turn's opening token, after the run) stops the scan.
            j, seen_end = last + 1, False
            while j < len(ids):
                if ids[j] in self._end_ids:
                    labels[j] = ids[j]
                    seen_end = True
                elif seen_end or text[offsets[j][0]:offsets[j][1]].strip():
                    break
                j += 1
        return ids, labels

    def encode(self, conversations: list[dict[str, str]], image: Image.Image | None,
               record: dict | None = None) -> dict[str, torch.Tensor]:
        """One sample: 1-D ``input_ids``/``labels``/``attention_mask`` (+ the processor's other
        per-token tensors, 1-D, and its per-image tensors)."""
        has_image = image is not None
        text, messages = self.render(conversations, has_image)
        n_placeholders = text.count(self.image_token)
        if has_image and n_placeholders != 1:
            raise EncodeError(f"{_record_name(record)}: expected one {IMAGE_PLACEHOLDER} in the conversation, "
                              f"found {n_placeholders}")
        ids, labels = self._text_labels(text, self.answer_spans(text, messages, record))

        out: dict[str, torch.Tensor] = {}
        per_token: dict[str, torch.Tensor] = {}
        if has_image:
            proc = self.processor(text=text, images=image, return_tensors="pt")
            ids, labels = self._expand(ids, labels, proc["input_ids"][0].tolist(), record)
            for key, value in proc.items():
                if key in _OWN_KEYS or not isinstance(value, torch.Tensor):
                    continue
                if value.dim() == 2 and value.shape == (1, len(ids)):
                    per_token[key] = value[0]
                else:
                    out[key] = value
        n = len(ids)
        ids, labels = self._truncate(ids, labels, record)
        if len(ids) < n:
            per_token = {k: v[: len(ids)] for k, v in per_token.items()}
        if all(l == IGNORE_INDEX for l in labels):
            self.n_unsupervised += 1
        out["input_ids"] = torch.tensor(ids, dtype=torch.long)
        out["labels"] = torch.tensor(labels, dtype=torch.long)
        out["attention_mask"] = torch.ones(len(ids), dtype=torch.long)
        out.update(per_token)
        return out

    def _expand(self, ids: list[int], labels: list[int], proc_ids: list[int], record) -> tuple[list[int], list[int]]:
        """Carry ``labels`` over the processor's image-token expansion, checking the other ids agree."""
        new_labels, i, j = [], 0, 0
        while i < len(ids) and j < len(proc_ids):
            if ids[i] == self.image_token_id and proc_ids[j] == self.image_token_id:
                while j < len(proc_ids) and proc_ids[j] == self.image_token_id:
                    new_labels.append(IGNORE_INDEX)
                    j += 1
                i += 1
            elif ids[i] == proc_ids[j]:
                new_labels.append(labels[i])
                i += 1
                j += 1
            else:
                break
        if i != len(ids) or j != len(proc_ids):
            raise EncodeError(f"{_record_name(record)}: the processor's token ids differ from the tokenizer's "
                              f"outside the image tokens (at text token {i}, processor token {j}); "
                              "cannot carry the answer mask over")
        return proc_ids, new_labels

    def _truncate(self, ids: list[int], labels: list[int], record) -> tuple[list[int], list[int]]:
        if self.max_length is None or len(ids) <= self.max_length:
            return ids, labels
        image_pos = [k for k, t in enumerate(ids) if t == self.image_token_id]
        if image_pos and image_pos[-1] >= self.max_length:
            raise EncodeError(f"{_record_name(record)}: max_length={self.max_length} would cut inside the image "
                              f"tokens (they end at position {image_pos[-1] + 1}); raise max_length")
        self.n_truncated += 1
        return ids[: self.max_length], labels[: self.max_length]

    def encode_record(self, record: dict[str, Any], image_root: str | Path | None) -> dict[str, torch.Tensor]:
        image = None
        if record.get("image"):
            if image_root is None:
                raise EncodeError(f"{_record_name(record)}: has an image but no image folder was given")
            try:
                image = load_image(image_root, record["image"])
            except OSError as e:
                raise EncodeError(f"{_record_name(record)}: cannot read image {record['image']!r} ({e})") from None
        return self.encode(record["conversations"], image, record=record)


def collate(batch: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded samples into a batch.

    ``input_ids`` pad with ``pad_token_id``, ``labels`` with -100, ``attention_mask`` and any
    other per-token tensor (1-D, as long as the sample's ``input_ids``: ``mm_token_type_ids``,
    ...) with 0; a sample without such a tensor gets a row of 0. Per-image tensors of the samples
    that have them are concatenated along their first dimension. ``index`` carries each
    sample's dataset position for per-sample bookkeeping.
    """
    if not batch:
        raise ValueError("collate: empty batch")
    length = max(len(s["input_ids"]) for s in batch)
    n = len(batch)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    for row, s in enumerate(batch):
        t = len(s["input_ids"])
        input_ids[row, :t] = s["input_ids"]
        labels[row, :t] = s["labels"]
        attention_mask[row, :t] = s["attention_mask"]
    out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    extra = sorted({k for s in batch for k, v in s.items() if k not in _OWN_KEYS and isinstance(v, torch.Tensor)})
    for key in extra:
        parts = [s[key] for s in batch if key in s]
        if all(s[key].dim() == 1 and len(s[key]) == len(s["input_ids"]) for s in batch if key in s):
            padded = torch.zeros((n, length), dtype=parts[0].dtype)
            for row, s in enumerate(batch):
                if key in s:
                    padded[row, : len(s[key])] = s[key]
            out[key] = padded
        else:
            out[key] = torch.cat(parts, dim=0)
    out["index"] = torch.tensor([int(s.get("index", i)) for i, s in enumerate(batch)], dtype=torch.long)
    return out


class EncodedDataset(Dataset):
    """Records encoded by a :class:`ChatEncoder`.

    ``preencode=True`` (default) runs the processor once over all records up front: the training
    loop then only pads and stacks tensors, and one encoded pool is reused across many runs.
    ``preencode=False`` encodes on access, for pools too large to hold (use DataLoader workers).
    Each item carries ``index``, its position in ``records``.
    """

    def __init__(self, records: Sequence[dict[str, Any]], image_root: str | Path | None, encoder: ChatEncoder,
                 preencode: bool = True, progress: bool = True):
        self.records = list(records)
        self.image_root = image_root
        self.encoder = encoder
        self._items: list[dict[str, torch.Tensor]] | None = None
        if preencode:
            self._items = [encoder.encode_record(r, image_root)
                           for r in tqdm(self.records, desc="encode", unit="rec", disable=not progress)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self._items[i] if self._items is not None else self.encoder.encode_record(self.records[i], self.image_root)
        return {**item, "index": i}

    def subset(self, positions: Sequence[int]) -> "EncodedDataset":
        """A view on some positions that shares the encoded tensors (no re-encoding).

        ``index`` of its items is the position within the subset.
        """
        view = EncodedDataset.__new__(EncodedDataset)
        view.records = [self.records[p] for p in positions]
        view.image_root, view.encoder = self.image_root, self.encoder
        view._items = [self._items[p] for p in positions] if self._items is not None else None
        return view

    def num_tokens(self) -> list[int]:
        """Sequence length of each item (pre-encoded only)."""
        if self._items is None:
            raise RuntimeError("num_tokens needs a pre-encoded dataset")
        return [len(it["input_ids"]) for it in self._items]
