"""diverse_greedy (fast) must reproduce reference_greedy (literal) pick for pick."""
import numpy as np
import pytest

from selfilter.selection import diverse_greedy, reference_greedy


def _assert_same(d, x, budget, k, gamma=1.0, penalty="reference", **kw):
    ref = reference_greedy(d, x, budget, k, gamma, penalty)
    fast = diverse_greedy(d, x, budget, k, gamma, penalty, **kw)
    np.testing.assert_array_equal(fast.indices, ref.indices)
    np.testing.assert_array_equal(fast.scores, ref.scores)
    return fast


def _clusters(rng, n, f, n_clusters, noise):
    centres = rng.normal(size=(n_clusters, f))
    return (centres[rng.integers(0, n_clusters, n)] + noise * rng.normal(size=(n, f))).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("penalty", ["reference", "positive"])
def test_random_cases_match_reference(seed, penalty):
    rng = np.random.default_rng(seed)
    n, f = int(rng.integers(40, 300)), int(rng.integers(2, 48))
    x = (rng.normal(size=(n, f)) * rng.uniform(0.1, 10, size=(n, 1))).astype(np.float32)  # not normalised
    d = rng.normal(size=n)
    _assert_same(d, x, int(rng.integers(1, n + 1)), int(rng.integers(1, 16)), penalty=penalty, block_size=16)


@pytest.mark.parametrize("shift", [-3.0, -100.0])
def test_negative_difficulties_raise_neighbours_like_the_reference(shift):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 16)).astype(np.float32)
    d = rng.normal(size=150) + shift  # all negative: every "penalty" raises neighbours
    res = _assert_same(d, x, 100, 10, block_size=8)
    assert (res.scores < 0).all()


def test_near_duplicate_clusters_exhaust_cached_lists():
    rng = np.random.default_rng(2)
    x = _clusters(rng, 400, 12, 6, 1e-4)
    d = rng.normal(size=400)
    res = _assert_same(d, x, 300, 10, block_size=64, slack=2)
    assert res.stats["recomputed"] > 0  # the fallback path was exercised


def test_k_larger_than_remaining_and_budget_equal_to_pool():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    d = rng.normal(size=30)
    res = _assert_same(d, x, 30, 50)
    assert sorted(res.indices.tolist()) == list(range(30))


def test_ties_in_difficulty_and_similarity_go_to_the_lowest_index():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(10, 6)).astype(np.float32)
    x = np.concatenate([base, base, base])  # every vector three times: similarity ties
    d = np.round(rng.normal(size=30), 1)  # coarse difficulties: ties
    d[[0, 10, 20]] = 5.0
    res = _assert_same(d, x, 25, 2, block_size=4)
    assert res.indices[0] == 0


def test_zero_rows_have_zero_similarity():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[[3, 7, 11]] = 0
    _assert_same(rng.normal(size=50), x, 40, 5)


def test_hand_computed_example():
    # a and b identical, c orthogonal. Pick a (d=3); b is a's nearest: 2 - 3*1 = -1; c: 1 - 0.
    x = np.array([[1, 0], [2, 0], [0, 1]], dtype=np.float32)
    res = diverse_greedy([3.0, 2.0, 1.0], x, 3, k_nearest=1)
    assert res.indices.tolist() == [0, 2, 1]
    np.testing.assert_allclose(res.scores, [3.0, 1.0, -1.0])


def test_positive_mode_only_lowers_so_pick_scores_never_increase():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 10)).astype(np.float32)
    res = _assert_same(rng.normal(size=200) - 5, x, 150, 10, penalty="positive")
    assert (np.diff(res.scores) <= 0).all()


def test_no_penalty_is_hardest_first_and_needs_no_features():
    d = np.array([0.5, 2.0, 2.0, -1.0, 3.0])
    res = diverse_greedy(d, None, 5, k_nearest=0)
    assert res.indices.tolist() == [4, 1, 2, 0, 3]


def test_memmap_features(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(120, 9)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    d = rng.normal(size=120)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    np.testing.assert_array_equal(diverse_greedy(d, mm, 60).indices, reference_greedy(d, x, 60).indices)


@pytest.mark.parametrize("kwargs, match", [
    ({"budget": 11}, "budget"),
    ({"k_nearest": -1}, "k_nearest"),
    ({"penalty": "nope"}, "penalty"),
    ({"difficulty": [np.nan] * 10}, "not finite at index 0"),
])
def test_invalid_arguments_name_the_problem(kwargs, match):
    args = {"difficulty": np.zeros(10), "features": np.ones((10, 3)), "budget": 5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        diverse_greedy(**args)


def test_features_with_wrong_rows_are_rejected():
    with pytest.raises(ValueError, match="features must be"):
        diverse_greedy(np.zeros(10), np.ones((9, 3)), 5)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference():
    rng = np.random.default_rng(8)
    x = _clusters(rng, 2000, 64, 20, 0.05)
    _assert_same(rng.normal(size=2000), x, 500, 10, device="cuda")
