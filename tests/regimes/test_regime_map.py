"""The selector map's decisions against scipy's own Welch test on the seeds themselves."""
from __future__ import annotations

import statistics

import numpy as np
import pytest
from scipy import stats as sps

from selfilter.regimes.map import build_map, hypothesis_verdict, regime_cells, render_markdown

METHODS = ("random", "oracle_clean", "oracle_hard", "self_filter_scores", "self_filter_clip", "el2n")
CONTROLS = ("oracle_clean", "oracle_hard")


def _metrics(seeds: dict[str, dict[str, list[float]]], mdd: dict[str, float], full: list[float]) -> dict:
    """A metrics.json summary from per-seed overall scores (only what the map reads)."""
    def entry(values, control=False):
        return {"control": control, "metrics": {"overall": {
            "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "n": len(values), "half_width": None}}}
    methods = {}
    for budget, by_method in seeds.items():
        for m, values in by_method.items():
            methods.setdefault(m, {})[budget] = entry(values, m in CONTROLS)
    methods["full"] = {"1": entry(full)}
    resolution = {b: {"mdd": v, "n_seeds": 3} for b, v in mdd.items()}
    resolution["1"] = {"mdd": 0.1, "n_seeds": 3}
    return {"summary": {"methods": methods, "resolution": resolution}}


def _grid(rng: np.random.Generator, shifts: dict[str, float], noise: float = 0.03) -> dict[str, list[float]]:
    return {m: list(0.5 + shifts.get(m, 0.0) + rng.normal(0, noise, 3)) for m in METHODS}


def test_cells_agree_with_scipy_welch_on_many_random_grids():
    rng = np.random.default_rng(11)
    checked = {"calibrated": 0, "blind": 0, "resolved": 0, "unresolved": 0}
    for _ in range(300):
        shifts = {m: float(rng.normal(0, 0.08)) for m in METHODS}
        seeds = {"0.15": _grid(rng, shifts, noise=float(rng.uniform(0.005, 0.06)))}
        mdd = float(rng.uniform(0.0, 0.12))
        cells = regime_cells({"name": "r"}, _metrics(seeds, {"0.15": mdd}, [0.6, 0.61, 0.62]), controls=CONTROLS)
        cell = cells["0.15"]
        ref = seeds["0.15"]["random"]
        beats = []
        for ctl in CONTROLS:  # calibrated when any control beats random by scipy's Welch test
            t = sps.ttest_ind(seeds["0.15"][ctl], ref, equal_var=False)
            if t.pvalue < 0.05 and statistics.fmean(seeds["0.15"][ctl]) > statistics.fmean(ref):
                beats.append(ctl)
        expected = "calibrated" if beats else "blind"
        assert cell["status"] == expected and cell["calibrated_by"] == beats
        checked[expected] += 1
        for m in METHODS[1:]:
            tm = sps.ttest_ind(seeds["0.15"][m], ref, equal_var=False)
            gap = statistics.fmean(seeds["0.15"][m]) - statistics.fmean(ref)
            want = bool(tm.pvalue < 0.05 and abs(gap) > mdd)
            assert cell["methods"][m]["resolved"] == want, (m, tm.pvalue, gap, mdd)
            assert cell["methods"][m]["gap"] == pytest.approx(gap)
            assert cell["methods"][m]["p"] == pytest.approx(tm.pvalue, rel=1e-6)
            checked["resolved" if want else "unresolved"] += 1
    assert min(checked.values()) > 20, checked  # every branch was exercised, not only one


def test_a_missing_or_one_seed_control_is_not_established_and_never_tested():
    seeds = {"0.15": {"random": [0.5, 0.52, 0.51], "self_filter_scores": [0.7, 0.71, 0.72]}}
    cells = regime_cells({"name": "r"}, _metrics(seeds, {"0.15": 0.02}, [0.6, 0.6, 0.6]))
    assert cells["0.15"]["status"] == "not established"
    seeds["0.15"]["oracle_clean"] = [0.9]
    cells = regime_cells({"name": "r"}, _metrics(seeds, {"0.15": 0.02}, [0.6, 0.6, 0.6]))
    assert cells["0.15"]["status"] == "not established"
    h = hypothesis_verdict({"r": {"cells": cells}}, {"text": "t", "regimes": ["r"], "methods": ["self_filter_scores"]})
    assert h["status"] == "not tested" and h["cells_tested"] == 0


def _entry(name, seeds, mdd=0.02):
    return ({"name": name, "describe": name, "noise": "low", "pool": {}, "judge": None},
            _metrics(seeds, {b: mdd for b in seeds}, [0.6, 0.61, 0.62]))


def _seeds(sf_gap: float, control_gap: float = 0.3) -> dict[str, list[float]]:
    base = [0.50, 0.51, 0.52]
    return {"random": base, "oracle_clean": [x + control_gap for x in base],
            "self_filter_scores": [x + sf_gap for x in (0.50, 0.515, 0.52)],
            "self_filter_clip": [x - 0.1 for x in base]}


SPEC = {"reference": "random", "control": "oracle_clean", "regimes": {"hyp": {}, "other": {}, "later": {}},  # old key
        "hypothesis": {"text": "hard-first wins when clean", "regimes": ["hyp"], "methods": ["self_filter_scores", "self_filter_clip"]}}


@pytest.mark.parametrize("gaps, control, status", [
    ((0.2, 0.2), 0.3, "confirmed"),
    ((-0.2, -0.2), 0.3, "refuted"),
    ((0.0, 0.0), 0.3, "refuted"),           # a tie is not a win
    ((0.2, -0.2), 0.3, "mixed"),
    ((0.2, 0.2), 0.0, "not tested"),        # the control does not beat random: blind, never counted
])
def test_hypothesis_status_follows_the_calibrated_cells(gaps, control, status):
    hyp = {"0.15": _seeds(gaps[0], control), "0.3": _seeds(gaps[1], control)}
    m = build_map([_entry("other", {"0.15": _seeds(0.5)}), _entry("hyp", hyp)], SPEC)
    assert list(m["regimes"]) == ["hyp", "other"]          # the sweep file's order
    assert m["not_run"] == ["later"]
    assert m["hypothesis"]["status"] == status
    md = render_markdown(m)
    assert f"**{status.upper()}**" in md and "later" in md
    if control == 0.0:
        assert "| hyp | 15% | blind |" in md and "*" not in md.split("| hyp | 15% | blind |")[1].split("\n")[0]


def test_plot_draws_every_cell(tmp_path):
    from selfilter.regimes.plot import plot_regime_map

    m = build_map([_entry("hyp", {"0.15": _seeds(0.2), "0.3": _seeds(-0.2, 0.0)})], SPEC)
    out = plot_regime_map(m, tmp_path / "map.png")
    from PIL import Image

    assert Image.open(out).size[0] > 300


SPEC2 = {"reference": "random", "controls": ["oracle_clean", "oracle_hard"], "regimes": {"hyp": {}},
         "hypothesis": {**SPEC["hypothesis"], "control": "oracle_hard"}}


def _seeds2(sf_gap: float, clean_gap: float, hard_gap: float) -> dict[str, list[float]]:
    return {**_seeds(sf_gap, clean_gap), "oracle_hard": [x + hard_gap for x in (0.50, 0.505, 0.52)]}


@pytest.mark.parametrize("sf_gap, clean_gap, hard_gap, cell_status, status, premise_absent", [
    (0.2, 0.0, 0.3, "calibrated", "confirmed", 0),     # low noise: only the difficulty control sees anything
    (0.0, 0.0, 0.3, "calibrated", "refuted", 0),       # hard samples help, Self-Filter does not find them
    (0.2, 0.3, 0.0, "calibrated", "not tested", 2),    # calibrated by cleanliness, but hard samples do not help
    (0.2, 0.0, 0.0, "blind", "not tested", 2),
])
def test_the_hypothesis_is_judged_only_where_its_premise_holds(sf_gap, clean_gap, hard_gap, cell_status, status,
                                                               premise_absent):
    hyp = {b: _seeds2(sf_gap, clean_gap, hard_gap) for b in ("0.15", "0.3")}
    m = build_map([_entry("hyp", hyp)], SPEC2)
    cell = m["regimes"]["hyp"]["cells"]["0.15"]
    assert cell["status"] == cell_status
    assert set(cell["controls"]) == {"oracle_clean", "oracle_hard"}
    h = m["hypothesis"]
    assert h["status"] == status and h["cells_premise_absent"] == premise_absent
    md = render_markdown(m)
    assert f"**{status.upper()}**" in md and "oracle_hard" in md
    if premise_absent:
        assert "not counted: premise absent: oracle_hard does not beat random" in md
    if cell_status == "calibrated":
        assert f"| hyp | 15% | calibrated ({', '.join(cell['calibrated_by'])}) |" in md


def test_a_sweep_file_with_a_hypothesis_control_that_is_not_a_control_is_refused(tmp_path):
    from selfilter.config import ConfigError
    from selfilter.regimes.spec import load_spec

    path = tmp_path / "sweep.yaml"
    path.write_text("controls: [oracle_clean]\nhypothesis: {text: t, regimes: [a], methods: [m], control: oracle_hard}\n"
                    "regimes: {a: {describe: d, noise: low}}\n")
    with pytest.raises(ConfigError, match="hypothesis.control 'oracle_hard' is not one of controls"):
        load_spec(path)
    path.write_text("control: oracle_clean\nhypothesis: {text: t, regimes: [a], methods: [m]}\n"
                    "regimes: {a: {describe: d, noise: low}}\n")
    assert load_spec(path).controls == ["oracle_clean"]  # the key of sweep files before oracle_hard


def test_a_map_mixing_code_versions_says_which_regime_came_from_which():
    a = _entry("hyp", {"0.15": _seeds(0.2)})
    b = _entry("other", {"0.15": _seeds(0.2)})
    cpu = {"machine": "EPYC [avx2 fma]"}
    same = build_map([({**a[0], "code": "c1", **cpu}, a[1]), ({**b[0], "code": "c1", **cpu}, b[1])], SPEC)
    assert "combinations" not in render_markdown(same)
    mixed = build_map([({**a[0], "code": "c1", **cpu}, a[1]), b], SPEC)  # "other": collected before digests
    md = render_markdown(mixed)
    assert "come from 2 (code, CPU) combinations" in md
    assert "code c1 on EPYC [avx2 fma]: hyp" in md and "code not recorded on CPU not recorded: other" in md
    other_cpu = build_map([({**a[0], "code": "c1", **cpu}, a[1]),
                           ({**b[0], "code": "c1", "machine": "EPYC [avx2 avx512f fma]"}, b[1])], SPEC)
    assert "come from 2 (code, CPU) combinations" in render_markdown(other_cpu)  # same code, another CPU
