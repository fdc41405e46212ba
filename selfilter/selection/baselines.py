"""Baseline selection rules at a fixed budget: pure functions over arrays, seeded.

Each returns the selected row indices (int64) *in rank order* (best first, or draw order for
random rules) so the caller can write a trace; ``budget_n`` is a count, not a fraction.
"""
from __future__ import annotations

import numpy as np


def _check_budget(n_pool: int, budget_n: int) -> int:
    if not 0 <= int(budget_n) <= int(n_pool):
        raise ValueError(f"budget_n must be in [0, {n_pool}], got {budget_n}")
    return int(budget_n)


def random_select(n_pool: int, budget_n: int, seed: int) -> np.ndarray:
    """Uniform sample without replacement (Random baseline), in draw order."""
    budget_n = _check_budget(n_pool, budget_n)
    return np.random.default_rng(seed).permutation(n_pool)[:budget_n].astype(np.int64)


def full(n_pool: int) -> np.ndarray:
    """The whole pool, in pool order."""
    return np.arange(n_pool, dtype=np.int64)


def top_k(scores: np.ndarray, budget_n: int, seed: int) -> np.ndarray:
    """The ``budget_n`` highest scores; ties broken by a seeded shuffle (judge ratings tie a lot).

    Shuffling first and then sorting stably makes the order among equal scores a seeded random
    permutation, so a tie at the budget boundary does not favour low indices.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"score at index {int(bad[0])} is not finite ({bad.size} such rows)")
    budget_n = _check_budget(scores.shape[0], budget_n)
    perm = np.random.default_rng(seed).permutation(scores.shape[0])
    order = perm[np.argsort(-scores[perm], kind="stable")]
    return order[:budget_n].astype(np.int64)


def prototypicality_scores(features: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """L2 distance of each row to its nearest k-means centroid (Sorscher et al. 2022).

    Rows are L2-normalised first, like the cosine geometry the CLIP features live in.
    MiniBatchKMeans keeps this linear in N for the 158K-665K pools.
    """
    from sklearn.cluster import MiniBatchKMeans

    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    n_clusters = max(1, min(int(n_clusters), x.shape[0]))
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3,
                         batch_size=min(4096, x.shape[0]))
    dist = km.fit_transform(x)  # [N, n_clusters] distances to every centroid
    return dist.min(axis=1).astype(np.float64)


def prototypicality(features: np.ndarray, budget_n: int, n_clusters: int, seed: int) -> np.ndarray:
    """Keep the least prototypical rows: farthest from their nearest centroid ("hardest")."""
    budget_n = _check_budget(np.shape(features)[0], budget_n)
    return top_k(prototypicality_scores(features, n_clusters, seed), budget_n, seed)


def _clean_first(is_clean: np.ndarray, budget_n: int, seed: int, key: np.ndarray | None = None) -> np.ndarray:
    """The controls' one rule: clean rows in a seeded shuffle - ordered by ``key`` descending
    when given (stable, so the shuffle breaks ties) - then the other rows in a seeded shuffle."""
    budget_n = _check_budget(is_clean.shape[0], budget_n)
    rng = np.random.default_rng(seed)
    clean = rng.permutation(np.flatnonzero(is_clean))
    if key is not None:
        clean = clean[np.argsort(-key[clean], kind="stable")]
    rest = rng.permutation(np.flatnonzero(~is_clean))
    return np.concatenate([clean, rest])[:budget_n].astype(np.int64)


def oracle_clean(is_clean: np.ndarray, budget_n: int, seed: int) -> np.ndarray:
    """CONTROL, not a method: reads hidden labels. A random sample of clean rows; when there are
    fewer clean rows than the budget, all of them plus a random fill from the rest."""
    return _clean_first(np.asarray(is_clean, dtype=bool), budget_n, seed)


def oracle_hard(is_clean: np.ndarray, scene_size: np.ndarray, budget_n: int, seed: int) -> np.ndarray:
    """CONTROL, not a method: reads hidden labels and scene annotations. Clean rows of the most
    crowded scenes first (objects per scene, descending; a seeded shuffle within one size), then
    the remaining rows at random. Whether it beats random says whether the benchmark rewards hard,
    correct samples at all - the premise of hardest-first selection (docs/TESTBED.md "Regimes")."""
    is_clean = np.asarray(is_clean, dtype=bool)
    size = np.asarray(scene_size, dtype=np.float64)
    if size.shape != is_clean.shape:
        raise ValueError(f"scene sizes {size.shape} and clean labels {is_clean.shape} are not row-aligned")
    return _clean_first(is_clean, budget_n, seed, key=size)
