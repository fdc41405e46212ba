"""The comparison: manifest schema, summary, calibration checks, markdown, and the stage."""
import json

import pytest

from selfilter.report.compare import (
    MANIFEST_KEYS,
    build_report,
    overall_score,
    question_types,
)
from selfilter.report.config import CompareConfig

# the synthetic bench has 2-3 questions a type; the real one must have >= 50 (tested below)
CFG = CompareConfig(min_questions_per_type=1)


def _report(grid, cfg=CFG, **kw):
    return build_report(grid / "selections", grid / "runs", grid / "evals", cfg, hidden=grid / "data/imperfections.jsonl",
                        records=grid / "data/records.jsonl", bench=grid / "bench",
                        judge_usage=grid / "judge/usage.json", **kw)


def test_overall_is_the_mean_of_primary_scores():
    m = {"shapes_vqa/exact_match": 0.5, "shapes_vqa/acc_color": 1.0, "shapes_count/exact_match": 0.3}
    assert overall_score(m, CFG.primary_metrics) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="compare.primary_metrics"):
        overall_score({"mme/score": 1.0}, CFG.primary_metrics, where="evals/x/metrics.json")


def test_manifest_schema(grid):
    doc = _report(grid).metrics_json()
    assert set(doc) == {"runs", "summary"}
    assert len(doc["runs"]) == 3 + 3 * 2 * 3  # full x 3 seeds + 3 methods x 2 budgets x 3 seeds
    for run in doc["runs"]:
        assert tuple(run) == MANIFEST_KEYS
        assert isinstance(run["budget"], float) and isinstance(run["seed"], int) and isinstance(run["n_selected"], int)
        assert run["selection"].endswith("subset.json") and run["eval"].endswith("results.json")
        assert "overall" in run["metrics"]
    json.dumps(doc)  # serialisable as is


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_dvc_metrics_are_tens_of_columns_that_agree_with_the_summary(grid):
    """reports/summary.json is what `dvc metrics show` flattens into columns: one mean and one
    interval per (method, budget), the winners, the verdict, a few costs - nothing per seed."""
    report = _report(grid)
    doc = report.dvc_metrics()
    cols = dict(_leaves(doc))
    n_groups = sum(len(g) for g in report.summary["methods"].values())
    # full's budget has no winner; calibrated + its status; 4 costs
    assert len(cols) == 2 * n_groups + len(report.summary["winners"]) - 1 + 2 + 4
    assert len(cols) < 40
    assert cols["calibrated"] is True and cols["15%.winner"] == "random"
    rnd = report.summary["methods"]["random"]["0.15"]["metrics"]["overall"]
    assert cols["15%.random"] == pytest.approx(rnd["mean"], abs=1e-4)
    assert cols["15%.random_ci"] == pytest.approx(rnd["half_width"], abs=1e-4)
    assert cols["100%.full"] == pytest.approx(0.81, abs=1e-4)
    assert cols["cost.runs"] == len(report.runs) and cols["cost.judge_requests"] > 0
    assert not any(k.startswith("runs") or "seed" in k for k in cols)
    json.loads(json.dumps(doc, allow_nan=False))  # strict JSON: an undefined interval is null


def test_summary_relative_to_full_ranks_and_controls(grid):
    s = _report(grid).summary
    full = s["methods"]["full"]["1"]
    assert full["metrics"]["overall"]["mean"] == pytest.approx(0.81)
    rnd = s["methods"]["random"]["0.15"]
    assert rnd["relative_to_full"] == pytest.approx(100 * 0.51 / 0.81)
    assert rnd["rank"] == 1 and s["methods"]["self_filter_scores"]["0.15"]["rank"] == 2
    oracle = s["methods"]["oracle_clean"]["0.15"]
    assert oracle["control"] and "rank" not in oracle
    assert s["winners"]["0.15"] == "random"  # the control scores higher but is never the winner
    assert oracle["imperfect_share"] == 0.0
    assert 0 < rnd["imperfect_share"] < 1


def test_question_types_and_majority_baselines(grid):
    from selfilter.report.compare import load_bench

    qt = question_types(load_bench(grid / "bench"))
    assert qt["vqa/color"] == {"metric": "shapes_vqa/acc_color", "majority_answer": "red",
                               "majority_accuracy": pytest.approx(2 / 3), "n": 3, "diagnostic": False}
    assert qt["count"]["majority_accuracy"] == 0.5 and qt["pope/random"]["metric"] == "shapes_pope/accuracy_random"


def test_calibration_passes_on_a_calibrated_grid(grid):
    checks = {c["name"]: c["status"] for c in _report(grid).checks}
    assert checks["full_beats_random"] == "pass"
    assert checks["clean_control_beats_random"] == "pass"
    assert all(v == "pass" for k, v in checks.items() if k.startswith("full_beats_majority"))


def test_calibration_fails_when_full_is_within_seed_noise(tmp_path):
    from synthetic_grid import GRID, build_grid

    grid = build_grid(tmp_path, grid={**GRID, "full": (False, (1.0,), 0.515)})
    checks = {c["name"]: c for c in _report(grid).checks}
    assert checks["full_beats_random"]["status"] == "fail"
    # full at 0.515-0.535 does not beat the colour majority (2/3)
    assert checks["full_beats_majority[vqa/color]"]["status"] == "fail"
    assert checks["full_beats_majority[vqa/size]"]["status"] == "pass"


def test_per_type_check_fails_on_fewer_questions_than_the_minimum(grid):
    checks = {c["name"]: c for c in _report(grid, cfg=CompareConfig()).checks}
    size = checks["full_beats_majority[vqa/size]"]
    assert size["status"] == "fail" and "fewer than 50" in size["detail"] and size["difference"] > 0


def test_diagnostic_tasks_stay_out_of_overall_and_calibration(grid):
    from synthetic_grid import METRICS

    cfg = CompareConfig(min_questions_per_type=1, diagnostic_tasks=["shapes_vqa"])
    m = {k: 0.5 for k in METRICS} | {"shapes_vqa/exact_match": 0.0}
    assert overall_score(m, cfg.primary_metrics, diagnostic=cfg.diagnostic_tasks) == pytest.approx(0.5)
    report = _report(grid, cfg=cfg)
    names = {c["name"] for c in report.checks}
    assert "full_beats_majority[count]" in names and not any("vqa/" in n for n in names)
    assert report.qtypes["vqa/color"]["diagnostic"] and not report.qtypes["count"]["diagnostic"]
    assert "| vqa/color (diagnostic) | 3 |" in report.markdown()
    assert "primary metric (shapes_count/exact_match, shapes_pope/accuracy);" in report.markdown()


def test_minimum_detectable_difference_per_budget_next_to_the_gaps(grid):
    from scipy import stats

    report = _report(grid)
    res = report.summary["resolution"]["0.15"]
    # every group's seeds score base + 0.00, 0.01, 0.02: std 0.01, pooled over the 3 groups at 15%
    # (random, self_filter_scores, oracle_clean): 3 x (3 - 1) = 6 degrees of freedom, and the t
    # quantile takes those (not 2n - 2 = 4, which belongs to two groups' own std)
    expected = stats.t.ppf(0.975, 6) * 0.01 * (2 / 3) ** 0.5
    assert res["n_seeds"] == 3 and res["pooled_std"] == pytest.approx(0.01) and res["dof"] == 6
    assert res["mdd"] == pytest.approx(expected)
    md = report.markdown()
    assert f"Minimum detectable difference of this grid at 15%: **{expected:.3f}**" in md
    # random 0.51 vs self_filter_scores 0.46: the Welch test separates them, marked *
    p = stats.ttest_ind([0.45, 0.46, 0.47], [0.50, 0.51, 0.52], equal_var=False).pvalue
    assert "| self_filter_scores | 3 | 0.460 ± 0.025 | -0.050* |" in md
    assert f"separated at 95% (Welch t-test, p = {p:.3g})" in md


def test_known_imperfect_samples_picked_are_counted_by_kind(grid):
    s = _report(grid).summary["methods"]
    # random at 15% picks uids (7i + seed) % 20 for i < 3: one of them >= 10 (imperfect) per seed
    assert s["random"]["0.15"]["imperfect_picked"] == {"wrong_answer": 1.0}
    assert s["oracle_clean"]["0.15"]["imperfect_picked"] == {}
    assert "1 of 3 (0.333): wrong_answer 1" in _report(grid).markdown()


def test_calibration_needs_enough_seeds(tmp_path):
    from synthetic_grid import build_grid

    grid = build_grid(tmp_path, seeds=(0, 1))
    checks = {c["name"]: c["status"] for c in _report(grid).checks}
    assert checks["full_beats_random"] == "skipped" and checks["clean_control_beats_random"] == "skipped"


def test_markdown_states_the_winner_and_that_self_filter_loses(grid):
    md = _report(grid).markdown(["plots/score_vs_budget.png"])
    assert "**random** wins" in md
    assert "Self-Filter does not win at 15%" in md
    assert "oracle_clean (control)" in md and "equal_epochs" in md
    assert "| vqa/color | 3 | 0.667 (red)" in md
    assert "| alpagasus" not in md and "| self_filter_scores | 15% | 0.010 | 20 | 1040 |" in md


def test_missing_evaluation_names_the_file(grid):
    (grid / "evals/random/b0.15_s1/metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="evals/random/b0.15_s1/metrics.json"):
        _report(grid)


def test_compare_stage_writes_everything_then_fails_on_calibration(tmp_path):
    from synthetic_grid import GRID, build_grid

    from stages.compare import main

    grid = build_grid(tmp_path, grid={**GRID, "full": (False, (1.0,), 0.515)})
    params = tmp_path / "params.yaml"
    params.write_text("compare: {}\n")
    args = ["--params", str(params), "--selections", str(grid / "selections"), "--runs", str(grid / "runs"),
            "--evals", str(grid / "evals"), "--hidden", str(grid / "data/imperfections.jsonl"),
            "--records", str(grid / "data/records.jsonl"), "--bench", str(grid / "bench"),
            "--judge-usage", str(grid / "judge/usage.json"), "--out", str(tmp_path / "reports")]
    assert main(args) == 1
    out = tmp_path / "reports"
    for f in ["metrics.json", "summary.json", "calibration.json", "comparison.md", "comparison.html", "plots/score_vs_budget.png",
              "plots/score_vs_budget.csv", "plots/metrics_b0.05.png", "plots/metrics_b0.15.png"]:
        assert (out / f).is_file(), f
    assert json.loads((out / "calibration.json").read_text())["calibrated"] is False
    html = (out / "comparison.html").read_text()  # MLflow previews it: plots embedded, tables rendered
    assert html.count('src="data:image/png;base64,') == 3 and "<table>" in html and "plots/" not in html
    params.write_text("compare:\n  fail_on_calibration: false\n")
    assert main(args) == 0


def test_cost_table_charges_the_scoring_stage(tmp_path):
    from synthetic_grid import build_grid

    grid = build_grid(tmp_path)
    for meta_path in (grid / "selections" / "self_filter_scores").glob("*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "scoring": {"wall_s": 42.0, "model_passes": 2, "sources": []}}))
    md = _report(grid).markdown()
    assert "scoring s (passes)" in md
    assert any(line.startswith("| self_filter_scores | 15% |") and line.endswith("| 42.0 (2) |") for line in md.splitlines())
    assert any(line.startswith("| random | 15% |") and line.endswith("| - |") for line in md.splitlines())
