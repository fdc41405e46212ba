"""Real lmms-eval runs on a tiny random LLaVA: the shipped shapes tasks, lmms-eval's own
``pope`` task on local data, result flattening, and the evaluate stage end to end."""
import json

import pytest

from selfilter.evaluation.lmms import LmmsEvaluator, flatten_metrics, task_config


def test_flatten_metrics_drops_stderr_alias_and_filter_none():
    results = {"results": {"t": {"alias": "t", "exact_match,none": 0.5, "exact_match_stderr,none": "N/A",
                                 "exact_match_stderr_clt,none": 0.1, "f1,strict": 0.25,
                                 "qtype_accuracy,none": {"color": 1.0, "size": 0.0}}}}
    assert flatten_metrics(results) == {"t/exact_match": 0.5, "t/f1@strict": 0.25,
                                        "t/acc_color": 1.0, "t/acc_size": 0.0}


def test_task_config_overrides_only_when_local_data():
    assert task_config("mme") == "mme"
    cfg = task_config("pope", "x.parquet")
    assert cfg["task"] == "pope" and cfg["dataset_path"] == "parquet"
    assert cfg["dataset_kwargs"]["data_files"]["test"].endswith("x.parquet")


@pytest.mark.slow
def test_shapes_tasks_end_to_end(shapes_evaluator, tiny_llava_dir, tmp_path):
    metrics = shapes_evaluator.evaluate(tiny_llava_dir, tmp_path)
    for key in ["shapes_vqa/exact_match", "shapes_pope/accuracy", "shapes_pope/f1_random",
                "shapes_pope/yes_ratio", "shapes_count/exact_match", "shapes_desc/chair_i",
                "shapes_desc/object_f1"]:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert any(k.startswith("shapes_vqa/acc_") for k in metrics)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n-samples"]["shapes_vqa"]["effective"] == 4  # limit=4
    assert " at 0x" not in (tmp_path / "results.json").read_text()  # the same file for the same checkpoint
    assert flatten_metrics(results) == metrics
    # limit=4; the fixture bench has 8 vqa, 6 pope, 3 count, 3 desc questions
    assert shapes_evaluator.expected_counts == {"shapes_vqa": 4, "shapes_pope": 4, "shapes_count": 3, "shapes_desc": 3}
    for task, n in shapes_evaluator.expected_counts.items():
        assert len((tmp_path / f"samples_{task}.jsonl").read_text().splitlines()) == n


@pytest.mark.slow
def test_lmms_eval_builtin_pope_task_on_local_data(bench_parquet, tiny_llava_dir, tmp_path):
    """lmms-eval's own `pope` task (its YAML, utils and metrics, unchanged) with its hub dataset
    replaced by our POPE-style split in lmms-lab/POPE's columns: a task this project does not ship."""
    ev = LmmsEvaluator(["pope"], include_path=None, data_files={"pope": bench_parquet["pope"]},
                       limit=3, cache_dir=tmp_path / "hf")
    metrics = ev.evaluate(tiny_llava_dir, tmp_path / "out")
    assert set(metrics) >= {"pope/pope_accuracy", "pope/pope_f1_score", "pope/pope_yes_ratio"}
    cfg = json.loads((tmp_path / "out" / "results.json").read_text())["configs"]["pope"]
    assert cfg["dataset_path"] == "parquet" and "pope_process_results" in json.dumps(cfg)


def test_unknown_task_lists_where_it_looked(tmp_path):
    with pytest.raises(ValueError, match="unknown lmms-eval task"):
        LmmsEvaluator(["no_such_task_xyz"], include_path=str(tmp_path))


def test_bench_parquet_embeds_images_and_keeps_fields(bench_parquet, bench_dir, tmp_path, monkeypatch):
    import datasets

    monkeypatch.chdir(tmp_path)  # images must not be looked up relative to the working directory
    ds = datasets.load_dataset("parquet", data_files={"test": str(bench_parquet["shapes_vqa"])},
                               cache_dir=str(tmp_path / "hf"))["test"]
    rows = [json.loads(line) for line in (bench_dir / "vqa.jsonl").read_text().splitlines()]
    assert len(ds) == len(rows) and ds[0]["qtype"] == rows[0]["qtype"] and ds[0]["answer"] == rows[0]["answer"]
    assert ds[0]["image"].size == (32, 32)
    pope = datasets.load_dataset("parquet", data_files={"test": str(bench_parquet["pope"])},
                                 cache_dir=str(tmp_path / "hf"))["test"]
    assert set(pope.column_names) == {"question_id", "question", "answer", "image_source", "category", "image"}
