"""Seed statistics for the comparison: mean, sample std, t-based confidence interval, ranks.

Pure functions over plain numbers. With a handful of seeds (5 by default) a normal-based
interval would be far too narrow; the t distribution with n - 1 degrees of freedom is the
textbook interval for a mean of n independent runs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats as _st


def seed_stats(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """``mean``, ``std`` (sample, ddof=1), ``n``, ``half_width`` and ``ci_low``/``ci_high`` =
    mean -+ t_{(1+confidence)/2, n-1} * std / sqrt(n). With one value the spread is unknown:
    std and the interval are NaN (reported as "n/a"), never 0."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(vals) / n
    if n == 1:
        nan = float("nan")
        return {"mean": mean, "std": nan, "n": 1, "half_width": nan, "ci_low": nan, "ci_high": nan}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(_st.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "half_width": half,
            "ci_low": mean - half, "ci_high": mean + half}


def relative_to(value: float, reference: float) -> float:
    """``value`` as a percentage of ``reference`` (full-data performance = 100%)."""
    if reference == 0 or not math.isfinite(reference):
        return float("nan")
    return 100.0 * value / reference


def ranks(scores: Mapping[str, float], higher_is_better: bool = True) -> dict[str, int]:
    """Competition ranks ("1224"): equal scores share the best rank; NaN scores rank last."""
    def key(name):
        s = scores[name]
        if not math.isfinite(s):
            return math.inf
        return -s if higher_is_better else s

    out: dict[str, int] = {}
    ordered = sorted(scores, key=lambda n: (key(n), n))
    for i, name in enumerate(ordered):
        prev = ordered[i - 1] if i else None
        out[name] = out[prev] if prev is not None and key(prev) == key(name) else i + 1
    return out


def separated(a: Mapping[str, float], b: Mapping[str, float], k: float = 2.0) -> tuple[bool, float, float]:
    """Does ``a`` beat ``b`` by more than ``k`` seed standard deviations? Returns
    (verdict, mean difference, threshold). The std is the larger of the two groups' (the
    conservative reading of "more than twice the seed std"); NaN when either has one seed."""
    diff = a["mean"] - b["mean"]
    std = max(a["std"], b["std"])
    threshold = k * std
    return (bool(math.isfinite(threshold) and diff > threshold), diff, threshold)


def pooled_std(groups: Sequence[Mapping[str, float]]) -> tuple[float, int]:
    """Pooled within-group seed std of ``seed_stats`` results (groups with one seed carry no
    spread and are skipped): sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)). Returns (std, degrees of
    freedom); (NaN, 0) when no group has two seeds."""
    dof = sum(int(g["n"]) - 1 for g in groups if int(g["n"]) > 1 and math.isfinite(g["std"]))
    if dof == 0:
        return float("nan"), 0
    ss = math.fsum((int(g["n"]) - 1) * g["std"] ** 2 for g in groups if int(g["n"]) > 1 and math.isfinite(g["std"]))
    return math.sqrt(ss / dof), dof


def min_detectable_difference(std: float, n_seeds: int, confidence: float = 0.95, dof: int | None = None) -> float:
    """The smallest difference of two methods' means (``n_seeds`` seeds each, seed std ``std``)
    that a two-sided two-sample t-test calls significant at ``confidence``:
    t_{(1+confidence)/2, dof} * std * sqrt(2 / n). ``dof`` is the degrees of freedom of ``std``:
    2n-2 for the two groups' own std (the default), the pooled dof when ``std`` is pooled over
    more groups. A gap below it is not resolved by the grid (it is the least significant
    difference; detecting it reliably, with power, needs more seeds)."""
    if n_seeds < 2 or not math.isfinite(std):
        return float("nan")
    t = float(_st.t.ppf((1 + confidence) / 2, dof if dof else 2 * n_seeds - 2))
    return t * std * math.sqrt(2.0 / n_seeds)


EQUAL = 1e-9  # means closer than this are equal (the same subset trained the same way scores the same)


def welch(a: Mapping[str, float], b: Mapping[str, float], confidence: float = 0.95) -> dict[str, Any]:
    """The one decision rule of the report: a two-sided Welch two-sample t-test of ``a``'s mean
    against ``b``'s (``seed_stats`` results). Returns ``diff`` (a - b), ``p``, ``dof`` and
    ``separated``: True when p < 1 - confidence, False when not, None when either side has one
    seed (no spread, no test: "one seed, no interval"). Equal means are never separated; two
    spread-free groups with different means are (their difference is exact)."""
    diff = float(a["mean"]) - float(b["mean"])
    na, nb = int(a["n"]), int(b["n"])
    out: dict[str, Any] = {"diff": diff, "p": float("nan"), "dof": float("nan"), "separated": None}
    if na < 2 or nb < 2 or not (math.isfinite(a["std"]) and math.isfinite(b["std"])):
        return out
    va, vb = a["std"] ** 2 / na, b["std"] ** 2 / nb
    se2 = va + vb
    if abs(diff) <= EQUAL:
        return {**out, "p": 1.0, "dof": float(na + nb - 2), "separated": False}
    if se2 == 0:
        return {**out, "p": 0.0, "dof": float(na + nb - 2), "separated": True}
    dof = se2 ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    p = float(2 * _st.t.sf(abs(diff) / math.sqrt(se2), dof))
    return {**out, "p": p, "dof": dof, "separated": p < 1 - confidence}


def clip_interval(stats: Mapping[str, float], bounds: tuple[float, float] | None) -> dict[str, Any]:
    """``stats`` with its interval cut to ``bounds`` (the metric's range) and ``clipped`` saying
    whether it was. The mean, std and n - what the tests read - are unchanged: the t-interval
    over a few seeds of a rate near 0 or 1 reaches outside [0, 1], and the part outside is
    impossible, not uncertain."""
    out = dict(stats, clipped=False)
    if bounds is None or not math.isfinite(stats["ci_low"]):
        return out
    lo, hi = max(bounds[0], stats["ci_low"]), min(bounds[1], stats["ci_high"])
    out.update(ci_low=lo, ci_high=hi, clipped=(lo, hi) != (stats["ci_low"], stats["ci_high"]))
    return out
