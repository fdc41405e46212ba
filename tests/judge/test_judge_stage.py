from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from stages import judge as stage

SECRET = "sk-very-secret-0123456789"


def _write(tmp_path, records, scenes=None):
    rec = tmp_path / "records.jsonl"
    rec.write_text("".join(json.dumps(r) + "\n" for r in records))
    sc = None
    if scenes is not None:
        sc = tmp_path / "scenes.jsonl"
        sc.write_text("".join(json.dumps(s) + "\n" for s in scenes))
    return rec, sc


def _records(n):
    return [{"uid": i, "id": f"s{i}", "image": f"{i}.png",
             "conversations": [{"from": "human", "value": "<image>\nWhat color is the circle?"},
                               {"from": "gpt", "value": f"RATE={i % 10} red"}]} for i in range(n)]


def test_openai_stage_never_writes_the_key(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    params = tmp_path / "params.yaml"
    params.write_text(f"judge:\n  backend: openai\n  cache_dir: {tmp_path / 'cache'}\n"
                      f"  openai:\n    base_url: {server.base_url}\n    model: fake\n"
                      "    api_key_env: JUDGE_TEST_KEY\n    concurrency: 2\n")
    rec, _ = _write(tmp_path, _records(6))
    caplog.set_level(logging.DEBUG)
    args = ["--params", str(params), "--records", str(rec), "--out", str(tmp_path / "judge"), "--no-progress"]
    assert stage.main(args) == 0
    table = pd.read_parquet(tmp_path / "judge/ratings.parquet")
    assert list(table.columns) == ["uid", "rating", "parsed"] and list(table["rating"]) == [0, 1, 2, 3, 4, 5]
    usage = json.loads((tmp_path / "judge/usage.json").read_text())
    assert (usage["requests"], usage["cache_hits"], usage["prompt_tokens"]) == (6, 0, 66)
    assert server.auth[0] == f"Bearer {SECRET}"  # the key was used ...

    assert stage.main(args) == 0  # ... a rerun calls nothing ...
    assert len(server.requests) == 6
    assert json.loads((tmp_path / "judge/usage.json").read_text())["cache_hits"] == 6

    for path in Path(tmp_path).rglob("*"):  # ... and it is written nowhere
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


def test_missing_key_and_failed_requests_are_one_line_errors(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text(f"judge:\n  backend: openai\n  cache_dir: {tmp_path / 'cache'}\n"
                      f"  openai:\n    base_url: {server.base_url}\n    api_key_env: JUDGE_TEST_KEY\n"
                      "    max_retries: 0\n")
    rec, _ = _write(tmp_path, _records(2))
    args = ["--params", str(params), "--records", str(rec), "--out", str(tmp_path / "judge"), "--no-progress"]
    assert stage.main(args) == 1
    assert "JUDGE_TEST_KEY is not set" in capsys.readouterr().err

    monkeypatch.setenv("JUDGE_TEST_KEY", "k")
    server.script = [(400, {}, 0.0)]
    assert stage.main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 2 prompts failed" in err and "Traceback" not in err
    assert not (tmp_path / "judge/ratings.parquet").exists()


def test_annotation_stage(tmp_path):
    records = _records(3)
    records[1]["conversations"][1]["value"] = "green"
    scenes = [{"image": f"{i}.png", "objects": [{"shape": "circle", "color": "red"}]} for i in range(3)]
    rec, sc = _write(tmp_path, records, scenes)
    params = tmp_path / "params.yaml"
    params.write_text("judge:\n  backend: annotation\n")
    out = tmp_path / "judge"
    assert stage.main(["--params", str(params), "--records", str(rec), "--scenes", str(sc), "--out", str(out),
                       "--no-progress"]) == 0
    table = pd.read_parquet(out / "ratings.parquet")
    assert table["rating"][1] < table["rating"][0] == table["rating"][2]
    assert json.loads((out / "ratings.parquet.meta.json").read_text())["params"]["backend"] == "annotation"
