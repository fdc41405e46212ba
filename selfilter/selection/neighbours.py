"""Certified neighbour shortlists for Self-Filter stage 2 (used by ``greedy.diverse_greedy``).

A shortlist for a query ``q`` is ``(rows, sims, threshold)``: ``rows`` are not-yet-picked
samples sorted by their *canonical* (float64, ``greedy.exact_cosine``) similarity to ``q``,
descending, ties to the lower index; ``sims`` are those canonical similarities; and every
unpicked row that is *not* in ``rows`` has a canonical similarity strictly below ``threshold``
(``-inf``: the list holds every unpicked row). The greedy loop then knows its k nearest
unpicked neighbours exactly, whatever precision found the candidates.

Two indexes find the candidates, both with a rigorous error bound on every similarity they
compute, so nothing whose canonical similarity reaches the threshold is ever dropped:

- ``DenseIndex``: one matrix product of a block of queries against the whole pool, in the
  machine's fast precision (``precision``): bfloat16 where the CPU or GPU does it natively
  (AVX512-BF16 / AMX / tensor cores, checked by timing a small product: a flag can be present
  while the math library is limited to AVX2), float32 otherwise. The float32 path reads the
  caller's float32 features in place (no copy) and scales by the inverse norms afterwards.
- ``ClusteredIndex``: spherical k-means cells with a certified angular radius each. By the
  triangle inequality on the sphere, no member of cell ``c`` is closer to ``q`` than
  ``cos(max(0, angle(q, centre_c) - radius_c))``; cells are scanned best bound first and the
  scan stops once no unscanned cell can reach the threshold. On data with structure (real CLIP
  features, near-duplicates, clusters) a query touches a few cells instead of the pool.
  Cells come from a two-level k-means tree fitted on a sample; radii and scanned similarities
  are float32 values with their error bound; members are gathered from the caller's features
  (no copy).

``build_index`` picks between them: ``auto`` fits the cells on a sample first and keeps them
only if a probe shows that a query would scan at most 6% of the pool.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from typing import Any

import numpy as np

from selfilter.machine import cpu_flags as _cpu_flags  # a module global: tests replace it
from selfilter.selection.similarity import exact_cosine_pairs

BACKENDS = ("auto", "dense", "clustered")
PRECISIONS = ("auto", "bfloat16", "float32")

_U32 = 2.0 ** -24  # unit roundoff of float32
_UNIT = {"float32": _U32, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
# Slack for float64 rounding in norms, canonical cosines, arccos/cos (all ~1e-15), generously.
_MARGIN = 1e-9
_CHUNK = 2048  # rows per chunk of whole-pool passes (bounded transient memory)
_SCAN_SHARE = 0.06  # auto: cells if a query would scan at most this share of the pool
_SUB_BLOCK_BYTES = 0.25  # a dense sub-product [b, N] may take this share of the features' bytes


def _gamma(n: int, u: float = _U32) -> float:
    """Higham's gamma_n: relative error bound of an n-term float dot product (any order)."""
    return n * u / (1 - n * u)


# ---------------------------------------------------------------------------------------------
# Precision: bf16 only where it is native


@functools.lru_cache(maxsize=None)
def bf16_speedup(device: str = "cpu") -> float:
    """How many times faster a bfloat16 matrix product runs than a float32 one on ``device``.

    CUDA: 2.0 where ``torch.cuda.is_bf16_supported()`` (tensor cores; not timed), else 0. CPU:
    0 unless the CPU reports AVX512-BF16 or AMX; else a timed [128 x 1536] x [1536 x 4096]
    product in both precisions - the flag alone is not enough (oneDNN may be capped at AVX2 by
    ONEDNN_MAX_CPU_ISA, or a hypervisor may hide the unit), and emulated bf16 is ~20x slower.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return 2.0 if torch.cuda.is_bf16_supported() else 0.0
    if dev.type != "cpu" or not ({"avx512_bf16", "amx_bf16"} & _cpu_flags()):
        return 0.0
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(128, 1536, generator=gen)
    b = torch.randn(4096, 1536, generator=gen)

    def timed(x, y, reps):
        x @ y[:128].T  # warm-up (library initialisation, first touch)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            x @ y.T
            best = min(best, time.perf_counter() - t)
        return best

    return timed(a, b, 3) / timed(a.bfloat16(), b.bfloat16(), 2)


def native_bf16(device: str = "cpu") -> bool:
    """True if bfloat16 products run natively on ``device``: at least 1.3x the float32 rate."""
    return bf16_speedup(str(device)) >= 1.3


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bf16(str(device)) else "float32"
    return precision


# ---------------------------------------------------------------------------------------------
# Shared: exact rescoring of candidates into shortlists


def _lower(v: np.ndarray, err: np.ndarray, rel: float) -> np.ndarray:
    """Lower bound of the canonical similarity behind a computed value ``v``:
    |computed - canonical| <= err + rel * |computed|. Monotone increasing in ``v``."""
    with np.errstate(invalid="ignore"):  # v = -inf (no value yet): callers mask it
        return v - (err + rel * np.abs(v))


def _cut(lower: np.ndarray, err: np.ndarray, rel: float) -> np.ndarray:
    """Smallest computed value whose *upper* bound ``a + err + rel |a|`` reaches ``lower``."""
    gap = lower - err
    with np.errstate(invalid="ignore"):
        return np.where(gap >= 0, gap / (1 + rel), gap / (1 - rel))


def finish(features: Any, norms: np.ndarray, queries: np.ndarray, rows: np.ndarray,
           cols: np.ndarray, thresholds: np.ndarray, picked: np.ndarray) -> dict[int, tuple]:
    """Score candidate pairs (``rows[i]`` for query ``queries[cols[i]]``) canonically and split
    them into per-query shortlists sorted by (similarity desc, index asc)."""

    keep = ~picked[rows]
    rows, cols = rows[keep], cols[keep]
    sims = exact_cosine_pairs(features, norms, rows, queries[cols])
    order = np.lexsort((rows, -sims, cols))
    rows, cols, sims = rows[order], cols[order], sims[order]
    bounds = np.searchsorted(cols, np.arange(len(queries) + 1))
    return {int(q): (rows[bounds[j]:bounds[j + 1]], sims[bounds[j]:bounds[j + 1]], float(thresholds[j]))
            for j, q in enumerate(queries)}


def _normalised_f32(features: Any, norms: np.ndarray, rows) -> np.ndarray:
    """Rows as float32 unit vectors (float64 division, one rounding): within 2^-24 relative of
    the exact x/|x| per element. Zero rows stay zero."""
    x = np.asarray(features[rows], dtype=np.float64)
    n = norms[rows]
    return (x / np.where(n > 0, n, 1.0)[:, None]).astype(np.float32)


@contextlib.contextmanager
def _exact_float_products(torch, device):
    """On CUDA: float32 products in IEEE float32 (no TF32) and bf16 products with float32
    reductions - the error bounds assume both."""
    if device.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    saved = (m.allow_tf32, m.allow_bf16_reduced_precision_reduction)
    m.allow_tf32, m.allow_bf16_reduced_precision_reduction = False, False
    try:
        yield
    finally:
        m.allow_tf32, m.allow_bf16_reduced_precision_reduction = saved


@contextlib.contextmanager
def _single_thread(torch):
    """Many small products (one cell each) run far faster on one thread than on a pool whose
    threads are woken for every op (measured ~40x on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _progress(items, show: bool, desc: str, unit: str):
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, mininterval=1.0)


# ---------------------------------------------------------------------------------------------
# Dense: one product per block of queries


class DenseIndex:
    """Shortlists from a product of the queries with every row, in ``precision``.

    Error model (per query i, row j; ``x^`` the exact unit row, ``y^`` the exact unit query):
    the stored row times its scale is ``x^_j + d_j`` with |d_j| <= ``row_err`` (measured for a
    quantised copy; 2^-24 for the in-place float32 path, whose only error is the rounded inverse
    norm); the query likewise ``y^_i + e_i``. Then the computed similarity ``a`` satisfies
    |a - <y^, x^>| <= |d| + |e| + |d||e| + gamma_F (1 + |d|)(1 + |e|) + margin, plus the rounding
    of the output (bf16) and of the scale multiply (float32), relative to |a|.
    """

    name = "dense"

    def __init__(self, features: Any, norms: np.ndarray, *, precision: str, device: str = "cpu",
                 show_progress: bool = False):
        import torch

        self.torch = torch
        self.features, self.norms = features, norms
        self.device = torch.device(device)
        self.precision = precision
        n, f = features.shape
        self.n = n
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.dtype = dtype
        in_place = (precision == "float32" and self.device.type == "cpu"
                    and isinstance(features, np.ndarray) and features.dtype == np.float32
                    and features.flags.c_contiguous)
        if in_place:
            # No copy: products on the raw rows, then times 1/|x| (rounded once in float32).
            with warnings.catch_warnings():  # a read-only memmap is fine: it is only read
                warnings.simplefilter("ignore", UserWarning)
                self.mat = torch.from_numpy(features)
            inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
            self.scale = torch.from_numpy(inv.astype(np.float32))
            row_err = _U32 * (1 + 1e-6) if n else 0.0
            self.mat_norm = 1.0 + row_err
        else:
            self.mat = torch.empty((n, f), dtype=dtype, device=self.device)
            self.scale = None
            errs = np.zeros(1)
            qn = np.zeros(1)
            chunks = _progress(range(0, n, _CHUNK), show_progress, f"{precision} index", "chunk")
            for s in chunks:
                x = torch.from_numpy(_normalised_f32(features, norms, slice(s, s + _CHUNK)))
                xq = x.to(dtype)
                back = xq.float()
                # error of the stored row against the exact unit row: quantisation (measured,
                # in float32: off by ~1e-7 relative) + the float32 normalisation (2^-24 per entry)
                e = torch.linalg.vector_norm(x - back, dim=1).double().numpy() * (1 + 1e-3) + _U32
                errs = np.maximum(errs, e.max(initial=0.0))
                qn = np.maximum(qn, torch.linalg.vector_norm(back, dim=1).double().numpy().max(initial=0.0))
                self.mat[s:s + x.shape[0]] = xq.to(self.device)
            row_err = float(errs[0])
            self.mat_norm = max(float(qn[0]) * (1 + 1e-3), 1.0 + row_err)
        self.row_err = row_err
        # Queries per product: larger runs the product faster (512: ~15% over 128 on 2 cores),
        # smaller bounds the transient [b, N] result (kept to a quarter of the features' bytes).
        itemsize = np.dtype(getattr(features, "dtype", np.float32)).itemsize
        self.sub_block = int(np.clip(_SUB_BLOCK_BYTES * f * itemsize / 4, 64, 512))
        # Queries are encoded like rows (same precision), so their error is bounded the same way.
        g = _gamma(f + 2)
        self.err = (2 * row_err + row_err * row_err + g * self.mat_norm * self.mat_norm + _MARGIN)
        self.rel = (_UNIT[precision] / (1 - _UNIT[precision]) if precision == "bfloat16" else 0.0)
        if self.scale is not None:
            self.rel += 2 * _U32  # the product is in float32, then scaled (one more rounding)
        self.rel *= 1 + 1e-6

    def _queries(self, queries: np.ndarray):
        torch = self.torch
        if self.scale is None:
            return self.mat[torch.from_numpy(queries).to(self.device)]
        return torch.from_numpy(_normalised_f32(self.features, self.norms, queries))

    def compute(self, queries: np.ndarray, picked: np.ndarray, k: int, slack: int) -> dict[int, tuple]:
        torch = self.torch
        want = k + slack
        remaining = self.n - int(picked.sum())
        picked_idx = torch.from_numpy(np.flatnonzero(picked)).to(self.device)
        all_rows, all_cols, lowers = [], [], []
        y_all = self._queries(queries)
        for s in range(0, len(queries), self.sub_block):
            y = y_all[s:s + self.sub_block]
            with _exact_float_products(torch, self.device):
                a = y @ self.mat.T  # [b, N]
            if self.scale is not None:
                a.mul_(self.scale)
            a.index_fill_(1, picked_idx, float("-inf"))
            if remaining > want:
                v = a.topk(want, dim=1, sorted=False).values.amin(dim=1).double().cpu().numpy()
                lower = _lower(v, self.err, self.rel)
                cut = _to_dtype_floor(torch, _cut(lower, self.err, self.rel), a.dtype).to(self.device)
            else:  # fewer candidates than asked for: every unpicked row is listed
                lower = np.full(y.shape[0], -np.inf)
                cut = torch.full((y.shape[0],), float("-inf"), dtype=a.dtype, device=self.device)
            q, r = torch.nonzero(a >= cut[:, None], as_tuple=True)
            if remaining <= want:
                keep = ~torch.isinf(a[q, r])
                q, r = q[keep], r[keep]
            all_rows.append(r.cpu().numpy())
            all_cols.append(q.cpu().numpy() + s)
            lowers.append(lower)
        return finish(self.features, self.norms, queries, np.concatenate(all_rows).astype(np.int64),
                      np.concatenate(all_cols).astype(np.int64), np.concatenate(lowers), picked)


def _to_dtype_floor(torch, values: np.ndarray, dtype):
    """``values`` in ``dtype``, rounded down (so a comparison in ``dtype`` never drops a
    candidate whose value reaches the real cut)."""
    t = torch.from_numpy(values.astype(np.float64))
    d = t.to(dtype)
    over = d.double() > t
    if over.any():
        d = torch.where(over, torch.nextafter(d, torch.full_like(d, float("-inf"))), d)
    return d


# ---------------------------------------------------------------------------------------------
# Clustered: k-means cells with certified radii


def default_n_clusters(n: int) -> int:
    """Cells for a pool of n rows: 4 sqrt(n) (1,590 at 158K), at most 4,096. More cells give
    tighter radii (fewer rows scanned per query); the two-level tree keeps their cost low."""
    return int(min(4096, max(8, round(4 * math.sqrt(max(n, 1))))))


def spherical_kmeans(x, n_clusters: int, iters: int, seed: int, matmul_dtype):
    """Lloyd's algorithm on unit rows (torch, float32 means); returns unit centres [C, F].

    Quality only affects speed (how tight the cells are), never correctness."""
    torch = __import__("torch")
    n = x.shape[0]
    gen = np.random.default_rng(seed)
    centres = x[torch.from_numpy(np.sort(gen.choice(n, size=min(n_clusters, n), replace=False)))].clone()
    xm = x.to(matmul_dtype)
    for _ in range(iters):
        assign = torch.cat([(xm[s:s + 8192] @ centres.to(matmul_dtype).T).float().argmax(dim=1)
                            for s in range(0, n, 8192)])
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=centres.shape[0])
        nrm = torch.linalg.vector_norm(sums, dim=1, keepdim=True)
        ok = (counts > 0) & (nrm[:, 0] > 0)
        centres[ok] = sums[ok] / nrm[ok]  # an empty cell keeps its centre
    return centres


class CellTree:
    """Two-level spherical k-means: ~sqrt(C) groups, each split into its share of the C cells.

    Assigning a row costs G + C/G products instead of C (a row goes to the best cell of its
    best group: not always the globally nearest centre, which only loosens that cell's radius,
    never correctness). Fitted on a sample, seeded."""

    def __init__(self, x, n_cells: int, seed: int, matmul_dtype):
        import torch

        self.torch, self.mm = torch, matmul_dtype
        n = x.shape[0]
        n_cells = max(1, min(n_cells, n))
        g = max(1, min(n, round(math.sqrt(n_cells))))
        self.groups = spherical_kmeans(x, g, iters=4, seed=seed, matmul_dtype=matmul_dtype)
        owner = self._argmax(x, self.groups)
        cells, self.offsets = [], [0]
        with _single_thread(torch):  # one small k-means per group
            self._fit_within(x, owner, n_cells, n, seed, cells)
        self.cells = torch.cat(cells) if cells else self.groups.clone()
        self.offsets = np.array(self.offsets)

    def _fit_within(self, x, owner, n_cells: int, n: int, seed: int, cells: list) -> None:
        torch, matmul_dtype = self.torch, self.mm
        for j in range(self.groups.shape[0]):
            sub = x[torch.from_numpy(np.flatnonzero(owner == j))]
            want = max(1, min(len(sub), round(n_cells * len(sub) / n))) if len(sub) else 0
            if want:
                cells.append(spherical_kmeans(sub, want, iters=3, seed=seed + 1 + j, matmul_dtype=matmul_dtype))
            self.offsets.append(self.offsets[-1] + want)

    def _argmax(self, x, centres) -> np.ndarray:
        return torch_argmax(x.to(self.mm) @ centres.to(self.mm).T)

    def assign(self, x) -> np.ndarray:
        """Cell of each (unit, float32) row of ``x``."""
        torch = self.torch
        owner = self._argmax(x, self.groups)
        out = np.empty(x.shape[0], dtype=np.int64)
        with _single_thread(torch):  # one small product per group
            self._assign_within(x, owner, out)
        return out

    def _assign_within(self, x, owner: np.ndarray, out: np.ndarray) -> None:
        torch = self.torch
        for j in np.unique(owner):
            rows = np.flatnonzero(owner == j)
            lo, hi = self.offsets[j], self.offsets[j + 1]
            if hi == lo:  # a group with no cells (empty in the sample): nearest cell overall
                out[rows] = self._argmax(x[torch.from_numpy(rows)], self.cells)
                continue
            out[rows] = lo + self._argmax(x[torch.from_numpy(rows)], self.cells[lo:hi])


def torch_argmax(scores) -> np.ndarray:
    return scores.float().argmax(dim=1).numpy()


class ClusteredIndex:
    """Shortlists by scanning k-means cells in order of their certified similarity bound.

    Scanned rows are scored canonically right away (``exact_cosine`` on the caller's features,
    gathered per cell): no copy of the features, no error band around the threshold. Only the
    cell bounds need care: centre cosines are float32 products with their error bound, radii
    are float64.
    """

    name = "clustered"

    def __init__(self, features: Any, norms: np.ndarray, tree: CellTree, *,
                 show_progress: bool = False):
        import torch

        self.torch = torch
        self.features, self.norms = features, norms
        n, f = features.shape
        self.n = n
        centres = tree.cells
        c = centres.shape[0]
        centres64 = centres.double().numpy()
        centres64 /= np.maximum(np.linalg.norm(centres64, axis=1, keepdims=True), 1e-300)
        self.centres32 = torch.from_numpy(centres64.astype(np.float32))
        # query-centre cosines in float32: unit query and centre each within 2^-24 per entry of
        # their float64 values, float32 accumulation
        self.err_centre = _gamma(f + 2) * 1.01 + 2 * _U32 + _MARGIN
        # One pass: assign each row to its most similar centre (fast precision: any assignment
        # is correct) and measure its float64 cosine to that centre (the radius must be exact).
        assign = np.empty(n, dtype=np.int64)
        cos_min = np.full(c, np.inf)
        inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
        centres32 = self.centres32.numpy()
        step = _CHUNK  # bounded transients
        for s in _progress(range(0, n, step), show_progress, "cells", "chunk"):
            unit = np.asarray(features[s:s + step], dtype=np.float32) * inv[s:s + step, None]
            cells = tree.assign(torch.from_numpy(unit))
            assign[s:s + len(cells)] = cells
            # float32 cosine to the cell's centre; its error is bounded below (err_centre)
            np.minimum.at(cos_min, cells, np.einsum("ij,ij->i", unit, centres32[cells]))
        # A member's cosine to its centre is at least the float32 value minus its error bound:
        # unit row within 3 x 2^-24 per entry (rounding to float32, inverse norm, product), the
        # centre within 2^-24, float32 accumulation (a zero row computes 0 and has 0).
        cos_min = cos_min - (_gamma(f + 2) * 1.01 + 5 * _U32 + _MARGIN)
        self.perm = np.argsort(assign, kind="stable")  # rows in cell order
        self.cell_of = assign[self.perm]  # cell of each position in cell order
        self.starts = np.searchsorted(self.cell_of, np.arange(c + 1))
        self.empty = self.starts[1:] == self.starts[:-1]
        cos_min = np.clip(cos_min, -1.0, 1.0)
        self.radius = np.where(self.empty, 0.0, np.arccos(np.where(self.empty, 1.0, cos_min)))
        # Scanned values: the raw row in float32 (exact for float32 features, else rounded once),
        # a float32 product with the float32 unit query, times the float32 inverse norm.
        self.inv_norm = inv
        row_err = 2 * _U32 * (1 + 1e-6)  # row rounding + inverse-norm rounding, relative
        self.err = 2 * row_err + row_err * row_err + _gamma(f + 2) * (1 + row_err) ** 2 + _MARGIN
        self.rel = 2 * _U32 * (1 + 1e-6)
        self.scanned = 0  # rows scanned (stats, probe)
        self.queries = 0

    def bounds(self, y64: np.ndarray) -> np.ndarray:
        """[b, C] upper bounds of the canonical similarity of any member of each cell to each
        (float64, unit) query: cos(max(0, angle(q, centre) - radius)), from an upper bound of
        the query-centre cosine (float32 product + its error bound; near 1 the bound is ~1
        anyway, elsewhere arccos turns the ~1e-4 error into a negligible angle)."""
        t = (self.torch.from_numpy(y64.astype(np.float32)) @ self.centres32.T).double().numpy()
        t = np.clip(t + self.err_centre, -1.0, 1.0)
        ang = np.arccos(t) - self.radius[None, :] - 1e-9  # lower bound of the member angle
        b = np.cos(np.maximum(ang, 0.0)) + _MARGIN
        b[:, self.empty] = -np.inf
        return b

    def compute(self, queries: np.ndarray, picked: np.ndarray, k: int, slack: int) -> dict[int, tuple]:
        """Certified shortlists for a block of queries, scanning cells in rounds.

        Round 1 scans each query's best cells (by bound) until they hold ``want`` unpicked rows;
        every later round scans, for each query, the unscanned cells whose bound still reaches
        its threshold (the lower bound of its want-th best value so far). Within a round the
        work is grouped by cell: a cell's unpicked rows are gathered once (float32) and
        multiplied with every query that scans it, one small product per cell.
        """
        torch = self.torch
        want = k + slack
        b = len(queries)
        y64 = np.asarray(self.features[queries], dtype=np.float64)
        qn = self.norms[queries]
        y64 = y64 / np.where(qn > 0, qn, 1.0)[:, None]
        bounds = self.bounds(y64)
        y32 = torch.from_numpy(y64.astype(np.float32))
        order = np.argsort(-bounds, axis=1, kind="stable")  # [b, C] cells, best bound first
        ranked = np.take_along_axis(bounds, order, axis=1)
        members = {}  # cell -> its unpicked rows (computed on first use in this call)
        sizes = np.bincount(self.cell_of[~picked[self.perm]], minlength=len(self.starts) - 1)
        first = (np.cumsum(sizes[order], axis=1) < want).sum(axis=1) + 1  # cells to reach `want`
        done = np.zeros(b, dtype=np.int64)  # cells of each query's order scanned so far
        upto = np.minimum(first, order.shape[1])
        lower = np.full(b, -np.inf)
        top = np.full((b, want), -np.inf)  # each query's best `want` values so far
        step = 1
        qs_l, rows_l, vals_l = [], [], []
        while True:
            # pairs (query, cell) of this round, grouped by cell
            counts = upto - done
            if counts.sum() == 0:
                break
            q_idx = np.repeat(np.arange(b), counts)
            offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            cells = order[q_idx, done[q_idx] + offs]
            by_cell = np.argsort(cells, kind="stable")
            q_idx, cells = q_idx[by_cell], cells[by_cell]
            edges = np.flatnonzero(np.diff(cells)) + 1
            # Keep only values that can still matter: a value below the cut of the threshold at
            # the start of the round can be neither a candidate nor in the top `want` (thresholds
            # only rise). float32 cut, lowered by far more than its float32 rounding (<= 6e-8).
            cut = (_cut(lower, self.err, self.rel) - 1e-6).astype(np.float32)
            round_q, round_r, round_v = [], [], []
            with _single_thread(torch):
                for qs, c in zip(np.split(q_idx, edges), cells[np.r_[0, edges]]):
                    rows = self._members(int(c), picked, members)
                    if not rows.size:
                        continue
                    x = torch.from_numpy(np.asarray(self.features[rows], dtype=np.float32))
                    a = (x @ y32[qs].T).numpy()  # [m, |qs|] float32 (torch: one thread, no copy)
                    a *= self.inv_norm[rows][:, None]
                    ri, qi = np.nonzero(a >= cut[qs][None, :])
                    round_q.append(qs[qi])
                    round_r.append(rows[ri])
                    round_v.append(a[ri, qi].astype(np.float64))
                    self.scanned += len(rows) * len(qs)
            if round_q:
                qa, ra, va = np.concatenate(round_q), np.concatenate(round_r), np.concatenate(round_v)
                qs_l.append(qa)
                rows_l.append(ra)
                vals_l.append(va)
                # new top `want` per query: its old top merged with this round's values
                allq = np.concatenate([np.repeat(np.arange(b), want), qa])
                allv = np.concatenate([top.ravel(), va])
                srt = np.lexsort((-allv, allq))
                starts = np.searchsorted(allq[srt], np.arange(b))
                top = allv[srt][starts[:, None] + np.arange(want)[None, :]]  # >= want each (old top)
            done = upto.copy()
            # thresholds: the lower bound of each query's want-th best value so far
            v = top.min(axis=1)
            have = np.isfinite(v)
            lower = np.where(have, _lower(v, self.err, self.rel), -np.inf)
            # next round: cells whose bound reaches the threshold (or, without one, the next cell)
            # (at most `step` more cells per query a round, doubling: the threshold rises as the
            # nearest cells come in, so scanning all that reach today's threshold at once wastes)
            step *= 2
            reach = (ranked >= lower[:, None]).sum(axis=1)
            upto = np.where(have, np.maximum(done, np.minimum(reach, done + step)), done + 1)
            upto = np.minimum(upto, order.shape[1])
        if not qs_l:
            empty = np.empty(0, dtype=np.int64)
            return finish(self.features, self.norms, queries, empty, empty, np.full(b, -np.inf), picked)
        qa, ra, va = np.concatenate(qs_l), np.concatenate(rows_l), np.concatenate(vals_l)
        keep = va >= _cut(lower, self.err, self.rel)[qa]
        self.queries += b
        return finish(self.features, self.norms, queries, ra[keep], qa[keep], lower, picked)

    def _members(self, c: int, picked: np.ndarray, cache: dict) -> np.ndarray:
        if c not in cache:
            rows = self.perm[self.starts[c]:self.starts[c + 1]]
            cache[c] = rows[~picked[rows]]
        return cache[c]


# ---------------------------------------------------------------------------------------------
# Choosing


def build_index(features: Any, norms: np.ndarray, *, backend: str = "auto", precision: str = "auto",
                device: str = "cpu", k: int = 10, slack: int = 5, n_clusters: int | None = None,
                seed: int = 0, show_progress: bool = False):
    """The index for this data and machine, and a dict saying what was chosen and why."""
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    prec = resolve_precision(precision, device)
    info: dict[str, Any] = {"precision": prec}
    n = features.shape[0]
    dev = torch.device(device)
    if backend == "auto" and (dev.type != "cpu" or n < 20_000):
        backend = "dense"  # a GPU's product over the pool is cheaper than any scan; small pools too
        info["why"] = "gpu" if dev.type != "cpu" else "small pool"
    if backend == "dense":
        info["backend"] = "dense"
        return DenseIndex(features, norms, precision=prec, device=device, show_progress=show_progress), info

    c = int(n_clusters or default_n_clusters(n))
    mm = torch.float32  # cells from float32 products: bf16 assignment noise widens the radii
    # k-means on a sample (seeded), then a probe: on the sample's own cells, what share of the
    # sample would a query scan to certify its list (want scaled to the sample)?
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    m = min(n, max(8 * c, 4096))
    sample = np.sort(rng.choice(n, size=m, replace=False))
    xs = torch.from_numpy(_normalised_f32(features, norms, sample))
    tree = CellTree(xs, c, seed, mm)
    info.update(n_clusters=int(tree.cells.shape[0]), seconds_kmeans=time.perf_counter() - t0)
    if backend == "auto":
        frac = _probe(sample, xs, tree, k + slack, m / n, seed)
        info["probe_scan_fraction"] = frac
        # Scanning a row costs ~12x a row of the dense float32 product (measured, 158K x 1,536:
        # benchmarks/README.md), so cells pay off below ~6% of the pool. Not less with native
        # bf16: its wider error band makes the dense path rescore far more candidates where
        # neighbourhoods are dense (CLIP-like pool: 221 s dense bf16 against 38 s in cells).
        limit = _SCAN_SHARE
        info["probe_scan_limit"] = limit
        if frac > limit:
            info["backend"] = "dense"
            info["why"] = f"probe: a query would scan {frac:.0%} of the pool"
            return DenseIndex(features, norms, precision=prec, device=device, show_progress=show_progress), info
        info["why"] = f"probe: a query would scan {frac:.1%} of the pool"
    info["backend"] = "clustered"
    return ClusteredIndex(features, norms, tree, show_progress=show_progress), info


def _probe(sample, xs, tree: CellTree, want: int, share: float, seed: int) -> float:
    """Mean share of the sample scanned by 32 sample queries against cells built on the sample."""
    unit = xs.numpy()
    sub = ClusteredIndex(unit, np.linalg.norm(unit.astype(np.float64), axis=1), tree)
    want_s = max(2, int(round(want * share)))
    rng = np.random.default_rng(seed + 1)
    qs = rng.choice(len(sample), size=min(32, len(sample)), replace=False)
    sub.compute(qs, np.zeros(len(sample), dtype=bool), want_s, 0)
    return sub.scanned / (len(qs) * len(sample))
