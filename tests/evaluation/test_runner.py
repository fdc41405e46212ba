"""Evaluating a method's checkpoints: discovery, parallel workers, the stage's outputs."""
import json
import shutil

import pytest

from selfilter.data.source import SourceInfo, write_source
from selfilter.evaluation.runner import Job, find_checkpoints, run_jobs


def _shapes_pool(tmp_path, bench_dir):
    """A pool folder whose source.json points at the shapes benchmark (what prepare writes)."""
    pool = tmp_path / "pool"
    write_source(pool, SourceInfo("shapes", "train.json", str(bench_dir.parent), True, True,
                                  {"kind": "shapes", "dir": str(bench_dir)}))
    return ["--pool", str(pool), "--image-dir", str(bench_dir.parent)]


class EchoEvaluator:
    """Stands in for LmmsEvaluator to test the process plumbing only (picklable, no lmms-eval)."""

    def evaluate(self, checkpoint, output_dir):
        import os

        return {"pid": float(os.getpid()), "len": float(len(str(checkpoint)))}


def test_find_checkpoints(tmp_path):
    for name in ["b0.15_s1", "b0.15_s0"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    assert [p.name for p in find_checkpoints(tmp_path)] == ["b0.15_s0", "b0.15_s1"]
    (tmp_path / "b0.3_s0").mkdir()
    with pytest.raises(FileNotFoundError, match="b0.3_s0.*no config.json"):
        find_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs folder not found"):
        find_checkpoints(tmp_path / "missing")


def test_run_jobs_in_two_processes_keeps_job_order(tmp_path):
    jobs = [Job(f"r{i}", tmp_path / ("x" * i), tmp_path / f"o{i}") for i in range(4)]
    out = run_jobs(jobs, EchoEvaluator, workers=2)
    assert list(out) == ["r0", "r1", "r2", "r3"]
    assert [m["len"] for m in out.values()] == [len(str(j.checkpoint)) for j in jobs]


@pytest.mark.slow
def test_evaluate_stage(bench_dir, tiny_llava_dir, tmp_path):
    from stages.evaluate import main

    runs = tmp_path / "runs" / "random"
    shutil.copytree(tiny_llava_dir, runs / "b0.15_s0")
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  tasks: [shapes_vqa, shapes_count]\n  limit: 2\n  workers: 1\n")
    out = tmp_path / "evals" / "random"
    args = ["--params", str(params), "--method", "random", "--runs", str(tmp_path / "runs"),
            *_shapes_pool(tmp_path, bench_dir), "--out", str(tmp_path / "evals")]
    assert main(args) == 0
    m = json.loads((out / "b0.15_s0" / "metrics.json").read_text())
    assert set(m) >= {"shapes_vqa/exact_match", "shapes_count/exact_match"}
    assert (out / "b0.15_s0" / "results.json").is_file()
    assert (out / "b0.15_s0" / "metrics.json.meta.json").is_file()
    assert json.loads((out / "summary.json").read_text())["runs"]["b0.15_s0"] == m
    stamp = (out / "b0.15_s0" / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0  # same checkpoint, same settings: not evaluated again
    assert (out / "b0.15_s0" / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_same_checkpoint_scores_bit_for_bit(bench_dir, tiny_llava_dir, tmp_path):
    """Evaluating one checkpoint twice (two workers, fresh outputs) gives identical metrics."""
    from stages.evaluate import main

    for name in ("b0.15_s0", "b0.15_s1"):
        shutil.copytree(tiny_llava_dir, tmp_path / "runs" / "random" / name)
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  tasks: [shapes_count, shapes_pope]\n  limit: 3\n  workers: 2\n")
    metrics = []
    for out in ("evals1", "evals2"):
        assert main(["--params", str(params), "--method", "random", "--runs", str(tmp_path / "runs"),
                     *_shapes_pool(tmp_path, bench_dir), "--out", str(tmp_path / out)]) == 0
        metrics.append([(tmp_path / out / "random" / n / "metrics.json").read_bytes() for n in ("b0.15_s0", "b0.15_s1")])
    assert metrics[0] == metrics[1] and metrics[0][0] == metrics[0][1]


def test_evaluate_stage_user_errors_are_one_line(tmp_path, capsys):
    from stages.evaluate import main

    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  tasks: []\n")
    assert main(["--params", str(params), "--method", "m", "--runs", str(tmp_path),
                 "--pool", str(tmp_path), "--image-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "evaluate.tasks" in err and "Traceback" not in err


def test_evaluate_stage_without_a_source_manifest_is_one_line(tmp_path, capsys):
    from stages.evaluate import main

    (tmp_path / "params.yaml").write_text("evaluate:\n  tasks: auto\n")
    assert main(["--params", str(tmp_path / "params.yaml"), "--method", "m", "--runs", str(tmp_path),
                 "--pool", str(tmp_path / "pool"), "--image-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "source.json" in err and "prepare" in err and "Traceback" not in err


class FailingEvaluator:
    def evaluate(self, checkpoint, output_dir):
        from selfilter.evaluation.guard import EvaluationError

        raise EvaluationError(f"{checkpoint}: all 3 predictions are empty")


def test_a_reference_job_records_the_guard_error_and_a_run_job_fails(tmp_path):
    from selfilter.evaluation.guard import EvaluationError

    out = run_jobs([Job("_base", tmp_path / "base", tmp_path / "o", reference=True)], FailingEvaluator)
    assert "all 3 predictions are empty" in out["_base"]["error"]
    with pytest.raises(EvaluationError):
        run_jobs([Job("m/b0.15_s0", tmp_path / "ck", tmp_path / "o2")], FailingEvaluator)


@pytest.mark.slow
def test_evaluate_only_scores_one_finished_checkpoint_beside_unfinished_ones(bench_dir, tiny_llava_dir, tmp_path,
                                                                            capsys):
    """A grid unit (`--only`): only that checkpoint, the same metrics as the whole stage, no
    summary written and nothing removed; `--plan` names finished checkpoints only (others may be
    training); an unfinished one is refused with one line naming it."""
    from stages.evaluate import main

    runs = tmp_path / "runs" / "random"
    shutil.copytree(tiny_llava_dir, runs / "b0.15_s0")
    (runs / "b0.15_s0" / "done.json").write_text("{}")
    (runs / "b0.15_s1").mkdir()  # still training on another worker: no config.json, no done.json
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  tasks: [shapes_count]\n  limit: 2\n  workers: 1\n")
    base = ["--params", str(params), "--method", "random", "--runs", str(tmp_path / "runs"),
            *_shapes_pool(tmp_path, bench_dir)]
    (tmp_path / "evals" / "random" / "b0.15_s9").mkdir(parents=True)  # a stale result the unit must not touch
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "evals"), "--plan"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == ["random/b0.15_s0"]
    assert main([*base, "--out", str(tmp_path / "evals"), "--only", "random/b0.15_s0"]) == 0
    unit = tmp_path / "evals" / "random"
    assert (unit / "b0.15_s0" / "metrics.json.meta.json").is_file() and (unit / "b0.15_s9").is_dir()
    assert not (unit / "summary.json").exists()
    assert main([*base, "--out", str(tmp_path / "evals"), "--only", "random/b0.15_s1"]) == 1
    assert "b0.15_s1: no finished checkpoint (done.json) for --only random/b0.15_s1" in capsys.readouterr().err
    shutil.rmtree(runs / "b0.15_s1")
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0
    assert ((tmp_path / "whole/random/b0.15_s0/metrics.json").read_bytes()
            == (unit / "b0.15_s0/metrics.json").read_bytes())
