"""A noise-guarded Self-Filter (beyond the paper): set aside the records whose difficulty is an
outlier before the hardest-first greedy pass.

Hardest-first selection assumes the hardest records are the informative ones. On data with
broken records (a wrong answer, a caption of another picture) the broken ones are the hardest
of all - the loss of a wrong answer is high for every model - and hardest-first picks them first
(Sorscher et al. 2022: label noise turns hard-first selection against you; THTB 2025 filters on
quality before ranking by hardness). The guard removes the upper outliers of the pool's own
difficulty distribution, Tukey's upper fence ``Q3 + k * IQR`` (k = ``select.guard_fence``, 1.5
by default, the textbook value), so its threshold is chosen from the scores alone and never by
looking at a benchmark. The rest is Self-Filter's stage 2 unchanged. If the budget is larger
than what the fence keeps, the set-aside records fill it, least difficult first.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from selfilter.selection.greedy import GreedyResult, diverse_greedy


def upper_fence(difficulty: np.ndarray, k: float) -> float:
    """Tukey's upper fence of ``difficulty``: Q3 + k * (Q3 - Q1), quartiles by linear interpolation."""
    d = np.asarray(difficulty, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError("guard: difficulty must be a non-empty 1-D array of finite numbers")
    q1, q3 = np.percentile(d, [25, 75])
    return float(q3 + k * (q3 - q1))


def guarded_greedy(difficulty: Any, features: Any, budget: int, *, fence: float = 1.5,
                   **greedy: Any) -> GreedyResult:
    """``diverse_greedy`` over the records at or below the upper fence, then the set-aside
    records (least difficult first) if the budget needs more. Indices refer to the whole pool."""
    d = np.asarray(difficulty, dtype=np.float64)
    if not 0 < budget <= d.size:
        raise ValueError(f"guard: budget {budget} outside 1..{d.size}")
    limit = upper_fence(d, fence)
    keep = np.flatnonzero(d <= limit)
    out = np.flatnonzero(d > limit)
    n_first = min(budget, keep.size)
    feats = None if features is None else np.asarray(features)[keep]
    res = diverse_greedy(d[keep], feats, n_first, **greedy)
    indices = keep[res.indices]
    scores = np.asarray(res.scores, dtype=np.float64)
    if budget > keep.size:
        fill = out[np.lexsort((out, d[out]))][: budget - keep.size]  # least difficult, then lowest index
        indices = np.concatenate([indices, fill])
        scores = np.concatenate([scores, d[fill]])
    stats = {**dict(res.stats), "guard_fence": float(fence), "guard_limit": limit, "guard_set_aside": int(out.size)}
    return GreedyResult(indices=indices, scores=scores, stats=stats)
