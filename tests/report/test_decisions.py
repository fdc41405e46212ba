"""One decision rule, honest at any seed count (issues 17 and 19): "separated", "beats random"
and "beats full" are one Welch test; one seed is never separated; equal means are ties; a
benchmark every method scores the same on separates nothing; a skipped calibration check is
"not established", never calibrated; what the data lacks is left out and said."""
import json
import random

import pytest
from scipy import stats
from synthetic_grid import GRID, build_grid

from selfilter.report.compare import build_report
from selfilter.report.config import CompareConfig
from selfilter.report.markdown import verdict_lines
from selfilter.report.stats import seed_stats, welch

CFG = CompareConfig(min_questions_per_type=1)


def _report(grid, cfg=CFG):
    return build_report(grid / "selections", grid / "runs", grid / "evals", cfg, hidden=grid / "data/imperfections.jsonl",
                        records=grid / "data/records.jsonl", bench=grid / "bench", judge_usage=grid / "judge/usage.json")


def _verdict(report):
    return [line for line in verdict_lines(report.summary, report.cfg)]


def test_welch_matches_scipy_at_realistic_sizes():
    rng = random.Random(0)
    for _ in range(200):
        na, nb = rng.randint(2, 8), rng.randint(2, 8)
        a = [rng.gauss(0.5, rng.uniform(0.001, 0.1)) for _ in range(na)]
        b = [rng.gauss(0.5 + rng.uniform(-0.1, 0.1), rng.uniform(0.001, 0.1)) for _ in range(nb)]
        ours = welch(seed_stats(a), seed_stats(b))
        ref = stats.ttest_ind(a, b, equal_var=False)
        assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)
        assert ours["separated"] == (ref.pvalue < 0.05)


def test_welch_edge_cases():
    one = seed_stats([0.9])
    assert welch(one, seed_stats([0.1, 0.2]))["separated"] is None  # one seed: no test
    same = seed_stats([0.3, 0.3, 0.3])
    assert welch(same, same)["separated"] is False  # equal means never separated
    assert welch(seed_stats([0.4, 0.4]), same)["separated"] is True  # spread-free, different: exact


def test_one_seed_is_never_separated(tmp_path):
    report = _report(build_grid(tmp_path, seeds=(0,)))
    lines = _verdict(report)
    assert any("At 15%: **random** wins" in line for line in lines)
    assert all("separated at" not in line.replace("not separated", "") for line in lines)
    assert any("one seed, no interval" in line for line in lines)
    assert report.calibration == "not established" and report.calibrated is False
    assert report.dvc_metrics()["calibrated"] is False
    assert "**not established**" in report.markdown() and "fewer than 3 seeds" in report.markdown()


def test_equal_means_are_a_tie_not_a_winner_by_name(tmp_path):
    grid = build_grid(tmp_path, grid={**GRID, "self_filter_scores": (False, (0.05, 0.15), 0.50)})
    report = _report(grid)
    assert report.summary["ties"]["0.15"] == ["random", "self_filter_scores"]
    lines = _verdict(report)
    assert not any("wins" in line for line in lines)
    assert not any("Self-Filter does not win" in line for line in lines)
    # two contenders, both tied: the benchmark does not separate them
    assert any(line.startswith("At 15%: the benchmark does not separate these methods") for line in lines)
    assert report.dvc_metrics()["15%"]["winner"] == "tie: random, self_filter_scores"


def test_a_tie_at_the_top_with_a_third_method(tmp_path):
    grid = build_grid(tmp_path, grid={**GRID, "el2n": (False, (0.05, 0.15), 0.50), "random": (False, (0.05, 0.15), 0.50)})
    lines = _verdict(_report(grid))
    tie = next(line for line in lines if line.startswith("At 15%"))
    assert "**tie** between el2n, random" in tie and "next self_filter_scores" in tie and "separated at 95%" in tie


def test_all_zero_scores_separate_nothing_and_are_noted(tmp_path):
    grid = build_grid(tmp_path, seeds=(0,), grid={m: (c, b, 0.0) for m, (c, b, _) in GRID.items()})
    for f in (grid / "evals").glob("*/*/metrics.json"):  # every seed scores exactly 0
        f.write_text(json.dumps({k: 0.0 for k in json.loads(f.read_text())}))
    report = _report(grid)
    lines = _verdict(report)
    assert all("separated at" not in line.replace("not separated", "") for line in lines)
    assert any("does not separate these methods" in line for line in lines)
    md = report.markdown()
    assert "Every method, full data included, scores 0.000 on" in md and "higher is better" in md
    assert "No selected subset beats full-data training" in md


def test_no_line_both_separated_and_not(tmp_path):
    # close means with seed noise: whatever the test says, one line says it once
    grid = build_grid(tmp_path, grid={**GRID, "self_filter_scores": (False, (0.05, 0.15), 0.495)})
    for line in _verdict(_report(grid)):
        assert not ("separated at" in line.replace("not separated", "") and "not established" in line), line
        assert "resolved" not in line


def test_beats_full_only_when_the_test_separates(tmp_path):
    # random's mean is above full's by less than the seed noise: above on the mean, not shown to beat it
    grid = build_grid(tmp_path, grid={**GRID, "full": (False, (1.0,), 0.505), "random": (False, (0.05, 0.15), 0.51)})
    md = "\n".join(_verdict(_report(grid)))
    assert "No selected subset beats full-data training" in md
    assert "Above full data on the mean but not shown to beat it: random at 5%" in md
    grid = build_grid(tmp_path / "far", grid={**GRID, "full": (False, (1.0,), 0.30)})
    md = "\n".join(_verdict(_report(grid)))
    assert "Subsets that beat full-data training on the overall score: " in md and "random at 15% (164.5%, p = " in md


def test_a_benchmark_the_fine_tune_does_not_move_is_blind(tmp_path):
    grid = build_grid(tmp_path)
    base = grid / "evals" / "_base" / "metrics.json"
    base.parent.mkdir(parents=True)
    metrics = json.loads(next((grid / "evals" / "full").glob("*/metrics.json")).read_text())
    base.write_text(json.dumps({k: 0.81 for k in metrics}))  # the base scores as well as full
    checks = {c["name"]: c for c in _report(grid).checks}
    assert checks["full_beats_base"]["status"] == "fail" and "blind" in checks["full_beats_base"]["detail"]
    base.write_text(json.dumps({k: 0.1 for k in metrics}))
    assert {c["name"]: c for c in _report(grid).checks}["full_beats_base"]["status"] == "pass"
    base.write_text(json.dumps({"error": "guard: no answers"}))  # a note, not a check that would block calibration
    report = _report(grid)
    assert "full_beats_base" not in {c["name"] for c in report.checks} and report.calibration == "calibrated"
    assert "could not be scored on this benchmark (the base model's evaluation failed (guard: no answers))" in report.markdown()


def test_left_out_parts_are_reported_and_drop_their_check(tmp_path):
    grid = build_grid(tmp_path, grid={k: v for k, v in GRID.items() if k != "oracle_clean"})
    (grid / "selections" / "oracle_clean").mkdir()
    (grid / "selections" / "oracle_clean" / "left_out.json").write_text(json.dumps(
        {"name": "oracle_clean", "reason": "it reads the hidden imperfection labels, which this data does not have"}))
    (grid / "judge" / "usage.json").write_text(json.dumps({"left_out": "no scene annotations (data.scenes)"}))
    report = _report(grid)
    assert set(report.left_out) == {"oracle_clean", "judge"}
    assert "clean_control_beats_random" not in {c["name"] for c in report.checks}
    md = report.markdown()
    assert "## Left out" in md and "- oracle_clean: left out - it reads the hidden imperfection labels" in md


def test_a_selector_that_picks_only_known_imperfect_records_is_noted(tmp_path):
    grid = build_grid(tmp_path)
    import pandas as pd

    for trace in (grid / "selections" / "self_filter_scores").glob("b0.15_s*/trace.parquet"):
        pd.DataFrame({"rank": range(3), "uid": [10, 11, 12], "score": [0.0] * 3}).to_parquet(trace)
    md = _report(grid).markdown()
    assert "self_filter_scores at 15%: every pick (3 of 3) is a known imperfect record" in md


def test_intervals_stay_inside_each_metrics_range(tmp_path):
    from selfilter.report.metric_info import metric_range

    # seeds score 0.98, 0.99, 1.00: the t-interval reaches 1.015, which no accuracy can
    grid = build_grid(tmp_path, grid={**GRID, "random": (False, (0.05, 0.15), 0.98)})
    report = _report(grid)
    checked = 0
    for per in report.summary["methods"].values():
        for g in per.values():
            for k, s in g["metrics"].items():
                rng = (0.0, 1.0) if k == "overall" else metric_range(k)
                if rng and s["n"] > 1:
                    assert rng[0] <= s["ci_low"] <= s["mean"] <= s["ci_high"] <= rng[1], (k, s)
                    checked += 1
    assert checked > 20
    o = report.summary["methods"]["random"]["0.15"]["metrics"]["overall"]
    assert o["clipped"] and o["ci_high"] == 1.0 and o["half_width"] > 0.02  # the test still uses the spread
    assert "| random | 3 | 0.990 [0.965, 1.000] |" in report.markdown()
