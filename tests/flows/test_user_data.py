"""Your own data, end to end: the smoke flow on a generated LLaVA-format dataset that is not the
embedded shapes data (64 px circles, stripes, digits, squares; multi-turn; text-only records;
planted bad records), offline, with only the three keys the README names.

A fresh clone of HEAD runs ``python -m flows.pipeline --profile smoke -S data.source=llava
-S data.annotations=... -S data.image_dir=...`` (ephemeral Prefect, DVC, MLflow, lmms-eval - all
real). Then: every input record kept or rejected with its reason, the benchmark is the held-out
split, subsets hold only the user's selectable records, the parts that need what the data lacks
are left out with their reason in the report, and editing the annotations file makes
``dvc status`` report the prepare stage changed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from userdata import make_llava_dataset

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests" / "reliability"))
    from smoke_checkout import stage_env

    root = tmp_path_factory.mktemp("user-data")
    data = root / "mydata"
    expected = make_llava_dataset(data, n=240, seed=1)
    clone = root / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = stage_env(root)
    cmd = [str(BIN / "python"), "-m", "flows.pipeline", "--profile", "smoke",
           "-S", "data.source=llava", "-S", f"data.annotations={data / 'annotations.json'}",
           "-S", f"data.image_dir={data / 'images'}"]
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
    (root / "console.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return clone, data, expected, proc.stdout + proc.stderr, env


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_record_is_kept_or_rejected_with_its_reason(user_run):
    clone, data, expected, _, _ = user_run
    pool = clone / "data" / "pool"
    summary = json.loads((pool / "summary.json").read_text())
    n = expected["records"]
    assert summary["input"] == n and summary["kept"] + summary["rejected"] == n
    assert summary["by_reason"] == expected["rejected"]  # empty answers rejected as answer_empty
    assert summary["duplicate_ids"]["ids"] == expected["duplicate_ids"]  # reported, and kept
    assert summary["kept_text_only"] == expected["text_only"]
    kept = _jsonl(pool / "records.jsonl") + _jsonl(pool / "heldout.jsonl")
    assert len(kept) == summary["kept"] == expected["kept"]
    assert {r["uid"] for r in kept} | {r["index"] for r in _jsonl(pool / "rejected.jsonl")} == set(range(n))


def test_the_benchmark_is_the_held_out_split_and_never_selected(user_run):
    clone, data, _, _, _ = user_run
    pool = clone / "data" / "pool"
    source = json.loads((pool / "source.json").read_text())
    assert source["source"] == "llava" and source["benchmark"]["kind"] == "heldout"
    assert source["scenes"] is False and source["hidden_labels"] is False
    heldout = {r["uid"] for r in _jsonl(pool / "heldout.jsonl")}
    selectable = {r["uid"] for r in _jsonl(pool / "records.jsonl")}
    assert heldout and not heldout & selectable
    bench = json.loads((clone / "evals" / "benchmark.json").read_text())
    assert bench["name"] == "heldout" and bench["tasks"] == ["selfilter_heldout_ll", "selfilter_heldout_short"]
    user_ids = {r.get("id") for r in json.loads((data / "annotations.json").read_text()) if isinstance(r, dict)}
    subsets = list((clone / "selections").glob("*/b*_s*/subset.json"))
    assert subsets
    for path in subsets:
        rows = json.loads(path.read_text())
        assert {r["uid"] for r in rows} <= selectable, path  # only selectable records, never held-out ones
        assert {r.get("id") for r in rows} <= user_ids, path
    # every evaluated run scored the held-out tasks (no shapes task anywhere)
    metrics = json.loads(next((clone / "evals" / "random").glob("b*_s*/metrics.json")).read_text())
    assert any(k.startswith("selfilter_heldout_ll/") for k in metrics)
    assert not any(k.startswith("shapes_") for k in metrics)


def test_what_the_data_lacks_is_left_out_and_said(user_run):
    clone, _, _, console, _ = user_run
    for method, fragment in [("alpagasus", "judge ratings"), ("self_filter_scores", "judge ratings"),
                             ("oracle_clean", "hidden imperfection labels")]:
        why = json.loads((clone / "selections" / method / "left_out.json").read_text())["reason"]
        assert fragment in why and "\n" not in why
        assert f"{method}: left out - " in console  # said before any work, by the flow
        assert not (clone / "runs" / method).exists()
    assert "data.scenes" in json.loads((clone / "judge" / "usage.json").read_text())["left_out"]
    report = (clone / "reports" / "comparison.md").read_text()
    for method in ("alpagasus", "self_filter_scores", "oracle_clean"):
        assert method in report
    assert "left out" in report.lower()


def test_editing_the_annotations_reruns_prepare(user_run):
    clone, data, _, _, env = user_run
    status = subprocess.run([str(BIN / "dvc"), "status", "prepare"], cwd=clone, env=env, capture_output=True, text=True)
    assert "changed" not in status.stdout, status.stdout
    ann = data / "annotations.json"
    records = json.loads(ann.read_text())
    records.append({**[r for r in records if isinstance(r, dict) and "image" in r][0], "id": "added-by-the-test"})
    ann.write_text(json.dumps(records))
    status = subprocess.run([str(BIN / "dvc"), "status", "prepare"], cwd=clone, env=env, capture_output=True, text=True)
    assert "prepare" in status.stdout and "modified" in status.stdout and "annotations.json" in status.stdout, status.stdout
