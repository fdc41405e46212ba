"""Self-Filter stage 2: greedy selection with a diversity penalty (PAPER.md), exact and fast.

Semantics (both implementations below; ``reference_greedy`` is the literal one):

1. pick the not-yet-picked sample with the highest *current* difficulty ``d*``; ties go to the
   lowest index;
2. cosine similarity of every sample to the pick; walking samples by similarity descending
   (equal similarities: lower index first), skip the already picked (the pick included) and, for
   the first ``k_nearest`` not yet picked, ``d -= d* * sim**2 * gamma``.

The *canonical* similarity is ``sum(x_i * x_j) / (|x_i| |x_j|)`` evaluated in float64 on the
stored features (a zero row has similarity 0 to everything). Both implementations compute it with
the same function on whole rows (:func:`exact_cosine`), so they agree bit for bit and the fast
version reproduces the reference's picks, not just approximately.

``penalty="reference"`` reproduces the reference exactly, including its quirk that a negative
``d*`` *raises* its neighbours. ``penalty="positive"`` first shifts difficulties to be positive
(``d - min(d) + eps``, ``eps = 1e-6 * (max - min)`` or 1e-6 for a constant input; the order is
unchanged) and floors penalised values at 0, so ``d*`` stays >= 0 and a penalty can only lower
(never raise) neighbours. Not the default: it changes which samples the paper's code picks.

Why the fast version is fast (N=158K, D=1,536, 25K picks: the reference costs ~N*D per pick).
The neighbours of a pick depend only on the pick and on the picked set, so neighbour lists are
needed only for samples that get picked, and they can be computed ahead, in blocks of the
currently most difficult samples. A list is a *certified shortlist* (``neighbours.py``): candidates
found in a fast precision or by scanning k-means cells, each computed similarity carrying a
rigorous error bound, so the list provably holds every unpicked row that can be among the top
k + slack; the few dozen candidates are then scored with :func:`exact_cosine`. When a cached list
no longer certifies its top-k (too many of it got picked since), it is recomputed against the
current picked set, which always certifies. Which index and precision run is chosen for the
data and the machine (``neighbours.build_index``); the picks never depend on that choice.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selfilter.selection.neighbours import build_index
from selfilter.selection.similarity import _EXACT_CHUNK, exact_cosine, row_norms

PENALTIES = ("reference", "positive")


@dataclass(frozen=True)
class GreedyResult:
    """Picks in pick order and the current (penalised) difficulty of each pick when it was picked.

    ``scores`` are in the space selection ran in: the shifted one for ``penalty="positive"``.
    ``stats`` holds counters of the fast path (neighbour lists computed, recomputed, ...).
    """

    indices: np.ndarray  # int64 [budget]
    scores: np.ndarray  # float64 [budget]
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Shared pieces


def check_inputs(difficulty: Any, features: Any, budget: int, k_nearest: int, gamma: float,
                 penalty: str) -> np.ndarray:
    """Validate arguments; return the difficulties as float64 in the selection space."""
    d = np.asarray(difficulty, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"difficulty must be 1-D, got shape {d.shape}")
    n = d.shape[0]
    if features is None:
        if int(k_nearest) != 0:
            raise ValueError("features are required when k_nearest > 0")
    elif getattr(features, "ndim", None) != 2 or features.shape[0] != n:
        raise ValueError(f"features must be [N, F] with N = len(difficulty) = {n}, "
                         f"got shape {getattr(features, 'shape', None)}")
    bad = np.flatnonzero(~np.isfinite(d))
    if bad.size:
        raise ValueError(f"difficulty is not finite at index {int(bad[0])} ({bad.size} such rows)")
    if not 0 <= int(budget) <= n:
        raise ValueError(f"budget must be in [0, {n}], got {budget}")
    if int(k_nearest) < 0:
        raise ValueError(f"k_nearest must be >= 0, got {k_nearest}")
    if not np.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma}")
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
    if penalty == "positive" and n:
        span = float(d.max() - d.min())
        d = d - d.min() + (1e-6 * span if span > 0 else 1e-6)
    return d


def _progress(total: int, show: bool, desc: str):
    if not show:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pick", mininterval=1.0)


# ---------------------------------------------------------------------------------------------
# The literal version (tests, benchmark baseline)


def reference_greedy(difficulty: Any, features: Any, budget: int, k_nearest: int = 10,
                     gamma: float = 1.0, penalty: str = "reference",
                     show_progress: bool = False) -> GreedyResult:
    """Slow, literal Self-Filter stage 2: re-scores and re-sorts the whole pool for every pick."""
    cur = check_inputs(difficulty, features, budget, k_nearest, gamma, penalty).copy()
    floor = 0.0 if penalty == "positive" else None
    n = cur.shape[0]
    norms = row_norms(features) if k_nearest else None
    picked = np.zeros(n, dtype=bool)
    idx = np.empty(budget, dtype=np.int64)
    scores = np.empty(budget, dtype=np.float64)
    with _progress(budget, show_progress, "select (reference)") as bar:
        for r in range(budget):
            masked = np.where(picked, -np.inf, cur)
            p = int(np.argmax(masked))  # first maximum: ties -> lowest index
            dstar = cur[p]
            idx[r], scores[r] = p, dstar
            picked[p] = True
            if k_nearest:
                sims = np.concatenate([exact_cosine(features, norms, slice(s, s + _EXACT_CHUNK), p)
                                       for s in range(0, n, _EXACT_CHUNK)])
                order = np.argsort(-sims, kind="stable")  # equal similarity -> lower index first
                taken = 0
                for j in order:
                    if picked[j]:
                        continue
                    cur[j] -= dstar * (sims[j] * sims[j]) * gamma
                    if floor is not None:
                        cur[j] = max(cur[j], floor)
                    taken += 1
                    if taken == k_nearest:
                        break
            if bar is not None:
                bar.update(1)
    return GreedyResult(idx, scores, {"implementation": "reference"})


# ---------------------------------------------------------------------------------------------
# The fast exact version


def diverse_greedy(difficulty: Any, features: Any, budget: int, k_nearest: int = 10,
                   gamma: float = 1.0, penalty: str = "reference", device: str = "cpu",
                   backend: str = "auto", precision: str = "auto", block_size: int = 512,
                   slack: int | None = None, show_progress: bool = False) -> GreedyResult:
    """Self-Filter stage 2, fast and exact: the picks and scores of :func:`reference_greedy`.

    difficulty: [N] (``-score`` of the stage-1 score net: higher = harder = picked first).
    features: [N, F] (any float dtype, need not be normalised; a memmap is fine); may be None
        when k_nearest is 0 (no penalty: hardest first).
    budget: number of picks. k_nearest, gamma: the penalty (reference defaults 10 and 1).
    penalty: "reference" (exact reference behaviour) or "positive" (see the module docstring).
    device: torch device of the neighbour search ("cpu", "cuda", "cuda:1", ...).
    backend: "dense" (a product against the whole pool per block of queries), "clustered"
        (k-means cells with certified radii; pays off on data with structure) or "auto" (probe).
    precision: of the dense product: "bfloat16" (only fast where native), "float32", or "auto"
        (bf16 where the CPU/GPU does it natively, measured; float32 otherwise).
    block_size: neighbour lists computed together (default 512: the hardest samples without one).
    slack: extra shortlist depth so cached lists survive later picks (default max(4, k // 2)).
    """

    cur = check_inputs(difficulty, features, budget, k_nearest, gamma, penalty).copy()
    floor = 0.0 if penalty == "positive" else None
    n = cur.shape[0]
    k = int(k_nearest)
    slack = max(4, k // 2) if slack is None else int(slack)
    idx = np.empty(budget, dtype=np.int64)
    scores = np.empty(budget, dtype=np.float64)
    picked = np.zeros(n, dtype=bool)
    stats: dict[str, Any] = {"implementation": "fast", "device": str(device), "blocks": 0,
                             "lists": 0, "recomputed": 0, "lists_unused": 0}
    index = None
    t0 = time.perf_counter()
    if k and budget:
        index, info = build_index(features, row_norms(features), backend=backend,
                                  precision=precision, device=device, k=k, slack=slack,
                                  show_progress=show_progress)
        stats.update(info)
    stats["seconds_index"] = time.perf_counter() - t0
    seconds_lists = 0.0
    cache: dict[int, tuple] = {}
    # ``work`` mirrors ``cur`` with picked samples at -inf, so argmax only sees candidates.
    work = cur
    with _progress(budget, show_progress, "select") as bar:
        for r in range(budget):
            p = int(np.argmax(work))  # first maximum: ties -> lowest index
            dstar = work[p]
            idx[r], scores[r] = p, dstar
            picked[p] = True
            work[p] = -np.inf
            if k:
                entry = cache.pop(p, None)
                if entry is None:
                    t1 = time.perf_counter()
                    queries = _next_block(work, picked, cache, p, block_size)
                    cache.update(index.compute(queries, picked, k, slack))
                    seconds_lists += time.perf_counter() - t1
                    stats["blocks"] += 1
                    stats["lists"] += len(queries)
                    entry = cache.pop(p)
                rows, sims = _take(entry, picked, k)
                if rows is None:  # the cached list lost its certificate: redo it against now
                    t1 = time.perf_counter()
                    entry = index.compute(np.array([p], dtype=np.int64), picked, k, slack)[p]
                    seconds_lists += time.perf_counter() - t1
                    stats["recomputed"] += 1
                    rows, sims = _take(entry, picked, k)
                    if rows is None:
                        raise AssertionError("a fresh neighbour list must certify its top k")
                work[rows] -= dstar * (sims * sims) * gamma
                if floor is not None:
                    work[rows] = np.maximum(work[rows], floor)
            if bar is not None:
                bar.update(1)
    stats["lists_unused"] = len(cache)
    stats["seconds_lists"] = seconds_lists
    stats["seconds_total"] = time.perf_counter() - t0
    if index is not None and hasattr(index, "scanned"):
        stats["rows_scanned_per_list"] = index.scanned / max(1, index.queries)
    return GreedyResult(idx, scores, stats)


def _next_block(work: np.ndarray, picked: np.ndarray, cache: dict, p: int, size: int) -> np.ndarray:
    """The pick plus the currently most difficult unpicked samples that have no list yet:
    the likeliest next picks, so one matrix product serves many picks."""
    cand = work.copy()
    if cache:
        cand[np.fromiter(cache.keys(), dtype=np.int64, count=len(cache))] = -np.inf
    free = int(np.isfinite(cand).sum())
    m = min(size - 1, free)
    if m <= 0:
        return np.array([p], dtype=np.int64)
    top = np.argpartition(-cand, m - 1)[:m]
    top = top[np.isfinite(cand[top])]
    return np.concatenate([[p], top]).astype(np.int64)


def _take(entry: tuple, picked: np.ndarray, k: int):
    """First k unpicked of a shortlist, or (None, None) when they are not certifiably the top k."""
    rows, sims, threshold = entry
    keep = ~picked[rows]
    rows, sims = rows[keep][:k], sims[keep][:k]
    if threshold == -np.inf or (len(rows) == k and sims[-1] >= threshold):
        return rows, sims
    return None, None
