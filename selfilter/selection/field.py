"""The field's selectors over precomputed per-sample arrays: pure functions, seeded.

- ``clip_score``: keep the highest CLIP image-text similarity (DataComp's CLIP-score filter).
- ``semdedup``: k-means on CLIP features, drop within-cluster near-duplicates, fill the budget at
  random from what is left (Abbas et al., 2023).
- ``ifd``: highest Instruction-Following Difficulty among IFD < 1 (Li et al., 2023); the scores
  come from a model pass (``selfilter.training.modelpass``).
- ``coincide``: spherical k-means on a reference VLM's multi-layer activations; clusters get a
  share of the budget by transferability / density; within a cluster, greedy MMD prototypes
  (Lee et al., EMNLP 2024).
- ``less``: highest gradient-feature cosine to a target set (Xia et al., 2024); the scores come
  from ``selfilter.training.less``.

Each returns the selected row indices (int64) in rank/pick order, plus the score each had.
Heavy pieces (k-means, within-cluster similarities, kernels) are blocked torch products on a
``device`` so the same code runs on a GPU at 665K rows; k-means for SemDeDup is scikit-learn's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from selfilter.selection.baselines import _check_budget, top_k

if TYPE_CHECKING:  # annotations only: torch is imported where a method runs
    import torch

_BLOCK = 4096  # rows per blocked similarity product (memory: BLOCK x cluster size floats)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _fill_random(first: np.ndarray, n_pool: int, budget_n: int, seed: int) -> np.ndarray:
    """``first`` (already ordered), then the rest of the pool in a seeded random order, cut at
    ``budget_n``."""
    first = np.asarray(first, dtype=np.int64)[:budget_n]
    if len(first) >= budget_n:
        return first
    rest = np.setdiff1d(np.arange(n_pool), first)
    rest = np.random.default_rng(seed).permutation(rest)
    return np.concatenate([first, rest[: budget_n - len(first)]]).astype(np.int64)


# ----------------------------------------------------------------------------- SemDeDup

def semdedup_redundancy(features: np.ndarray, n_clusters: int, seed: int, *, device: str = "cpu") -> np.ndarray:
    """Each row's SemDeDup redundancy: its largest cosine to a row *earlier* in its cluster's order
    (-1 for the first row of a cluster).

    Rows are L2-normalised and clustered with k-means (scikit-learn ``MiniBatchKMeans``). Within
    a cluster, rows are ordered by cosine to their centroid, *least* similar first (the paper
    keeps the least prototypical member of a duplicate group). Dropping every row whose
    redundancy exceeds a threshold (the paper's ``1 - eps``) keeps exactly one member of every
    group of mutual near-duplicates; as in the paper, a row can be dropped because of an earlier
    row that was itself dropped (no transitive re-check).
    """
    import torch
    from sklearn.cluster import MiniBatchKMeans

    x = _unit_rows(features)
    n = x.shape[0]
    k = max(1, min(int(n_clusters), n))
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=min(4096, n))
    labels = km.fit_predict(x)
    centres = _unit_rows(km.cluster_centers_)
    redundancy = np.full(n, -1.0)
    xt = torch.from_numpy(x).to(device)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        to_centre = x[members] @ centres[c]
        members = members[np.argsort(to_centre, kind="stable")]  # least prototypical first
        xm = xt[torch.from_numpy(members).to(device)]
        for start in range(0, len(members), _BLOCK):
            rows = xm[start:start + _BLOCK]
            # cosine of each row to every row before it in the order (upper triangle only)
            sims = rows @ xm[: start + len(rows)].T
            earlier = torch.arange(start + len(rows), device=device)[None, :] < (
                torch.arange(start, start + len(rows), device=device)[:, None])
            sims = torch.where(earlier, sims, torch.full_like(sims, -1.0))
            redundancy[members[start:start + len(rows)]] = sims.max(dim=1).values.double().cpu().numpy()
    return redundancy


def semdedup_keep(features: np.ndarray, n_clusters: int, threshold: float, seed: int, *,
                  device: str = "cpu") -> np.ndarray:
    """Boolean mask of the rows SemDeDup keeps at a cosine ``threshold`` (the paper's 1 - eps)."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine in [-1, 1], got {threshold}")
    return semdedup_redundancy(features, n_clusters, seed, device=device) <= threshold


def semdedup(features: np.ndarray, budget_n: int, *, n_clusters: int, threshold: float | None, seed: int,
             device: str = "cpu", redundancy: np.ndarray | None = None) -> np.ndarray:
    """SemDeDup at a fixed budget.

    ``threshold`` a cosine: drop the rows above it, then a seeded random sample of the kept rows
    (when fewer rows are kept than the budget: all of them, then a seeded random fill from the
    dropped ones). ``threshold`` None: the threshold is set by the budget, as the paper sets eps to
    reach a target size - keep the ``budget_n`` least redundant rows (ties by a seeded shuffle).
    """
    n = np.shape(features)[0]
    budget_n = _check_budget(n, budget_n)
    if redundancy is None:
        redundancy = semdedup_redundancy(features, n_clusters, seed, device=device)
    if threshold is None:
        return top_k(-redundancy, budget_n, seed)
    keep = redundancy <= threshold
    rng = np.random.default_rng(seed)
    kept = rng.permutation(np.flatnonzero(keep))
    dropped = rng.permutation(np.flatnonzero(~keep))
    return np.concatenate([kept, dropped])[:budget_n].astype(np.int64)


# ----------------------------------------------------------------------------- IFD

def ifd_select(ifd: np.ndarray, budget_n: int, seed: int) -> np.ndarray:
    """Highest IFD first among the samples with IFD < 1 (Cherry LLM: IFD >= 1 means the
    instruction does not help predict the answer, so the pair is treated as misaligned); NaN
    (no supervised answer token) counts as excluded. When the budget exceeds the valid
    samples, the excluded ones follow in a seeded random order."""
    ifd = np.asarray(ifd, dtype=np.float64)
    budget_n = _check_budget(ifd.shape[0], budget_n)
    valid = np.flatnonzero(np.isfinite(ifd) & (ifd < 1.0))
    ranked = valid[top_k(ifd[valid], len(valid), seed)] if len(valid) else valid
    return _fill_random(ranked, ifd.shape[0], budget_n, seed)


# ----------------------------------------------------------------------------- COINCIDE

def spherical_kmeans(x: torch.Tensor, k: int, seed: int, *, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means (cosine assignments, unit-norm centroids) on unit rows ``x``.

    Initial centres: ``k`` distinct rows drawn with a seeded generator. Returns (labels [N],
    centres [k, D]). An emptied cluster keeps its previous centre.
    """
    import torch

    n = x.shape[0]
    k = max(1, min(int(k), n))
    g = torch.Generator().manual_seed(int(seed))
    centres = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    labels = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        new = torch.cat([(x[s:s + _BLOCK] @ centres.T).argmax(dim=1) for s in range(0, n, _BLOCK)])
        sums = torch.zeros_like(centres).index_add_(0, new, x)
        norms = sums.norm(dim=1, keepdim=True)
        centres = torch.where(norms > 0, sums / norms.clamp(min=1e-12), centres)
        if torch.equal(new, labels):
            break
        labels = new
    return labels, centres


def transferability(centres: torch.Tensor) -> torch.Tensor:
    """COINCIDE's proxy: a cluster's mean cosine to the *other* centroids (a cluster close to
    many others is assumed to teach what transfers to them)."""
    import torch

    k = centres.shape[0]
    if k == 1:
        return torch.ones(1, dtype=torch.float64, device=centres.device)
    sims = (centres @ centres.T).double()
    return (sims.sum(dim=1) - sims.diagonal()) / (k - 1)


def _kernel(a: torch.Tensor, b: torch.Tensor, width: float) -> torch.Tensor:
    import torch
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return torch.exp(-d2.clamp(min=0) / (2 * width ** 2))


def cluster_density(xc: torch.Tensor, width: float) -> float:
    """Mean Gaussian-kernel similarity over all ordered pairs of a cluster (self-pairs included)."""
    total = 0.0
    for s in range(0, xc.shape[0], _BLOCK):
        total += float(_kernel(xc[s:s + _BLOCK], xc, width).double().sum())
    return total / xc.shape[0] ** 2


def mmd_prototypes(xc: torch.Tensor, m: int, width: float) -> np.ndarray:
    """``m`` rows of ``xc`` picked greedily to minimise the MMD between them and the cluster
    (MMD-critic prototypes, Kim et al. 2016), in pick order; ties: lowest row.

    Uses MMD^2(S) = mean K(X,X) - 2/|S| sum_s mu_s + 1/|S|^2 sum_{s,s'} K(s,s') with
    mu_s = mean_x K(x, s), updated incrementally: one kernel row per pick, O(m * n) in all.
    """
    import torch

    n = xc.shape[0]
    mu = torch.cat([_kernel(xc, xc[s:s + _BLOCK], width).double().mean(dim=0) for s in range(0, n, _BLOCK)])
    diag = torch.ones(n, dtype=torch.float64, device=xc.device)  # K(x, x) = 1 for a Gaussian kernel
    k_to_sel = torch.zeros(n, dtype=torch.float64, device=xc.device)  # sum_s K(s, c)
    a = 0.0  # sum of mu over the selected
    b = 0.0  # sum of K over selected pairs
    chosen = torch.zeros(n, dtype=torch.bool, device=xc.device)
    order = []
    for size in range(1, m + 1):
        obj = -2.0 * (a + mu) / size + (b + 2 * k_to_sel + diag) / size ** 2
        obj = torch.where(chosen, torch.full_like(obj, float("inf")), obj)
        c = int(torch.argmin(obj))
        order.append(c)
        chosen[c] = True
        a += float(mu[c])
        b += 2 * float(k_to_sel[c]) + 1.0
        k_to_sel += _kernel(xc, xc[c:c + 1], width).double().squeeze(1)
    return np.asarray(order, dtype=np.int64)


def coincide(activations: np.ndarray, budget_n: int, *, n_clusters: int, temperature: float,
             kernel_width: float, seed: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """COINCIDE selection. Returns (indices in pick order, each pick's cluster score).

    1. spherical k-means on the L2-normalised activation rows;
    2. per cluster: transferability T (mean centroid cosine to the other clusters) and density
       D (mean Gaussian kernel over its pairs); score S = T / D; share P = softmax(S / temperature);
    3. clusters in descending P: take ``round(remaining * P_i / sum of P over the clusters not
       yet visited)`` samples (all of it if the cluster is smaller), by greedy MMD prototypes;
    4. a shortfall left by rounding/small clusters is filled at random (seeded).
    """
    import torch

    if temperature <= 0 or kernel_width <= 0:
        raise ValueError("temperature and kernel_width must be > 0")
    n = np.shape(activations)[0]
    budget_n = _check_budget(n, budget_n)
    x = torch.from_numpy(_unit_rows(activations)).to(device)
    labels, centres = spherical_kmeans(x, n_clusters, seed)
    labels_np = labels.cpu().numpy()
    k = centres.shape[0]
    members = [np.flatnonzero(labels_np == c) for c in range(k)]
    t = transferability(centres).cpu().numpy()
    d = np.array([cluster_density(x[torch.from_numpy(mem).to(device)], kernel_width) if len(mem) else np.inf
                  for mem in members])
    score = np.where(np.isfinite(d), t / d, -np.inf)
    order = np.argsort(-score, kind="stable")
    picked, picked_score = [], []
    remaining = budget_n
    for j, c in enumerate(order):
        if remaining <= 0:
            break
        if not len(members[c]):
            continue
        rest = score[order[j:]]
        rest = rest[np.isfinite(rest)]
        w = np.exp((rest - rest.max()) / temperature)
        share = w[0] / w.sum()
        want = int(round(remaining * share))
        mem = members[c]
        if want >= len(mem):
            chosen = mem
        elif want > 0:
            chosen = mem[mmd_prototypes(x[torch.from_numpy(mem).to(device)], want, kernel_width)]
        else:
            continue
        picked.append(chosen)
        picked_score.append(np.full(len(chosen), score[c]))
        remaining -= len(chosen)
    idx = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    sc = np.concatenate(picked_score) if picked_score else np.zeros(0)
    full = _fill_random(idx, n, budget_n, seed)
    scores = np.concatenate([sc, np.full(len(full) - len(idx), np.nan)])[: len(full)]
    return full, scores
