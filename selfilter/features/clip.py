"""CLIP features of instruction records: batched, sharded, resumable.

Per record (PAPER.md, "CLIP setting" and "Scores setting"):
- image half: the L2-normalised CLIP image embedding;
- text half: the L2-normalised CLIP text embedding of the whole conversation
  (``conversation_text``: "USER: ... ASSISTANT: ...", ``<image>`` removed), truncated to the
  text encoder's ``max_position_embeddings`` tokens (truncations are counted);
- clip_score: the cosine of the two, i.e. the dot product of the halves.

Text-only records (no ``image``) get an all-zero image half, so their clip_score - the dot
product of the halves, as for every other row - is 0.0; ``has_image`` is False for them and
consumers that want to treat them differently can.

Rows are processed in fixed shards of ``shard_size`` consecutive records. Each finished shard is
written atomically (features ``.npy``, scores ``.parquet``, then a ``.done.json`` marker last), so
an interrupted run resumes at the first unfinished shard, and ``shard_index/num_shards`` lets
several processes or GPUs each take every ``num_shards``-th shard. ``merge_shards`` concatenates
them in shard order - the result does not depend on who computed what, or when.

The reference code extracted one image at a time in fp32 (84 img/s on an H100); batching with
decoding in DataLoader workers and bf16 on CUDA is what makes 158K-665K pools practical.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from selfilter.data.records import conversation_text, load_image
from selfilter.holdpoints import hold
from selfilter.io import atomic_path, read_json, write_json, write_npy, write_parquet

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["uid", "clip_score", "text_truncated", "has_image"]


# --------------------------------------------------------------------------------------------
# Device and dtype
# --------------------------------------------------------------------------------------------

def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto``: bf16 on CUDA (what the paper ran), fp32 on CPU (bf16 GEMMs are slow there)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


# --------------------------------------------------------------------------------------------
# The pure per-batch computation
# --------------------------------------------------------------------------------------------

def _pooled(out: Any) -> torch.Tensor:
    # transformers <5 returned the projected embedding; 5.x returns an output whose
    # pooler_output holds it. Accept both so older installs (e.g. the GPU box) work.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.inference_mode()
def embed_batch(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor | None, has_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[B, 2D]`` (float32: image half, text half, each L2-normalised) and clip scores ``[B]``.

    ``pixel_values`` holds only the rows where ``has_image`` is True (in order); the others get a
    zero image half. All tensors must already be on the model's device; outputs stay there.
    """
    dtype = next(model.parameters()).dtype
    text = _pooled(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
    # Normalise in float32: bf16 norms of 768-d vectors lose ~3 significant digits.
    text = F.normalize(text.float(), dim=-1)
    image = torch.zeros_like(text)
    if pixel_values is not None and pixel_values.shape[0] > 0:
        emb = _pooled(model.get_image_features(pixel_values=pixel_values.to(dtype)))
        image[has_image] = F.normalize(emb.float(), dim=-1)
    score = (image * text).sum(dim=-1)
    return torch.cat([image, text], dim=-1), score


# --------------------------------------------------------------------------------------------
# Data loading (runs in DataLoader workers)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    uid: int
    image: str | None   # path relative to the image folder; None for text-only records
    text: str


def records_to_items(records: Sequence[dict[str, Any]]) -> list[Item]:
    items = []
    for r in records:
        image = r.get("image") or None
        items.append(Item(uid=int(r["uid"]), image=image, text=conversation_text(r["conversations"])))
    return items


class _ItemDataset(Dataset):
    def __init__(self, items: Sequence[Item], image_root: str | Path):
        self.items = items
        self.image_root = Path(image_root)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        image = None
        if item.image is not None:
            try:
                image = load_image(self.image_root, item.image)
            except (OSError, ValueError) as e:
                raise ValueError(f"uid={item.uid}: cannot read image {self.image_root / item.image}: {e}") from None
        return i, image, item.text


class _Collate:
    """Batch -> model inputs. A class (not a closure) so DataLoader workers can pickle it."""

    def __init__(self, processor: Any, max_length: int, keep_images: bool):
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.max_length = max_length
        self.keep_images = keep_images
        if self.tokenizer.pad_token is None:  # some CLIP tokenizers ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def __call__(self, batch):
        index, images, texts = zip(*batch)
        has_image = torch.tensor([im is not None for im in images], dtype=torch.bool)
        present = [im for im in images if im is not None]
        pixel_values = self.image_processor(present, return_tensors="pt")["pixel_values"] if present else None
        # Untruncated lengths only to count truncations; the model sees the truncated ids.
        lengths = [len(ids) for ids in self.tokenizer(list(texts), verbose=False)["input_ids"]]
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             padding=True, return_tensors="pt")
        return {
            "index": torch.tensor(index, dtype=torch.long),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": pixel_values,
            "has_image": has_image,
            "truncated": torch.tensor([n > self.max_length for n in lengths], dtype=torch.bool),
            "images": list(images) if self.keep_images else None,
            "texts": list(texts) if self.keep_images else None,
        }


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------

def num_shards_for(n_rows: int, shard_size: int) -> int:
    return max(1, -(-n_rows // shard_size))


def shard_rows(shard: int, n_rows: int, shard_size: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, n_rows))


def _shard_stem(work_dir: Path, shard: int) -> Path:
    return work_dir / f"shard-{shard:06d}"


def shard_done(work_dir: str | Path, shard: int) -> bool:
    return _shard_stem(Path(work_dir), shard).with_suffix(".done.json").exists()


def fingerprint(**parts: Any) -> str:
    """A short digest of everything that changes the features, naming the shard folder.

    Shards computed for other records, another model, dtype or shard size are never reused.
    """
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_clip(model_name: str, device: str, dtype: torch.dtype):
    """Any transformers CLIP-style checkpoint (``get_image_features``/``get_text_features``)."""
    from transformers import AutoModel, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_name)
        model = AutoModel.from_pretrained(model_name, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ValueError(f"features.model={model_name!r}: cannot load a CLIP checkpoint ({e})") from None
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ValueError(f"features.model={model_name!r}: {type(model).__name__} is not a CLIP-style "
                         "model (needs get_image_features and get_text_features)")
    return model.to(device).eval(), processor


def text_max_length(model: torch.nn.Module) -> int:
    return int(model.config.text_config.max_position_embeddings)


@dataclass
class FeatureResult:
    n_rows: int
    dim: int              # 2 x the CLIP projection size
    n_truncated: int
    n_text_only: int
    has_image_reward: bool


def extract_shards(items: Sequence[Item], image_root: str | Path, work_dir: str | Path, *,
                   model: torch.nn.Module, processor: Any, device: str, batch_size: int = 64,
                   num_workers: int = 0, shard_size: int = 4096, shard_index: int = 0,
                   num_shards: int = 1, image_reward: Callable[[list, list[str]], Sequence[float]] | None = None,
                   progress: bool = True) -> list[int]:
    """Compute every unfinished shard ``s`` with ``s % num_shards == shard_index``; return those written.

    ``image_reward`` (optional) maps (PIL images, texts) of the rows with an image to scores.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} must be in [0, {num_shards})")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    n = len(items)
    todo = [s for s in range(num_shards_for(n, shard_size))
            if s % num_shards == shard_index and not shard_done(work_dir, s)]
    if not todo or n == 0:
        return []

    # Batches never straddle a shard, so a shard is complete exactly when its last batch is.
    batches = []
    for s in todo:
        rows = shard_rows(s, n, shard_size)
        batches += [list(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    loader = DataLoader(
        _ItemDataset(items, image_root), batch_sampler=batches, num_workers=num_workers,
        collate_fn=_Collate(processor, text_max_length(model), keep_images=image_reward is not None),
        pin_memory=device.startswith("cuda"), persistent_workers=False,
    )
    bar = tqdm(total=sum(len(shard_rows(s, n, shard_size)) for s in todo), unit="rec",
               desc="CLIP features", disable=not progress)
    pending: dict[int, list[tuple]] = {}
    written = []
    for batch in loader:
        rows = batch["index"]
        feats, scores = embed_batch(
            model, batch["input_ids"].to(device, non_blocking=True),
            batch["attention_mask"].to(device, non_blocking=True),
            None if batch["pixel_values"] is None else batch["pixel_values"].to(device, non_blocking=True),
            batch["has_image"].to(device),
        )
        reward = np.full(len(rows), np.nan, dtype=np.float32)
        if image_reward is not None and batch["has_image"].any():
            keep = batch["has_image"].numpy()
            imgs = [im for im in batch["images"] if im is not None]
            texts = [t for t, k in zip(batch["texts"], keep) if k]
            reward[keep] = np.asarray(image_reward(imgs, texts), dtype=np.float32)
        shard = int(rows[0]) // shard_size
        pending.setdefault(shard, []).append(
            (feats.cpu().numpy(), scores.cpu().numpy(), batch["truncated"].numpy(),
             batch["has_image"].numpy(), reward))
        bar.update(len(rows))
        if int(rows[-1]) == shard_rows(shard, n, shard_size)[-1]:
            _write_shard(work_dir, shard, items, shard_rows(shard, n, shard_size), pending.pop(shard),
                         with_reward=image_reward is not None)
            written.append(shard)
            hold("features.shard_written")  # test-only kill point (selfilter/holdpoints.py); off unless the suite sets it
    bar.close()
    return written


def _write_shard(work_dir: Path, shard: int, items: Sequence[Item], rows: range, parts: list[tuple],
                 with_reward: bool) -> None:
    feats, scores, truncated, has_image, reward = (np.concatenate(p) for p in zip(*parts))
    stem = _shard_stem(work_dir, shard)
    table = pd.DataFrame({
        "uid": np.array([items[r].uid for r in rows], dtype=np.int64),
        "clip_score": scores.astype(np.float32),
        "text_truncated": truncated.astype(bool),
        "has_image": has_image.astype(bool),
    })
    if with_reward:
        table["image_reward"] = reward
    write_npy(stem.with_suffix(".npy"), feats.astype(np.float32))
    write_parquet(stem.with_suffix(".parquet"), table)
    # The marker goes last: a shard without it is recomputed, whatever else is on disk.
    write_json(stem.with_suffix(".done.json"), {"shard": shard, "rows": [rows.start, rows.stop],
                                                "n_truncated": int(truncated.sum()),
                                                "n_text_only": int((~has_image).sum())})


def merge_shards(work_dir: str | Path, n_rows: int, shard_size: int, features_path: str | Path,
                 scores_path: str | Path) -> FeatureResult:
    """Concatenate all shards, in shard order, into ``features_path`` (.npy) and ``scores_path``."""
    work_dir = Path(work_dir)
    shards = range(num_shards_for(n_rows, shard_size))
    missing = [s for s in shards if not shard_done(work_dir, s)]
    if missing:
        raise ValueError(f"{work_dir}: {len(missing)} of {len(shards)} shards are not finished "
                         f"(first: {missing[:5]}); run the remaining --shard-index workers first")
    tables = [pd.read_parquet(_shard_stem(work_dir, s).with_suffix(".parquet")) for s in shards]
    table = pd.concat(tables, ignore_index=True) if n_rows else pd.DataFrame(
        {"uid": np.zeros(0, np.int64), "clip_score": np.zeros(0, np.float32),
         "text_truncated": np.zeros(0, bool), "has_image": np.zeros(0, bool)})
    first = np.load(_shard_stem(work_dir, 0).with_suffix(".npy"), mmap_mode="r") if n_rows else np.zeros((0, 0))
    dim = int(first.shape[1])
    # Written through a memory map so a 665K x 1536 matrix never needs a second copy in RAM.
    with atomic_path(features_path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_rows, dim))
        for s in shards:
            rows = shard_rows(s, n_rows, shard_size)
            part = np.load(_shard_stem(work_dir, s).with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
            if part.shape != (len(rows), dim):
                raise ValueError(f"{work_dir}: shard {s} has shape {part.shape}, expected {(len(rows), dim)}")
            out[rows.start:rows.stop] = part
        out.flush()
        del out
    write_parquet(scores_path, table)
    return FeatureResult(
        n_rows=n_rows, dim=dim, n_truncated=int(table["text_truncated"].sum()),
        n_text_only=int((~table["has_image"]).sum()), has_image_reward="image_reward" in table,
    )


def read_done(work_dir: str | Path, shard: int) -> dict:
    return read_json(_shard_stem(Path(work_dir), shard).with_suffix(".done.json"))


# --------------------------------------------------------------------------------------------
# ImageReward (optional)
# --------------------------------------------------------------------------------------------

def image_reward_weights_path(weights: str) -> Path:
    return Path(weights).expanduser() if weights else Path("~/.cache/ImageReward/ImageReward.pt").expanduser()


def image_reward_available(weights: str) -> tuple[bool, str]:
    """Cheap check (no import of the model): is ImageReward installed with local weights?"""
    import importlib.util

    if importlib.util.find_spec("ImageReward") is None:
        return False, "package 'image-reward' not installed"
    path = image_reward_weights_path(weights)
    if not path.is_file():
        return False, f"no local weights at {path}"
    return True, str(path)


def load_image_reward(weights: str, device: str) -> Callable[[list, list[str]], Sequence[float]] | None:
    """An ImageReward scorer if the ``image-reward`` package and local weights exist, else None.

    Never downloads: without a local checkpoint it logs one line and returns None.
    """
    ok, why = image_reward_available(weights)
    if not ok:
        log.warning("ImageReward not available: skipped (%s)", why)
        return None
    path = image_reward_weights_path(weights)
    try:
        import ImageReward as RM  # noqa: N813 - the package's own name

        rm = RM.load(str(path), device=device, download_root=str(path.parent))
    except Exception as e:  # a broken optional extra must not stop the features stage
        log.warning("ImageReward not available: skipped (%s)", e)
        return None

    def score(images: list, texts: list[str]) -> list[float]:
        with torch.inference_mode():
            return [float(rm.score(t, [im])) for im, t in zip(images, texts)]

    return score
