"""stages.select end to end on fake upstream outputs with the documented shapes."""
import json

import numpy as np
import pandas as pd
import pytest

from stages import select as stage

N = 40


@pytest.fixture()
def fake(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"id": f"s{i:03d}", "image": f"images/{i}.png", "uid": i, "extra": {"é": [i]},
                "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                  {"from": "gpt", "value": f"Answer {i} ✓"}]} for i in range(N)]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                            encoding="utf-8")
    np.save(tmp_path / "clip.npy", rng.normal(size=(N, 8)).astype(np.float32))
    order = rng.permutation(N)  # tables are joined by uid, not by row order
    for setting in ("scores", "clip"):
        (tmp_path / "stage1" / setting).mkdir(parents=True)
        pd.DataFrame({"uid": order, "difficulty": rng.normal(size=N)}).to_parquet(
            tmp_path / "stage1" / setting / "difficulty.parquet")
    pd.DataFrame({"uid": order, "rating": rng.integers(0, 11, N).astype(float), "parsed": True}).to_parquet(
        tmp_path / "ratings.parquet")
    pd.DataFrame({"uid": order, "el2n": rng.random(N)}).to_parquet(tmp_path / "el2n.parquet")
    (tmp_path / "imperfections.jsonl").write_text("".join(
        json.dumps({"id": f"s{i:03d}", "kind": "clean" if i % 3 else "wrong_answer"}) + "\n" for i in range(N)))
    (tmp_path / "scenes.jsonl").write_text("".join(  # scene i has 1 + i % 6 objects
        json.dumps({"image": f"images/{i}.png", "objects": [{"shape": "circle"}] * (1 + i % 6)}) + "\n"
        for i in reversed(range(N))))  # joined by image, not by row order
    (tmp_path / "params.yaml").write_text("select:\n  budgets: [0.25, 0.5]\n  seeds: [0, 1]\n  n_clusters: 4\n")
    return tmp_path, records


def _run(tmp_path, method, **paths):
    argv = ["--params", str(tmp_path / "params.yaml"), "--method", method,
            "--records", str(tmp_path / "records.jsonl"), "--out", str(tmp_path / "sel" / method),
            "--no-progress"]
    for k, v in paths.items():
        argv += [f"--{k}", str(v)]
    return stage.main(argv)


ALL = lambda t: {"features": t / "clip.npy", "stage1": t / "stage1", "judge": t / "ratings.parquet",
                 "el2n": t / "el2n.parquet", "hidden": t / "imperfections.jsonl", "scenes": t / "scenes.jsonl"}


@pytest.mark.parametrize("method", ["self_filter_clip", "alpagasus", "random", "oracle_clean", "oracle_hard"])
def test_outputs_for_every_budget_and_seed(fake, method):
    tmp_path, records = fake
    assert _run(tmp_path, method, **ALL(tmp_path)) == 0
    for budget, n in ((0.25, 10), (0.5, 20)):
        for seed in (0, 1):
            folder = tmp_path / "sel" / method / f"b{budget}_s{seed}"
            subset = json.loads((folder / "subset.json").read_text(encoding="utf-8"))
            trace = pd.read_parquet(folder / "trace.parquet")
            meta = json.loads((folder / "meta.json").read_text())
            assert len(subset) == n and trace["rank"].tolist() == list(range(n))
            assert [r["uid"] for r in subset] == trace["uid"].tolist()
            assert all(r == records[r["uid"]] for r in subset)  # the input records, untouched
            assert meta["method"] == method and meta["n_selected"] == n and meta["n_pool"] == N
            assert meta["budget"] == budget and meta["seed"] == seed and meta["wall_seconds"] >= 0
            assert meta["control"] == method.startswith("oracle_")
    if method.startswith("oracle_"):
        assert all(int(r["id"][1:]) % 3 for r in subset)  # only clean ones while there are enough
    if method == "oracle_hard":  # b0.5: the 12 clean 6- and 5-object scenes, the 7 3-object ones
        sizes = [1 + r["uid"] % 6 for r in subset]  # (no 4-object scene is clean), one 2-object one
        assert sorted(sizes[:12]) == [5] * 6 + [6] * 6 and sizes[12:] == [3] * 7 + [2]


@pytest.mark.parametrize("method", ["self_filter_scores", "self_filter_clip", "random", "el2n", "alpagasus",
                                    "prototypicality", "oracle_clean"])
def test_same_seed_reproduces_every_selection_bit_for_bit(fake, method):
    """Same inputs and seeds, run twice: subset.json and trace.parquet are the same bytes."""
    tmp_path, _ = fake
    assert _run(tmp_path, method, **ALL(tmp_path)) == 0
    first = {p.relative_to(tmp_path / "sel"): p.read_bytes() for p in sorted((tmp_path / "sel").rglob("*"))
             if p.name in ("subset.json", "trace.parquet")}
    (tmp_path / "sel").rename(tmp_path / "sel_first")
    assert _run(tmp_path, method, **ALL(tmp_path)) == 0
    again = {p.relative_to(tmp_path / "sel"): p.read_bytes() for p in sorted((tmp_path / "sel").rglob("*"))
             if p.name in ("subset.json", "trace.parquet")}
    assert len(first) == 8 and first == again


def test_full_only_at_budget_one(fake):
    tmp_path, _records = fake
    assert _run(tmp_path, "full") == 0
    assert sorted(p.name for p in (tmp_path / "sel" / "full").iterdir()) == ["b1.0_s0", "b1.0_s1"]


def test_self_filter_difficulty_is_joined_by_uid(fake):
    tmp_path, _ = fake
    assert _run(tmp_path, "self_filter_nodiv", stage1=tmp_path / "stage1") == 0
    diff = pd.read_parquet(tmp_path / "stage1" / "clip" / "difficulty.parquet")
    hardest = int(diff.sort_values("difficulty", ascending=False)["uid"].iloc[0])
    trace = pd.read_parquet(tmp_path / "sel" / "self_filter_nodiv" / "b0.25_s0" / "trace.parquet")
    assert trace["uid"].iloc[0] == hardest


def test_oracle_hard_names_the_record_without_a_scene(fake, capsys):
    tmp_path, _ = fake
    lines = (tmp_path / "scenes.jsonl").read_text().splitlines()
    (tmp_path / "scenes.jsonl").write_text("\n".join(line for line in lines if '"images/7.png"' not in line) + "\n")
    assert _run(tmp_path, "oracle_hard", **ALL(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "scenes.jsonl" in err and "uid=7" in err


def test_user_errors_are_one_line(fake, capsys):
    tmp_path, _ = fake
    assert _run(tmp_path, "nope") == 1
    assert "valid: self_filter_scores" in capsys.readouterr().err
    assert _run(tmp_path, "el2n") == 1
    assert "needs --el2n" in capsys.readouterr().err
    pd.DataFrame({"uid": [0, 1], "el2n": [0.1, 0.2]}).to_parquet(tmp_path / "short.parquet")
    assert _run(tmp_path, "el2n", el2n=tmp_path / "short.parquet") == 1
    assert "uid=2" in capsys.readouterr().err


def test_field_methods_read_their_inputs_and_record_the_scoring_cost(fake):
    tmp_path, records = fake
    rng = np.random.default_rng(1)
    order = rng.permutation(N)
    pd.DataFrame({"uid": order, "clip_score": rng.random(N)}).to_parquet(tmp_path / "scores.parquet")
    (tmp_path / "ifd").mkdir()
    ifd = rng.random(N) * 1.4
    ifd[5] = np.nan  # undefined IFD is allowed (and never preferred)
    pd.DataFrame({"uid": np.arange(N), "ifd": ifd}).to_parquet(tmp_path / "ifd" / "scores.parquet")
    np.save(tmp_path / "ifd" / "activations.npy", rng.normal(size=(N, 6)).astype(np.float32))
    (tmp_path / "ifd" / "metrics.json").write_text(json.dumps({"wall_s": 12.5, "model_passes": 2}))
    (tmp_path / "less").mkdir()
    pd.DataFrame({"uid": order, "less": rng.normal(size=N)}).to_parquet(tmp_path / "less" / "scores.parquet")
    paths = {"features": tmp_path / "clip.npy", "clip-scores": tmp_path / "scores.parquet",
             "ifd": tmp_path / "ifd" / "scores.parquet", "activations": tmp_path / "ifd" / "activations.npy",
             "less": tmp_path / "less" / "scores.parquet"}
    for method in ("clip_score", "semdedup", "ifd", "coincide", "less"):
        assert _run(tmp_path, method, **paths) == 0, method
        meta = json.loads((tmp_path / "sel" / method / "b0.25_s0" / "meta.json").read_text())
        assert meta["n_selected"] == 10
        if method in ("ifd", "coincide"):
            assert meta["scoring"]["wall_s"] == 12.5 and meta["scoring"]["model_passes"] == 2
        else:
            assert meta["scoring"] is None  # no metrics.json beside less here; feature-only methods have none
    trace = pd.read_parquet(tmp_path / "sel" / "ifd" / "b0.25_s0" / "trace.parquet")
    assert (trace["score"] < 1).all() and 5 not in trace["uid"].tolist()
    assert _run(tmp_path, "clip_score", features=tmp_path / "clip.npy") == 1  # --clip-scores missing


def test_select_params_splits_the_section_so_a_key_reaches_only_its_readers(fake):
    """stages.select_params writes one file per method; changing gamma changes only the files of
    the methods that read it (so DVC reselects only those), and select checks its file."""
    from stages import select_params

    tmp_path, _ = fake
    params = tmp_path / "params.yaml"
    params.write_text("select:\n  methods: [self_filter_clip, random, full]\n  budgets: [0.25]\n  seeds: [0, 1]\n")
    out = tmp_path / "sp"
    (out).mkdir()
    (out / "el2n.json").write_text("{}")  # a method no longer listed: removed
    assert select_params.main(["--params", str(params), "--out", str(out)]) == 0
    before = {p.name: p.read_text() for p in sorted(out.iterdir())}
    assert sorted(before) == ["full.json", "random.json", "self_filter_clip.json"]
    assert json.loads(before["random.json"]) == {"budgets": [0.25], "seeds": [0, 1], "options": {}}
    assert json.loads(before["full.json"])["budgets"] == [1.0]
    params.write_text(params.read_text() + "  gamma: 0.5\n")
    assert select_params.main(["--params", str(params), "--out", str(out)]) == 0
    after = {p.name: p.read_text() for p in sorted(out.iterdir())}
    assert [n for n in after if after[n] != before[n]] == ["self_filter_clip.json"]
    assert json.loads(after["self_filter_clip.json"])["options"]["gamma"] == 0.5
    # select records the method's own params, and refuses a file that says otherwise
    assert _run(tmp_path, "random", **{"method-params": out / "random.json"}) == 0
    meta = json.loads((tmp_path / "sel" / "random" / "b0.25_s1" / "meta.json").read_text())
    assert meta["params"] == json.loads(after["random.json"])
    stale = tmp_path / "stale.json"
    stale.write_text(before["self_filter_clip.json"])
    assert _run(tmp_path, "self_filter_clip", features=tmp_path / "clip.npy", stage1=tmp_path / "stage1",
                **{"method-params": stale}) == 1


def test_meta_records_how_stage_2_ran(fake):
    tmp_path, _ = fake
    assert _run(tmp_path, "self_filter_clip", features=tmp_path / "clip.npy", stage1=tmp_path / "stage1") == 0
    stats = json.loads((tmp_path / "sel" / "self_filter_clip" / "b0.25_s0" / "meta.json").read_text())["stats"]
    assert stats["backend"] in ("dense", "clustered") and stats["precision"] in ("bfloat16", "float32")
    assert stats["lists"] >= 10 and "why" in stats
