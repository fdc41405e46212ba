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
currently most difficult samples (one matrix product per block). That product runs in bfloat16
(AMX/tensor cores: ~3x the float32 rate here) and only *shortlists*: every bf16 similarity comes
with a rigorous error bound (quantisation error of each row measured exactly, fp32 accumulation
and bf16 output rounding bounded), so a shortlist certifiably holds the exact top neighbours;
the shortlisted candidates (a few dozen) are then scored with :func:`exact_cosine`. When a cached
list no longer certifies its top-k (too many of it got picked since), it is recomputed against
the current picked set, which always certifies.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PENALTIES = ("reference", "positive")

# Unit roundoff of bfloat16 (8 significant bits) and of float32 accumulation.
_U_BF16 = 2.0 ** -8
_U_FP32 = 2.0 ** -24
_U_OUT = _U_BF16 / (1 - _U_BF16) * (1 + 1e-6)  # bf16 output rounding, relative to the output
# Slack for the fp32 normalisation of the shortlist copy against the float64 canonical value.
_NORM_MARGIN = 1e-6
_EXACT_CHUNK = 2048  # rows per chunk of whole-pool passes (bounded transient memory)


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


def exact_cosine(features: Any, norms: np.ndarray, rows: np.ndarray, q: int) -> np.ndarray:
    """Canonical cosine of ``features[rows]`` to ``features[q]`` in float64."""
    return exact_cosine_pairs(features, norms, rows, np.full(len(rows), q, dtype=np.int64))


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
        dots = np.einsum("ij,ij->i", x, y)
        den = norms[r] * norms[q]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + len(r)] = np.where(den > 0, dots / np.where(den > 0, den, 1.0), 0.0)
    return out


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
    every = np.arange(n)
    with _progress(budget, show_progress, "select (reference)") as bar:
        for r in range(budget):
            masked = np.where(picked, -np.inf, cur)
            p = int(np.argmax(masked))  # first maximum: ties -> lowest index
            dstar = cur[p]
            idx[r], scores[r] = p, dstar
            picked[p] = True
            if k_nearest:
                sims = np.concatenate([exact_cosine(features, norms, every[s:s + _EXACT_CHUNK], p)
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


class _NeighbourIndex:
    """Certified top-neighbour shortlists from a bf16 copy of the normalised features."""

    def __init__(self, features: Any, norms: np.ndarray, device: str, slack: int,
                 show_progress: bool):
        import torch

        self.torch = torch
        self.features = features
        self.norms = norms
        self.device = torch.device(device)
        self.slack = slack
        n, f = features.shape
        self.n = n
        self.xq = torch.empty((n, f), dtype=torch.bfloat16, device=self.device)
        err = np.empty(n, dtype=np.float64)
        qnorm = np.empty(n, dtype=np.float64)
        self.safe_norms = np.where(norms > 0, norms, 1.0)
        chunks = range(0, n, _EXACT_CHUNK)
        if show_progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="bf16 index", unit="chunk", mininterval=1.0)
        for s in chunks:
            x = self._normalised(slice(s, s + _EXACT_CHUNK))
            xb = x.to(torch.bfloat16)
            back = xb.float()
            # Quantisation error of each row, measured (not assumed); the fp32 evaluation of
            # these norms is off by far less than the 1e-3 relative safety factor applied below.
            err[s:s + x.shape[0]] = torch.linalg.vector_norm(x - back, dim=1).cpu().numpy()
            qnorm[s:s + x.shape[0]] = torch.linalg.vector_norm(back, dim=1).cpu().numpy()
            self.xq[s:s + x.shape[0]] = xb
        # Rows of picked samples are zeroed in ``xq`` (see ``compute``); True once done.
        self.zeroed = np.zeros(n, dtype=bool)
        self.err = err * (1 + 1e-3)
        qnorm = qnorm * (1 + 1e-3)
        self.max_err = float(self.err.max()) if n else 0.0
        self.max_qnorm = float(qnorm.max()) if n else 0.0
        f_acc = f * _U_FP32 / (1 - f * _U_FP32)  # gamma_F: fp32 accumulation of F products

        # Per-query additive bound on |bf16 product - canonical cosine| (before output rounding):
        # |<x,y> - <x~,y~>| <= |e_x||y| + |x~||e_y|, |y| <= 1; plus accumulation and the fp32
        # normalisation of the rows against the float64 canonical value.
        self.query_err = (self.max_err + self.max_qnorm * self.err
                          + f_acc * self.max_qnorm * qnorm + _NORM_MARGIN)

    @staticmethod
    def _lower(a: np.ndarray, err: np.ndarray) -> np.ndarray:
        """Lower bound of the canonical cosine behind a bf16 product ``a``: rounding the fp32
        accumulator s to bf16 errs by <= u|s| <= u/(1-u)|a|; monotone in ``a``."""
        return a - (err + _U_OUT * np.abs(a))

    def _normalised(self, rows):
        """Rows (an index array or a slice) as float32 divided by their float32-rounded float64
        norms, on the device: elementwise within ~2 ulp of the exact x/|x|, far inside
        ``_NORM_MARGIN`` after a dot product."""
        torch = self.torch
        x = torch.from_numpy(np.array(self.features[rows], dtype=np.float32))  # a writable copy
        nrm = torch.from_numpy(self.safe_norms[rows].astype(np.float32))
        return (x / nrm[:, None]).to(self.device)

    def compute(self, queries: np.ndarray, picked: np.ndarray, k: int,
                exact_exclusion: bool = False) -> dict[int, tuple]:
        """Shortlists for ``queries`` against the not-yet-``picked`` rows.

        Returns ``{q: (rows, sims, threshold)}``: ``rows``/``sims`` sorted by exact similarity
        descending (ties: lower index), and every unpicked row *not* in ``rows`` has an exact
        similarity strictly below ``threshold`` (-inf: the list is complete).

        Picked rows are zeroed in the bf16 copy (cheap, once per pick) instead of being masked
        in every product: their product is then 0, which can only make the threshold higher
        than needed (a list that certifies less often), never wrong. ``exact_exclusion`` masks
        them to -inf instead (used when a list must certify: the recompute path).
        """
        torch = self.torch
        want = k + self.slack
        b = len(queries)
        # Query vectors before zeroing: the current pick is among the queries.
        y = self.xq[torch.from_numpy(queries).to(self.device)]
        lost = queries[self.zeroed[queries]]
        if lost.size:  # a zeroed query (recompute of a picked sample): re-encode it
            pos = torch.from_numpy(np.flatnonzero(self.zeroed[queries])).to(self.device)
            y[pos] = self._normalised(lost).to(torch.bfloat16)
        pending = np.flatnonzero(picked & ~self.zeroed)
        if pending.size:
            self.xq[torch.from_numpy(pending).to(self.device)] = 0
            self.zeroed[pending] = True
        with _exact_bf16_reductions(torch, self.device):
            a = y @ self.xq.T  # [b, N] bf16: one row of similarities per query
        if exact_exclusion:
            a.index_fill_(1, torch.from_numpy(np.flatnonzero(picked)).to(self.device), float("-inf"))
        head, width = self._group_maxima(a, want)
        v = head.float().topk(min(want, head.shape[1]), dim=1).values[:, -1].cpu().numpy().astype(np.float64)
        if self.n - int(picked.sum()) < want:
            v[:] = -np.inf  # fewer candidates than asked for: keep everything unpicked
        err = self.query_err[queries]
        lower = self._lower(v, err)
        # Smallest a whose upper bound reaches the threshold: a + err + u'|a| >= T.
        gap = lower - err
        with np.errstate(invalid="ignore"):
            cut = np.where(gap >= 0, gap / (1 + _U_OUT), gap / (1 - _U_OUT))
        # Round the cut *down* to a bf16 value so the bf16 comparison never drops a candidate.
        cut_t = torch.from_numpy(cut.astype(np.float32))
        cut_b = cut_t.to(torch.bfloat16)
        cut_b = torch.where(cut_b.float() > cut_t,
                            torch.nextafter(cut_b, torch.full_like(cut_b, float("-inf"))), cut_b)
        rows, cols = self._candidates(a, head, width, cut_b.to(self.device))
        keep = ~picked[rows]
        rows, cols = rows[keep], cols[keep]
        sims = exact_cosine_pairs(self.features, self.norms, rows, queries[cols])
        order = np.lexsort((rows, -sims, cols))  # per query: similarity desc, then index asc
        rows, cols, sims = rows[order], cols[order], sims[order]
        bounds = np.searchsorted(cols, np.arange(b + 1))
        return {int(q): (rows[bounds[j]:bounds[j + 1]], sims[bounds[j]:bounds[j + 1]], float(lower[j]))
                for j, q in enumerate(queries)}

    def _group_maxima(self, a, m: int):
        """Maxima of ``a``'s rows over G >= m contiguous groups (plus a remainder group).

        The m-th largest group maximum is <= the m-th largest entry (m groups reach it, so m
        distinct entries do); with many groups it is nearly that entry itself. One pass, far
        cheaper than topk over N; the groups also localise the candidates (``_candidates``).
        """
        torch = self.torch
        b, n = a.shape
        groups = min(n, max(m, 1024))
        width = n // groups
        head = a[:, :groups * width].reshape(b, groups, width).amax(dim=2)
        if groups * width < n:
            head = torch.cat([head, a[:, groups * width:].amax(dim=1, keepdim=True)], dim=1)
        return head, width

    def _candidates(self, a, head, width: int, cut):
        """(row, query) pairs with ``a >= cut[query]``, reading only groups whose max reaches it."""
        torch = self.torch
        b, n = a.shape
        full = (n // width) * width
        qi, gi = torch.nonzero(head >= cut[:, None], as_tuple=True)
        tail = gi * width >= full  # the remainder group
        rows, cols = [], []
        if (~tail).any():
            q, g = qi[~tail], gi[~tail]
            block = a[:, :full].reshape(b, -1, width)[q, g]  # [P, width]
            p, off = torch.nonzero(block >= cut[q][:, None], as_tuple=True)
            rows.append(g[p] * width + off)
            cols.append(q[p])
        if tail.any():
            q = qi[tail]
            p, off = torch.nonzero(a[q, full:] >= cut[q][:, None], as_tuple=True)
            rows.append(full + off)
            cols.append(q[p])
        if not rows:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return torch.cat(rows).cpu().numpy(), torch.cat(cols).cpu().numpy()


@contextlib.contextmanager
def _exact_bf16_reductions(torch, device):
    """On CUDA, forbid cuBLAS's reduced-precision (bf16) split-K reductions: the error bound
    assumes fp32 accumulation."""
    if device.type != "cuda":
        yield
        return
    flag = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = flag


def diverse_greedy(difficulty: Any, features: Any, budget: int, k_nearest: int = 10,
                   gamma: float = 1.0, penalty: str = "reference", device: str = "cpu",
                   block_size: int = 512, slack: int | None = None,
                   show_progress: bool = False) -> GreedyResult:
    """Self-Filter stage 2, fast and exact: the picks of :func:`reference_greedy`.

    difficulty: [N] (``-score`` of the stage-1 score net: higher = harder = picked first).
    features: [N, F] (any float dtype, need not be normalised; a memmap is fine); may be None
        when k_nearest is 0 (no penalty: hardest first).
    budget: number of picks. k_nearest, gamma: the penalty (reference defaults 10 and 1).
    penalty: "reference" (exact reference behaviour) or "positive" (see the module docstring).
    device: torch device for the bf16 shortlisting ("cpu", "cuda", "cuda:1", ...).
    block_size: neighbour lists computed per matrix product (memory: N * block_size * 2 bytes).
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
    stats = {"implementation": "fast", "device": str(device), "blocks": 0, "lists": 0,
             "recomputed": 0, "lists_unused": 0}
    index = None
    t0 = time.perf_counter()
    if k and budget:
        index = _NeighbourIndex(features, row_norms(features), device, slack, show_progress)
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
                    cache.update(index.compute(queries, picked, k))
                    seconds_lists += time.perf_counter() - t1
                    stats["blocks"] += 1
                    stats["lists"] += len(queries)
                    entry = cache.pop(p)
                rows, sims = _take(entry, picked, k)
                if rows is None:  # the cached list lost its certificate: redo it against now
                    entry = index.compute(np.array([p], dtype=np.int64), picked, k, exact_exclusion=True)[p]
                    stats["recomputed"] += 1
                    rows, sims = _take(entry, picked, k)
                    assert rows is not None, "a fresh neighbour list must certify"
                work[rows] -= dstar * (sims * sims) * gamma
                if floor is not None:
                    work[rows] = np.maximum(work[rows], floor)
            if bar is not None:
                bar.update(1)
    stats["lists_unused"] = len(cache)
    stats["seconds_lists"] = seconds_lists
    stats["seconds_total"] = time.perf_counter() - t0
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
