"""The generated non-shapes LLaVA dataset (tests/userdata.py) against the real ingest: the counts
it promises are what ingest makes of it."""
from __future__ import annotations

import json
from collections import Counter

from PIL import Image

from selfilter.data.ingest import REASONS, ingest_records, read_annotations
from userdata import EMPTY_ANSWER_REASON, SIZE, make_llava_dataset


def test_userdata_counts_match_ingest(tmp_path):
    info = make_llava_dataset(tmp_path, n=120, seed=3)
    records = read_annotations(info["annotations"])
    assert len(records) == info["records"] == 120
    result = ingest_records(records, info["image_dir"], progress=False)
    summary = result.summary()
    # Before issue 17's ingest fix empty answers are kept; after it, rejected with their reason.
    fixed = EMPTY_ANSWER_REASON in REASONS
    assert summary["by_reason"] == (info["rejected"] if fixed else info["rejected_today"])
    assert summary["kept"] == (info["kept"] if fixed else info["kept_today"])
    assert summary["kept_text_only"] == info["text_only"] > 0
    ids = Counter(r["id"] for r in result.kept)
    assert sorted(i for i, c in ids.items() if c > 1) == info["duplicate_id_values"]
    assert sum(c - 1 for c in ids.values()) == info["duplicate_ids"]
    # every planted bad record is rejected and nothing else is (apart from empty answers today)
    rejected_ids = {r["id"] for r in result.rejected}
    bad_ids = {r["id"] for r in records if isinstance(r, dict) and str(r.get("id", "")).startswith("bad-")}
    empty_ids = {i for i in bad_ids if "_answer-" in i}
    assert rejected_ids == (bad_ids if fixed else bad_ids - empty_ids)


def test_userdata_looks_like_user_data(tmp_path):
    info = make_llava_dataset(tmp_path, n=80, seed=0)
    records = json.loads(info["annotations"].read_text())
    kept = [r for r in records if not str(r["id"]).startswith("bad-")]
    turns = Counter(len(r["conversations"]) // 2 for r in kept)
    assert set(turns) == {2, 3}
    with_image = [r for r in kept if "image" in r]
    assert {r["image"].split("/")[0] for r in with_image} == {"circles", "stripes", "digit", "squares"}
    with Image.open(info["image_dir"] / with_image[0]["image"]) as im:
        assert im.size == (SIZE, SIZE) == (64, 64)
    answers = [len(r["conversations"][1]["value"].split()) for r in with_image]
    assert min(answers) <= 2 and max(answers) >= 15  # short answers and descriptions
    assert info["short_first_answer"] == sum(a <= 5 for a in answers)
    # the same seed gives the same records (but for the planted absolute path, which names the folder)
    again = make_llava_dataset(tmp_path / "again", n=80, seed=0)

    def relative(rs):
        return [r for r in rs if not str(r["id"]).startswith("bad-absolute")]
    assert relative(json.loads(again["annotations"].read_text())) == relative(records)
