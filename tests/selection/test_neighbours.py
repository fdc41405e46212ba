"""Certified shortlists: every claim a list makes is checked against brute force, and the
machine-dependent choices (bf16, backend) follow what the machine and the data offer."""
import numpy as np
import pytest

from selfilter.selection import neighbours as nb
from selfilter.selection.similarity import exact_cosine, row_norms


def _brute(x, norms, q, picked):
    sims = exact_cosine(x, norms, slice(0, len(x)), q)
    sims[picked] = -np.inf
    return sims


def _check_lists(index, x, queries, picked, k, slack):
    """Each list: sorted, exact, unpicked, and every unpicked row outside it is below threshold;
    a freshly computed list always holds at least k + slack rows (or every unpicked row)."""
    norms = row_norms(x)
    lists = index.compute(queries, picked, k, slack)
    for q in queries:
        rows, sims, thr = lists[int(q)]
        truth = _brute(x, norms, int(q), picked)
        assert not picked[rows].any()
        np.testing.assert_array_equal(sims, truth[rows])
        order = np.lexsort((rows, -sims))
        np.testing.assert_array_equal(order, np.arange(len(rows)))
        outside = np.setdiff1d(np.flatnonzero(~picked), rows)
        assert (truth[outside] < thr).all()
        assert len(rows) >= min(k + slack, int((~picked).sum()))


def _clustered_features(rng, n, f, centres, noise):
    c = rng.normal(size=(centres, f))
    return (c[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, f))).astype(np.float32)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_dense_lists_are_certified(precision):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6_000, 384)).astype(np.float32)
    picked = rng.random(6_000) < 0.3
    index = nb.DenseIndex(x, row_norms(x), precision=precision)
    _check_lists(index, x, rng.choice(6_000, 200, replace=False), picked, 10, 5)


def test_clustered_lists_are_certified():
    rng = np.random.default_rng(1)
    x = _clustered_features(rng, 8_000, 96, 150, 0.1)
    norms = row_norms(x)
    import torch

    tree = nb.CellTree(torch.from_numpy(x / norms[:, None]), 60, seed=0, matmul_dtype=torch.float32)
    index = nb.ClusteredIndex(x, norms, tree)
    picked = rng.random(8_000) < 0.2
    _check_lists(index, x, rng.choice(8_000, 200, replace=False), picked, 10, 5)
    assert index.scanned / 200 < 0.25 * 8_000  # structure: a query scans a few cells, not the pool


def test_cell_bounds_hold_for_every_member():
    rng = np.random.default_rng(2)
    x = _clustered_features(rng, 3_000, 32, 40, 0.3)
    norms = row_norms(x)
    import torch

    tree = nb.CellTree(torch.from_numpy(x / norms[:, None]), 30, seed=0, matmul_dtype=torch.float32)
    index = nb.ClusteredIndex(x, norms, tree)
    qs = rng.choice(3_000, 50, replace=False)
    bounds = index.bounds(x[qs].astype(np.float64) / norms[qs, None])
    for j, q in enumerate(qs):
        truth = exact_cosine(x, norms, slice(0, 3_000), int(q))
        for c in range(len(index.starts) - 1):
            members = index.perm[index.starts[c]:index.starts[c + 1]]
            if members.size:
                assert truth[members].max() <= bounds[j, c]


def test_bf16_only_where_native(monkeypatch):
    nb.bf16_speedup.cache_clear()
    monkeypatch.setattr(nb, "_cpu_flags", lambda: {"avx2", "fma"})
    assert nb.native_bf16("cpu") is False
    assert nb.resolve_precision("auto", "cpu") == "float32"
    assert nb.resolve_precision("bfloat16", "cpu") == "bfloat16"  # an explicit choice is kept
    nb.bf16_speedup.cache_clear()
    with pytest.raises(ValueError, match="precision must be one of"):
        nb.resolve_precision("int4", "cpu")


def test_auto_backend_follows_the_data():
    rng = np.random.default_rng(3)
    structured = _clustered_features(rng, 30_000, 64, 300, 0.05)
    _, info = nb.build_index(structured, row_norms(structured), precision="float32")
    assert info["backend"] == "clustered", info
    gaussian = rng.normal(size=(30_000, 64)).astype(np.float32)
    _, info = nb.build_index(gaussian, row_norms(gaussian), precision="float32")
    assert info["backend"] == "dense", info
    small = gaussian[:1000]
    _, info = nb.build_index(small, row_norms(small), precision="float32")
    assert info == {"precision": "float32", "why": "small pool", "backend": "dense"}


def test_unknown_backend_is_named():
    x = np.ones((10, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        nb.build_index(x, row_norms(x), backend="faiss")
