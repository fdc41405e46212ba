"""Seed statistics against hand-computed values."""
import math

import pytest

from selfilter.report.stats import ranks, relative_to, seed_stats, separated


def test_t_interval_hand_computed():
    # values 1, 2, 3, 4, 5: mean 3, sample std sqrt(2.5); t_{0.975, 4} = 2.776445105...
    s = seed_stats([1, 2, 3, 4, 5])
    assert s["mean"] == 3 and s["n"] == 5
    assert s["std"] == pytest.approx(math.sqrt(2.5))
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert s["half_width"] == pytest.approx(half, rel=1e-9)
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(3 - half), pytest.approx(3 + half))


def test_t_interval_two_values_and_other_confidence():
    # n=2: t_{0.975, 1} = 12.7062047...; std of (0, 1) = sqrt(0.5)
    s = seed_stats([0.0, 1.0])
    assert s["half_width"] == pytest.approx(12.706204736174698 * math.sqrt(0.5) / math.sqrt(2), rel=1e-9)
    # 90%: t_{0.95, 2} = 2.919985580...
    s = seed_stats([1.0, 2.0, 3.0], confidence=0.90)
    assert s["half_width"] == pytest.approx(2.919985580355516 * 1.0 / math.sqrt(3), rel=1e-9)


def test_single_seed_has_no_interval_and_zero_spread_has_zero_width():
    s = seed_stats([0.7])
    assert s["mean"] == 0.7 and math.isnan(s["std"]) and math.isnan(s["half_width"])
    assert seed_stats([0.5, 0.5, 0.5])["half_width"] == 0.0
    with pytest.raises(ValueError):
        seed_stats([])


def test_relative_to_full():
    assert relative_to(0.45, 0.5) == pytest.approx(90.0)
    assert math.isnan(relative_to(0.4, 0.0))


def test_competition_ranks_ties_and_nan():
    assert ranks({"a": 0.5, "b": 0.7, "c": 0.5, "d": float("nan")}) == {"b": 1, "a": 2, "c": 2, "d": 4}
    assert ranks({"a": 0.1, "b": 0.2}, higher_is_better=False) == {"a": 1, "b": 2}


def test_separated_uses_the_larger_std():
    a, b = seed_stats([0.80, 0.81, 0.82]), seed_stats([0.50, 0.60, 0.70])
    ok, diff, thr = separated(a, b)
    assert ok and diff == pytest.approx(0.21) and thr == pytest.approx(2 * 0.1)
    ok, _, _ = separated(seed_stats([0.55, 0.56, 0.57]), b)
    assert not ok


def test_pooled_std_weights_groups_by_their_degrees_of_freedom():
    from selfilter.report.stats import pooled_std

    a, b = seed_stats([0.0, 0.1, 0.2]), seed_stats([1.0, 1.0, 1.0, 1.0, 1.4])
    std, dof = pooled_std([a, b, seed_stats([5.0])])  # a single seed carries no spread
    assert dof == 2 + 4
    assert std == pytest.approx(math.sqrt((2 * a["std"] ** 2 + 4 * b["std"] ** 2) / 6))
    assert math.isnan(pooled_std([seed_stats([1.0])])[0])


def test_min_detectable_difference_is_the_two_sample_t_threshold():
    from scipy import stats

    from selfilter.report.stats import min_detectable_difference

    assert min_detectable_difference(0.02, 3) == pytest.approx(stats.t.ppf(0.975, 4) * 0.02 * math.sqrt(2 / 3))
    assert min_detectable_difference(0.02, 5) < min_detectable_difference(0.02, 3)  # more seeds resolve more
    assert math.isnan(min_detectable_difference(0.02, 1))
    # two groups whose means differ by just more than the MDD are significant at 95% (Welch = Student here)
    mdd = min_detectable_difference(1.0, 4)
    a = [0.0, 1.0, -1.0, 0.0]
    sd = seed_stats(a)["std"]
    b = [x * (1.0 / sd) for x in a]
    assert stats.ttest_ind([x + mdd * 1.001 for x in b], b).pvalue < 0.05
    assert stats.ttest_ind([x + mdd * 0.999 for x in b], b).pvalue > 0.05
