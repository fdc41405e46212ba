"""selfilter verdict: the console end of `make run`."""
from synthetic_grid import GRID, build_grid

from selfilter.cli import main as cli
from stages.compare import main as compare


def _compare(tmp_path, grid_spec):
    grid = build_grid(tmp_path, grid=grid_spec)
    params = tmp_path / "params.yaml"
    params.write_text("compare:\n  fail_on_calibration: false\n  min_questions_per_type: 1\n")
    assert compare(["--params", str(params), "--selections", str(grid / "selections"), "--runs", str(grid / "runs"),
                    "--evals", str(grid / "evals"), "--hidden", str(grid / "data/imperfections.jsonl"),
                    "--records", str(grid / "data/records.jsonl"), "--bench", str(grid / "bench"),
                    "--judge-usage", str(grid / "judge/usage.json"), "--out", str(tmp_path / "reports")]) == 0
    return tmp_path / "reports"


def test_prints_the_winner_per_budget_and_where_things_are(tmp_path, capsys):
    reports = _compare(tmp_path, GRID)
    capsys.readouterr()
    assert cli(["verdict", "--reports", str(reports), "--mlflow", "sqlite:///x.db"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Verdict\n")
    assert "At 15%: random wins on the overall score" in out and "**" not in out
    assert "Calibration: " in out and "FAILED" not in out
    assert f"Report:  {reports}/comparison.md" in out and "score_vs_budget.png" in out
    assert "MLflow:  sqlite:///x.db" in out
    assert len(out.splitlines()) < 25  # a screen, not a report


def test_prints_the_mlflow_ranking_link_when_tracked(tmp_path, capsys):
    import json

    reports = _compare(tmp_path, GRID)
    tracking = tmp_path / "tracking.json"
    tracking.write_text(json.dumps({"links": {"ranking": "http://127.0.0.1:5000/#/experiments/1/runs?x", "seeds": "s"}}))
    capsys.readouterr()
    cli(["verdict", "--reports", str(reports), "--tracking", str(tracking)])
    assert "methods ranked by overall: http://127.0.0.1:5000/#/experiments/1/runs?x" in capsys.readouterr().out


def test_exits_1_naming_the_failed_check_when_not_calibrated(tmp_path, capsys):
    reports = _compare(tmp_path, {**GRID, "full": (False, (1.0,), 0.515)})
    capsys.readouterr()
    assert cli(["verdict", "--reports", str(reports)]) == 1
    assert "calibration FAILED" in capsys.readouterr().out


def test_missing_report_is_one_line(tmp_path, capsys):
    assert cli(["verdict", "--reports", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dvc repro" in err


def test_names_the_data_regime_it_was_measured_in(tmp_path, capsys):
    reports = _compare(tmp_path, GRID)
    params = tmp_path / "run_params.yaml"
    params.write_text("data:\n  source: shapes\n  shapes:\n    difficulty_skew: 0.8\n    imperfections:\n"
                      "      wrong_answer: 0.02\n      low_information: 0.01\n      truncated: 0.0\n"
                      "      near_duplicate: 0.1\njudge:\n  backend: annotation\n  annotation:\n    view: caption\n"
                      "    caption_recall: 0.6\n    caption_error: 0.2\n")
    capsys.readouterr()
    cli(["verdict", "--reports", str(reports), "--params", str(params)])
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("  Regime: embedded testbed, low noise (3% broken answers: 2% wrong")
    assert "difficulty_skew 0.8" in line and "sees 60% of objects, 20% of them wrong" in line
    params.write_text("data:\n  source: llava\n  annotations: mine.json\n")
    cli(["verdict", "--reports", str(reports), "--params", str(params)])
    assert "  Regime: your data (mine.json)" in capsys.readouterr().out
    params.write_text(": not yaml")
    cli(["verdict", "--reports", str(reports), "--params", str(params)])
    assert "Regime" not in capsys.readouterr().out   # the verdict still prints, without the line
