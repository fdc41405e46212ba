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

CFG = CompareConfig()


def _report(grid, **kw):
    return build_report(grid / "selections", grid / "runs", grid / "evals", CFG, hidden=grid / "data/imperfections.jsonl",
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
                               "majority_accuracy": pytest.approx(2 / 3), "n": 3}
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
    for f in ["metrics.json", "calibration.json", "comparison.md", "plots/score_vs_budget.png",
              "plots/score_vs_budget.csv", "plots/metrics_b0.05.png", "plots/metrics_b0.15.png"]:
        assert (out / f).is_file(), f
    assert json.loads((out / "calibration.json").read_text())["calibrated"] is False
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
