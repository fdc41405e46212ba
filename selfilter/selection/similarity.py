"""Canonical cosine similarity for Self-Filter stage 2: the one definition both the greedy loop
(``greedy``) and the neighbour shortlists (``neighbours``) use, so the fast and reference paths
agree bit for bit. Its own module so that neither of those two imports the other's internals.
"""
from __future__ import annotations

from typing import Any

import numpy as np

_EXACT_CHUNK = 2048  # rows per chunk of whole-pool passes (bounded transient memory)


def row_norms(features: Any) -> np.ndarray:
    """float64 L2 norm of every row (chunked: ``features`` may be a memmap)."""
    n = features.shape[0]
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, _EXACT_CHUNK):
        x = np.asarray(features[s:s + _EXACT_CHUNK], dtype=np.float64)
        if not np.isfinite(x).all():
            bad = s + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise ValueError(f"features are not finite in row {bad}")
        out[s:s + x.shape[0]] = np.sqrt(np.einsum("ij,ij->i", x, x))
    return out


def exact_cosine(features: Any, norms: np.ndarray, rows: Any, q: int) -> np.ndarray:
    """Canonical cosine of ``features[rows]`` (an index array or a slice) to ``features[q]``,
    float64. The query row is broadcast, not copied: the per-row reduction is the same one
    :func:`exact_cosine_pairs` runs (the tests compare the two bit for bit)."""
    x = np.asarray(features[rows], dtype=np.float64)
    y = np.asarray(features[q], dtype=np.float64)
    return _divide(np.einsum("ij,ij->i", x, np.broadcast_to(y, x.shape)), norms[rows] * norms[q])


def exact_cosine_pairs(features: Any, norms: np.ndarray, rows: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Canonical cosine of ``features[rows[i]]`` to ``features[qs[i]]`` for every i, float64.

    ``einsum("ij,ij->i")`` on float64 copies reduces each row on its own, in the same order
    whatever the other rows are, so identical rows get identical values and the fast and
    reference paths agree bit for bit.
    """
    out = np.empty(len(rows), dtype=np.float64)
    for s in range(0, len(rows), _EXACT_CHUNK):
        r, q = rows[s:s + _EXACT_CHUNK], qs[s:s + _EXACT_CHUNK]
        x = np.asarray(features[r], dtype=np.float64)
        y = np.asarray(features[q], dtype=np.float64)
        out[s:s + len(r)] = _divide(np.einsum("ij,ij->i", x, y), norms[r] * norms[q])
    return out


def _divide(dots: np.ndarray, den: np.ndarray) -> np.ndarray:
    """dots / den, with similarity 0 where a row is zero."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, dots / np.where(den > 0, den, 1.0), 0.0)
