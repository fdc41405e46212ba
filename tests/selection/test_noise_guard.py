"""self_filter_guarded: Tukey's upper fence on the pool's own difficulty, then Self-Filter's
stage 2 on what it keeps - checked against the literal reference greedy and an independent
quartile computation."""
import statistics

import numpy as np
import pytest

from selfilter.selection import SelectionInputs, SelectOptions, reference_greedy, run_method
from selfilter.selection.guard import guarded_greedy, upper_fence
from selfilter.selection.registry import DIFFICULTY_CLIP, FEATURES


def test_the_fence_is_tukeys_from_independent_quartiles():
    rng = np.random.default_rng(0)
    for n in (5, 17, 400, 10_000):
        d = rng.gamma(2.0, size=n)
        q1, _, q3 = statistics.quantiles(d.tolist(), n=4, method="inclusive")  # numpy's linear rule
        assert upper_fence(d, 1.5) == pytest.approx(q3 + 1.5 * (q3 - q1), rel=1e-12)
        assert upper_fence(d, 3.0) == pytest.approx(q3 + 3.0 * (q3 - q1), rel=1e-12)


def _pool(rng, n=2000, broken=60, f=24):
    """Clean records with a spread of difficulty; ``broken`` planted outliers far above it."""
    d = rng.normal(size=n)
    planted = rng.choice(n, broken, replace=False)
    d[planted] += 8.0
    x = rng.normal(size=(n, f)).astype(np.float32)
    return d, x, set(planted.tolist())


@pytest.mark.parametrize("seed", range(3))
def test_guarded_picks_are_the_reference_greedy_over_what_the_fence_keeps(seed):
    rng = np.random.default_rng(seed)
    d, x, planted = _pool(rng)
    budget = 300
    res = guarded_greedy(d, x, budget, fence=1.5, k_nearest=10)
    # independent: the fence from statistics.quantiles, the picks from the literal reference
    q1, _, q3 = statistics.quantiles(d.tolist(), n=4, method="inclusive")
    keep = np.array([i for i in range(len(d)) if d[i] <= q3 + 1.5 * (q3 - q1)])
    ref = reference_greedy(d[keep], x[keep], budget, 10, 1.0, "reference")
    np.testing.assert_array_equal(res.indices, keep[ref.indices])
    np.testing.assert_array_equal(res.scores, ref.scores)
    assert not planted & set(res.indices.tolist())  # no planted outlier picked
    assert res.stats["guard_set_aside"] >= len(planted)


def test_unguarded_self_filter_picks_the_planted_outliers_first():
    d, x, planted = _pool(np.random.default_rng(0))
    inputs = SelectionInputs(len(d), {DIFFICULTY_CLIP: lambda: d, FEATURES: lambda: x})
    plain = run_method("self_filter_clip", inputs, 300, 0, SelectOptions())
    guarded = run_method("self_filter_guarded", inputs, 300, 0, SelectOptions())
    assert len(planted & set(plain.indices.tolist())) == len(planted)
    assert not planted & set(guarded.indices.tolist())
    assert len(set(guarded.indices.tolist())) == 300


def test_a_budget_beyond_the_fence_fills_with_the_least_difficult_set_aside():
    d = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 50.0, 40.0])
    x = np.eye(10, dtype=np.float32)
    res = guarded_greedy(d, x, 10, fence=1.5, k_nearest=2)
    assert set(res.indices[:8].tolist()) == set(range(8))
    assert res.indices[8:].tolist() == [9, 8]  # 40 before 50
    with pytest.raises(ValueError, match="budget 11"):
        guarded_greedy(d, x, 11)


def test_it_declares_what_it_reads():
    from selfilter.selection import get_method

    m = get_method("self_filter_guarded")
    assert set(m.needs) == {DIFFICULTY_CLIP, FEATURES} and "guard_fence" in m.options and m.deterministic
