"""Frozen CLIP features of the pool: L2-normalised image and text embeddings and their cosine.

``extract_shards`` + ``merge_shards`` are the batched, sharded, resumable path used by the
``features`` stage; ``embed_batch`` is the per-batch computation (tensors in, tensors out).
"""
from selfilter.features.clip import (
    FeatureResult,
    embed_batch,
    extract_shards,
    fingerprint,
    load_clip,
    image_reward_available,
    load_image_reward,
    merge_shards,
    records_to_items,
    resolve_device,
    resolve_dtype,
)

__all__ = ["FeatureResult", "embed_batch", "extract_shards", "fingerprint", "load_clip", "image_reward_available", "load_image_reward",
           "merge_shards", "records_to_items", "resolve_device", "resolve_dtype"]
