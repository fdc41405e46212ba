"""Evaluation fixtures: a small real shapes benchmark and one lmms-eval evaluator per session."""
from __future__ import annotations

import pytest

TASKS = ["shapes_vqa", "shapes_pope", "shapes_count", "shapes_desc"]


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory):
    """data/shapes/bench as the real generator writes it, at a handful of questions per task."""
    from selfilter.data.shapes import build_files, write_tree

    root = tmp_path_factory.mktemp("shapes")
    files = build_files(0, pool_size=40, bench={"vqa": 8, "pope_per_split": 2, "count": 3, "desc": 3})
    write_tree(root, {k: v for k, v in files.items() if k.startswith("bench/")})
    return root / "bench"


@pytest.fixture(scope="session")
def bench_parquet(bench_dir, tmp_path_factory):
    from selfilter.evaluation.bench import build_bench_datasets

    return build_bench_datasets(bench_dir, tmp_path_factory.mktemp("bench_parquet"), TASKS + ["pope"])


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """As the evaluate stage's workers run: generation of a tiny model is Python-bound, and two
    intra-op threads on a busy 2-core machine mostly wait for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shapes_evaluator(bench_parquet, tmp_path_factory):
    """The four shapes tasks loaded once (as the stage does), through lmms-eval's own loader."""
    from selfilter.evaluation.lmms import LmmsEvaluator

    return LmmsEvaluator(TASKS, "evaluation/tasks", data_files=bench_parquet, limit=4,
                         cache_dir=tmp_path_factory.mktemp("hf_datasets"))
