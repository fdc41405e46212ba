"""The guard turns lmms-eval's swallowed failures into errors - on synthetic runs and a real one."""
import json
import shutil

import pytest

from selfilter.evaluation.guard import EvaluationError, check_run, find_problems, has_chat_template

OK_RESULTS = {"results": {"t": {"exact_match,none": 0.5}}, "n-samples": {"t": {"original": 2, "effective": 2}}}
OK_SAMPLES = {"t": [{"filtered_resps": ["red"]}, {"filtered_resps": [""]}]}


def test_clean_run_has_no_problems():
    assert find_problems(OK_RESULTS, OK_SAMPLES, {"t": 2}, ["WARNING: something harmless"]) == []


def test_swallowed_generation_error_in_log_is_a_problem():
    problems = find_problems(OK_RESULTS, OK_SAMPLES, {"t": 2}, ["ERROR: Error shape mismatch in generating"])
    assert len(problems) == 1 and "swallowed" in problems[0]


def test_missing_results_file_count_mismatch_and_all_empty():
    assert find_problems(None, {}, {"t": 2}) == ["lmms-eval wrote no results file"]
    short = {**OK_RESULTS, "n-samples": {"t": {"effective": 1}}}
    assert any("evaluated 1 samples" in p for p in find_problems(short, OK_SAMPLES, {"t": 2}))
    empty = {"t": [{"filtered_resps": [""]}, {"filtered_resps": ["  "]}]}
    assert any("all 2 predictions are empty" in p for p in find_problems(OK_RESULTS, empty, {"t": 2}))
    assert any("missing from the results" in p for p in find_problems(OK_RESULTS, OK_SAMPLES, {"u": 1}))


def test_check_run_names_where_and_every_problem():
    with pytest.raises(EvaluationError, match=r"(?s)runs/x: .*no results file"):
        check_run(None, {}, {"t": 1}, where="runs/x")


@pytest.mark.slow
def test_real_swallowed_generate_error_fails(shapes_evaluator, tiny_llava_dir, tmp_path):
    """A checkpoint whose processor expands <image> to fewer tokens than the vision tower yields
    features: generate raises inside lmms-eval's llava_hf, which logs it and returns "" (exit 0).
    The guard must make that a failure, and leave no results behind."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llava_dir, broken)
    cfg_path = broken / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_additional_image_tokens"] = cfg.get("num_additional_image_tokens", 1) + 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(EvaluationError, match="in generating") as e:
        shapes_evaluator.evaluate(broken, tmp_path / "out")
    assert str(broken) in str(e.value)
    assert not (tmp_path / "out" / "results.json").exists()


def test_checkpoint_without_chat_template_is_refused(shapes_evaluator, tiny_llava_dir, tmp_path):
    assert has_chat_template(tiny_llava_dir)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_llava_dir, bare)
    for f in bare.glob("chat_template.*"):
        f.unlink()
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = bare / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            cfg.pop("chat_template", None)
            path.write_text(json.dumps(cfg))
    assert not has_chat_template(bare)
    with pytest.raises(EvaluationError, match="Vicuna"):
        shapes_evaluator.evaluate(bare, tmp_path / "out")
