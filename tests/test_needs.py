"""What a dataset lacks is said in one line and left out - never fed a constant (selfilter.needs)."""
import json

import numpy as np
import pandas as pd
import pytest

from selfilter import needs
from selfilter.data.source import SourceInfo, write_source
from stages import judge as judge_stage
from stages import select as select_stage
from stages import stage1 as stage1_stage

OWN_DATA = {"data": {"source": "llava", "annotations": "mine.json", "image_dir": "imgs"},
            "judge": {"backend": "annotation"},
            "stage1": {"settings": ["scores", "clip"]},
            "select": {"methods": ["self_filter_scores", "self_filter_clip", "random", "alpagasus", "full",
                                   "oracle_clean", "oracle_hard", "el2n"]}}


def test_planned_left_out_on_your_own_data():
    out = needs.planned_left_out(OWN_DATA)
    assert set(out) == {"judge", "stage1@scores", "self_filter_scores", "alpagasus", "oracle_clean", "oracle_hard"}
    assert "judge.backend: openai" in out["judge"] and "data.scenes" in out["judge"]
    assert "data.hidden_labels" in out["oracle_clean"] and "data.hidden_labels" in out["oracle_hard"]
    assert out["self_filter_scores"].startswith("it reads stage 1's scores setting")
    for why in out.values():
        assert "\n" not in needs.line("x", why)


def test_nothing_left_out_where_the_data_has_it():
    assert needs.planned_left_out({**OWN_DATA, "data": {"source": "shapes"}}) == {}
    openai = {**OWN_DATA, "judge": {"backend": "openai"}}
    assert set(needs.planned_left_out(openai)) == {"oracle_clean", "oracle_hard"}
    labelled = {**openai, "data": {**OWN_DATA["data"], "hidden_labels": "labels.jsonl"}}
    assert set(needs.planned_left_out(labelled)) == {"oracle_hard"}  # labels, but no scenes to size
    assert "data.scenes" in needs.planned_left_out(labelled)["oracle_hard"]
    assert needs.planned_left_out({**labelled, "data": {**labelled["data"], "scenes": "s.jsonl"}}) == {}


def _pool(tmp_path, scenes: bool, hidden: bool, n: int = 30):
    records = [{"uid": i, "id": f"r{i}", "image": f"{i}.png",
                "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                  {"from": "gpt", "value": f"thing {i}"}]} for i in range(n)]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "scenes.jsonl").write_text("")
    (tmp_path / "hidden.jsonl").write_text("")
    write_source(tmp_path, SourceInfo("llava", "a.json", "imgs", scenes, hidden, {"kind": "heldout"}))
    return records


def test_judge_stage_leaves_itself_out_and_the_readers_follow(tmp_path, capsys):
    records = _pool(tmp_path, scenes=False, hidden=False)
    (tmp_path / "params.yaml").write_text("judge:\n  backend: annotation\n"
                                          "select:\n  budgets: [0.2]\n  seeds: [0]\n")
    assert judge_stage.main(["--params", str(tmp_path / "params.yaml"), "--records", str(tmp_path / "records.jsonl"),
                             "--scenes", str(tmp_path / "scenes.jsonl"), "--source", str(tmp_path / "source.json"),
                             "--out", str(tmp_path / "judge"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "judge: left out - the annotation judge rates records against scene annotations" in out
    assert len(pd.read_parquet(tmp_path / "judge" / "ratings.parquet")) == 0  # no constant ratings
    assert "data.scenes" in json.loads((tmp_path / "judge" / "usage.json").read_text())["left_out"]

    # stage 1's scores setting: left out before loading any model (there is none here)
    assert stage1_stage.main(["--params", str(tmp_path / "params.yaml"), "--setting", "scores",
                              "--records", str(tmp_path / "records.jsonl"), "--image-dir", str(tmp_path),
                              "--model", str(tmp_path / "no-model"), "--features", str(tmp_path / "none"),
                              "--judge", str(tmp_path / "judge" / "ratings.parquet"),
                              "--out", str(tmp_path / "stage1" / "scores"), "--no-progress"]) == 0
    assert "judge ratings" in needs.read_left_out(tmp_path / "stage1" / "scores")
    assert not (tmp_path / "stage1" / "scores" / "difficulty.parquet").exists()

    np.save(tmp_path / "clip.npy", np.random.default_rng(0).normal(size=(len(records), 8)).astype(np.float32))
    common = ["--params", str(tmp_path / "params.yaml"), "--records", str(tmp_path / "records.jsonl"),
              "--features", str(tmp_path / "clip.npy"), "--stage1", str(tmp_path / "stage1"),
              "--judge", str(tmp_path / "judge" / "ratings.parquet"), "--hidden", str(tmp_path / "hidden.jsonl"),
              "--source", str(tmp_path / "source.json"), "--no-progress"]
    for method, fragment in [("alpagasus", "judge ratings"), ("self_filter_scores", "stage 1's scores"),
                             ("oracle_clean", "hidden imperfection labels"),
                             ("oracle_hard", "hidden imperfection labels")]:
        sel = tmp_path / "sel" / method
        assert select_stage.main([*common, "--method", method, "--out", str(sel)]) == 0
        assert fragment in needs.read_left_out(sel), method
        assert not list(sel.glob("b*_s*"))
    # a method that needs nothing missing still runs
    assert select_stage.main([*common, "--method", "random", "--out", str(tmp_path / "sel" / "random")]) == 0
    assert (tmp_path / "sel" / "random" / "b0.2_s0" / "subset.json").is_file()
    assert needs.read_left_out(tmp_path / "sel" / "random") is None


def test_a_judge_whose_replies_never_parse_fails_rather_than_rate_everything_the_same(tmp_path, monkeypatch, capsys):
    from selfilter import judge as judge_pkg

    records = _pool(tmp_path, scenes=True, hidden=False, n=5)

    class Junk:
        def respond(self, recs, scenes, progress=True):
            return ["I cannot rate this."] * len(recs)

        def usage_report(self):
            return {"requests": len(records), "cache_hits": 0, "failed": 0}

    monkeypatch.setattr(judge_stage, "build_backend", lambda cfg: Junk())
    (tmp_path / "scenes.jsonl").write_text("".join(json.dumps({"image": r["image"], "objects": []}) + "\n"
                                                   for r in records))
    (tmp_path / "params.yaml").write_text("judge:\n  backend: annotation\n")
    rc = judge_stage.main(["--params", str(tmp_path / "params.yaml"), "--records", str(tmp_path / "records.jsonl"),
                           "--scenes", str(tmp_path / "scenes.jsonl"), "--source", str(tmp_path / "source.json"),
                           "--out", str(tmp_path / "judge"), "--no-progress"])
    assert rc != 0
    assert "none of the 5 judge replies held a rating" in capsys.readouterr().err
    assert not (tmp_path / "judge" / "ratings.parquet").exists()
    assert judge_pkg  # imported for the monkeypatch target's package


def test_oracle_hard_without_scenes_is_left_out_by_the_select_stage(tmp_path):
    records = _pool(tmp_path, scenes=False, hidden=True)
    (tmp_path / "hidden.jsonl").write_text("".join(json.dumps({"id": r["id"], "kind": "clean"}) + "\n" for r in records))
    (tmp_path / "params.yaml").write_text("select:\n  budgets: [0.2]\n  seeds: [0]\n")
    sel = tmp_path / "sel" / "oracle_hard"
    assert select_stage.main(["--params", str(tmp_path / "params.yaml"), "--records", str(tmp_path / "records.jsonl"),
                              "--hidden", str(tmp_path / "hidden.jsonl"), "--scenes", str(tmp_path / "scenes.jsonl"),
                              "--source", str(tmp_path / "source.json"), "--method", "oracle_hard",
                              "--out", str(sel), "--no-progress"]) == 0
    assert "scene annotations" in needs.read_left_out(sel) and not list(sel.glob("b*_s*"))
    # the same labels with the clean control: it runs
    assert select_stage.main(["--params", str(tmp_path / "params.yaml"), "--records", str(tmp_path / "records.jsonl"),
                              "--hidden", str(tmp_path / "hidden.jsonl"), "--source", str(tmp_path / "source.json"),
                              "--method", "oracle_clean", "--out", str(tmp_path / "sel" / "oc"), "--no-progress"]) == 0
    assert (tmp_path / "sel" / "oc" / "b0.2_s0" / "subset.json").is_file()
