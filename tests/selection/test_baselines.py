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


def _oracle_hard_by_rule(is_clean, size, budget_n):
    """The rule written out: clean rows bucketed by scene size, largest bucket first; then the rest.
    Returns the picks as (bucket order) lists of sets - the order inside a bucket is the seed's."""
    buckets = []
    for k in sorted({int(x) for x in size[is_clean]}, reverse=True):
        buckets.append({i for i in range(len(size)) if is_clean[i] and int(size[i]) == k})
    buckets.append({i for i in range(len(size)) if not is_clean[i]})
    out, left = [], budget_n
    for bucket in buckets:
        if left <= 0:
            break
        out.append((bucket, min(left, len(bucket))))
        left -= len(bucket)
    return out


@pytest.mark.parametrize("n, budget", [(20, 3), (20, 14), (20, 20), (2_000, 300), (2_000, 600), (2_000, 1_900)])
def test_oracle_hard_takes_clean_crowded_scenes_first_then_fills_at_random(n, budget):
    rng = np.random.default_rng(n + budget)
    # the clean-skewed regime's shape: most scenes have one object, a thin crowded tail
    size = rng.choice(np.arange(1, 7), size=n, p=np.exp(-0.8 * np.arange(6)) / np.exp(-0.8 * np.arange(6)).sum())
    clean = rng.random(n) < 0.9
    picks = b.oracle_hard(clean, size, budget, seed=3)
    assert picks.dtype == np.int64 and len(picks) == budget == len(set(picks.tolist()))
    at = 0
    for bucket, take in _oracle_hard_by_rule(clean, size, budget):
        chunk = set(picks[at:at + take].tolist())
        assert chunk <= bucket and len(chunk) == take  # each bucket, in order, before the next
        at += take
    assert at == budget
    np.testing.assert_array_equal(picks, b.oracle_hard(clean, size, budget, seed=3))
    if budget < n:  # the seed orders ties (a partly taken bucket differs)
        assert any(not np.array_equal(picks, b.oracle_hard(clean, size, budget, seed=s)) for s in range(4, 9))


def test_oracle_hard_refuses_misaligned_inputs():
    with pytest.raises(ValueError, match="row-aligned"):
        b.oracle_hard(np.ones(5, dtype=bool), np.ones(4), 2, seed=0)


def test_budget_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="budget_n"):
        b.random_select(5, 6, 0)
