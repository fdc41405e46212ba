"""Ingest: every reject reason, every must-keep case, round trip, CLI exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from selfilter.cli import main as cli_main
from selfilter.data.ingest import (
    REASONS,
    AnnotationsError,
    ingest_records,
    read_annotations,
    run_ingest,
)
from selfilter.data.records import load_image
from selfilter.io import read_jsonl

CONV = [{"from": "human", "value": "<image>\nWhat color is the square?"}, {"from": "gpt", "value": "red"}]


def rec(image: str | None = "ok.png", **kw):
    r = {"id": kw.pop("id", "a"), "conversations": kw.pop("conversations", CONV), **kw}
    if image is not None:
        r["image"] = image
    return r


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / "ok.png")
    Image.new("RGB", (8, 6), (0, 255, 0)).save(d / "photo.jpg", quality=90)
    Image.new("L", (8, 8), 128).save(d / "gray.png")
    Image.new("P", (8, 8), 3).save(d / "palette.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    (d / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(d / "sub" / "nested.png")
    big = Image.new("RGB", (64, 64), (1, 2, 3))
    big.save(d / "big.png")
    full = (d / "big.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    Image.effect_noise((64, 64), 50).convert("RGB").save(d / "noise.jpg", quality=95)
    noise = (d / "noise.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(noise[: len(noise) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image\n")
    (d / "folder.png").mkdir()
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    os.symlink(outside, d / "escape.png")
    os.symlink(d / "ok.png", d / "inside_link.png")
    os.symlink(d / "nothing.png", d / "dangling.png")
    return d


def reason_of(record, image_dir, **kw) -> str | None:
    res = ingest_records([record], image_dir, progress=False, **kw)
    return res.rejected[0]["reason"] if res.rejected else None


@pytest.mark.parametrize("record, reason", [
    ("just a string", "not_an_object"),
    ([1, 2], "not_an_object"),
    (None, "not_an_object"),
    ({"id": "x", "image": "ok.png"}, "conversations_missing"),
    (rec(conversations="USER: hi"), "conversations_not_list"),
    (rec(conversations=[]), "conversations_empty"),
    (rec(conversations=["hi", "there"]), "turn_not_object"),
    (rec(conversations=[{"from": "human"}]), "turn_not_object"),
    (rec(conversations=[{"from": "user", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]), "unknown_role"),
    (rec(conversations=[{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": 3}]), "value_not_string"),
    (rec(conversations=[{"from": "human", "value": None}, {"from": "gpt", "value": "x"}]), "value_not_string"),
    (rec(conversations=[{"from": "human", "value": "<image>\nhi"}]), "no_answer_turn"),
    (rec(conversations=[{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": ""}]), "answer_empty"),
    (rec(conversations=[{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "a"},
                        {"from": "human", "value": "and?"}, {"from": "gpt", "value": " \n\t "}]), "answer_empty"),
    (rec(conversations=[{"from": "human", "value": "<image>\n<image>\nhi"}, {"from": "gpt", "value": "x"}]),
     "image_placeholder_multiple"),
    (rec(image=""), "image_path_invalid"),
    (rec(image=["a.png", "b.png"]), "image_path_invalid"),
    (rec(image=None) | {"image": None}, "image_path_invalid"),
    (rec(image="/etc/passwd"), "image_path_absolute"),
    (rec(image="C:\\images\\ok.png"), "image_path_absolute"),
    (rec(image="../outside.png"), "image_path_escapes"),
    (rec(image="sub/../../outside.png"), "image_path_escapes"),
    (rec(image="escape.png"), "image_symlink_outside"),
    (rec(image="missing.png"), "image_missing"),
    (rec(image="dangling.png"), "image_missing"),
    (rec(image="folder.png"), "image_not_file"),
    (rec(image="empty.png"), "image_empty"),
    (rec(image="text.png"), "image_unreadable"),
    (rec(image="truncated.png"), "image_truncated"),
    (rec(image="truncated.jpg"), "image_truncated"),
])
def test_rejects_with_specific_reason(record, reason, image_dir):
    assert reason in REASONS
    assert reason_of(record, image_dir) == reason


def test_every_reason_code_is_exercised():
    # keeps the table above and REASONS in sync: a new code needs a test case
    src = Path(__file__).read_text()
    assert [r for r in REASONS if f'"{r}"' not in src] == []


def test_decompression_bomb_by_limit(image_dir):
    # big.png is 64x64 = 4096 px: over a lowered limit it is a bomb, under it it is fine
    assert reason_of(rec(image="big.png"), image_dir, max_pixels=1000) == "image_too_large"
    assert reason_of(rec(image="big.png"), image_dir, max_pixels=10_000) is None


def test_decompression_bomb_by_header(image_dir):
    # A PNG whose header claims 100000 x 100000 pixels (10 G): rejected before any decoding.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    (image_dir / "bomb.png").write_bytes(data)
    pil_default = Image.MAX_IMAGE_PIXELS
    res = ingest_records([rec(image="bomb.png")], image_dir, progress=False)
    assert res.rejected[0]["reason"] == "image_too_large"
    assert "bomb.png" in res.rejected[0]["detail"]
    assert Image.MAX_IMAGE_PIXELS == pil_default  # the PIL global is restored


@pytest.mark.parametrize("record", [
    rec(image="ok.png"),
    rec(image="photo.jpg"),
    rec(image="gray.png"),
    rec(image="palette.png"),
    rec(image="cmyk.jpg"),
    rec(image="sub/nested.png"),
    rec(image="./ok.png"),
    rec(image="inside_link.png"),  # a symlink that stays inside the folder
    rec(image=None, conversations=[{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]),
    {"image": "ok.png", "conversations": CONV},  # no id
    rec(id=None),
    rec(id=17),
    rec(conversations=[{"from": "human", "value": "<image>\nQuelle couleur ? 色は？ 🟥"},
                       {"from": "gpt", "value": "Rouge – 赤"}]),
    rec(conversations=[{"from": "human", "value": "<image>\nq0"}]
        + [{"from": r, "value": f"{r} {i} " * 50} for i in range(200) for r in ("gpt", "human")][:-1]),
    # documented choice: no <image> in an image record is kept (the encoder inserts it)
    rec(conversations=[{"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "a square"}]),
    rec(conversations=[{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "<image>\nq"},
                       {"from": "gpt", "value": "a"}]),
    rec(conversations=[{"from": "human", "value": ""}, {"from": "gpt", "value": "a"}]),  # an empty question is kept
])
def test_keeps(record, image_dir):
    res = ingest_records([record], image_dir, progress=False)
    assert res.rejected == [], res.rejected
    assert res.kept == [{**record, "uid": 0}]


def test_kept_images_load_as_rgb(image_dir):
    for name in ("gray.png", "palette.png", "cmyk.jpg", "photo.jpg"):
        im = load_image(image_dir, name)
        assert im.mode == "RGB"
    with Image.open(image_dir / "cmyk.jpg") as im:
        assert im.mode == "CMYK"  # untouched on disk


def test_duplicate_ids_are_kept_with_distinct_uids(image_dir):
    res = ingest_records([rec(id="dup"), rec(id="dup"), rec(id="dup")], image_dir, progress=False)
    assert [r["uid"] for r in res.kept] == [0, 1, 2]


def test_duplicate_ids_are_reported(image_dir):
    records = [rec(id="a"), rec(id="b"), rec(id="a"), rec(id="c"), rec(id="c"), rec(id="c"), rec(id="d")]
    dup = ingest_records(records, image_dir, progress=False).summary()["duplicate_ids"]
    assert dup == {"ids": 2, "records": 5, "examples": ["a", "c"]}
    assert ingest_records([rec(id="x")], image_dir, progress=False).summary()["duplicate_ids"]["ids"] == 0


def test_round_trip_and_accounting(tmp_path, image_dir):
    records = [
        rec(id="k0", extra={"nested": [1, 2]}, source="coco"),
        rec(id="r1", image="missing.png"),
        42,
        rec(id="k3", image=None, conversations=[{"from": "human", "value": "Hi ü"}, {"from": "gpt", "value": "Hi"}]),
        rec(id="r4", image="../x.png"),
        {"uid": 999, "id": "k5", "image": "gray.png", "conversations": CONV, "zzz": None},
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "pool"
    summary = run_ingest(ann, image_dir, out, progress=False)
    kept = read_jsonl(out / "records.jsonl")
    rejected = read_jsonl(out / "rejected.jsonl")
    assert len(kept) + len(rejected) == len(records) == summary["input"]
    for row in kept:
        original = records[row["uid"]]
        assert {k: v for k, v in row.items() if k != "uid"} == {k: v for k, v in original.items() if k != "uid"}
    assert [r["uid"] for r in kept] == [0, 3, 5]  # uid = input position, also over an input 'uid' key
    assert list(kept[0]) == ["id", "conversations", "extra", "source", "image", "uid"]  # key order kept
    assert [(r["index"], r["id"], r["reason"]) for r in rejected] == [
        (1, "r1", "image_missing"), (2, None, "not_an_object"), (4, "r4", "image_path_escapes")]
    assert all(r["detail"] for r in rejected)
    assert summary["by_reason"] == {"image_missing": 1, "image_path_escapes": 1, "not_an_object": 1}
    assert json.loads((out / "summary.json").read_text())["kept"] == 3
    assert (out / "records.jsonl.meta.json").exists()


def test_jsonl_and_json_array_read_the_same(tmp_path):
    records = [rec(id=str(i)) for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "a.jsonl").write_text("\ufeff" + "\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_annotations(tmp_path / "a.json") == read_annotations(tmp_path / "a.jsonl") == records


@pytest.mark.parametrize("content, fragment", [
    (None, "not found"),
    ("", "empty"),
    ("[{\"id\": 1},", "not valid JSON"),
    ("{\"id\": 1}\n{oops\n", ":2: not valid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
])
def test_unreadable_annotations_raise_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "ann.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(AnnotationsError, match=fragment) as e:
        read_annotations(path)
    assert str(path) in str(e.value)


def test_cli_exit_codes_and_one_line_errors(tmp_path, image_dir, capsys):
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps(rec()) + "\n" + json.dumps(rec(image="missing.png")) + "\n")
    out = tmp_path / "pool"
    assert cli_main(["ingest", str(ann), "--image-dir", str(image_dir), "--out", str(out), "--no-progress"]) == 0
    assert "kept 1, rejected 1" in capsys.readouterr().out
    missing = tmp_path / "nope.json"
    assert cli_main(["ingest", str(missing), "--image-dir", str(image_dir), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err and "Traceback" not in err
    (tmp_path / "bad.json").write_text("[1, 2")
    assert cli_main(["ingest", str(tmp_path / "bad.json"), "--image-dir", str(image_dir), "--out", str(out)]) == 1
    assert "bad.json:1: not valid JSON" in capsys.readouterr().err


def test_cli_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "selfilter", "ingest", str(tmp_path / "nope.json"),
                           "--image-dir", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.json'}: annotations file not found"]
