"""Each baseline's selection rule on toy inputs."""
import numpy as np
import pytest

from selfilter.selection import baselines as b


def test_random_is_seeded_without_replacement():
    a, c = b.random_select(100, 30, seed=1), b.random_select(100, 30, seed=1)
    np.testing.assert_array_equal(a, c)
    assert len(set(a.tolist())) == 30 and a.dtype == np.int64
    assert not np.array_equal(a, b.random_select(100, 30, seed=2))


def test_top_k_keeps_the_highest():
    assert sorted(b.top_k(np.array([0.1, 5, 3, 9, 1]), 2, seed=0).tolist()) == [1, 3]


def test_top_k_breaks_ties_by_a_seeded_shuffle():
    scores = np.array([9.0] + [5.0] * 50 + [1.0] * 10)  # ratings tie a lot
    picks = {s: b.top_k(scores, 11, seed=s) for s in range(5)}
    for s, p in picks.items():
        assert p[0] == 0 and set(p[1:].tolist()) <= set(range(1, 51))
        np.testing.assert_array_equal(p, b.top_k(scores, 11, seed=s))  # deterministic
    assert len({tuple(p.tolist()) for p in picks.values()}) > 1  # the seed decides the ties
    assert picks[0][1:].tolist() != list(range(1, 11))  # not "lowest index wins"


def test_prototypicality_keeps_the_outliers():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16) * 10
    x = centres[rng.integers(0, 4, 200)] + 0.01 * rng.normal(size=(200, 16))
    outliers = [7, 50, 120]
    x[outliers] = rng.normal(size=(3, 16)) * 10
    assert sorted(b.prototypicality(x.astype(np.float32), 3, n_clusters=4, seed=0).tolist()) == outliers


def test_full_is_everything():
    assert b.full(4).tolist() == [0, 1, 2, 3]


def test_oracle_clean_samples_clean_first_and_fills_from_the_rest():
    clean = np.zeros(20, dtype=bool)
    clean[[2, 5, 9, 11]] = True
    few = b.oracle_clean(clean, 3, seed=0)
    assert set(few.tolist()) <= {2, 5, 9, 11}
    more = b.oracle_clean(clean, 10, seed=0)
    assert set(more[:4].tolist()) == {2, 5, 9, 11} and len(set(more.tolist())) == 10
    np.testing.assert_array_equal(more, b.oracle_clean(clean, 10, seed=0))


def test_budget_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="budget_n"):
        b.random_select(5, 6, 0)
