"""Judge quality against hidden labels, and the caption view's effect on it."""
from __future__ import annotations

import itertools
import random

import pytest

from selfilter.data import shapes
from selfilter.judge.annotation import AnnotationJudge, caption_view
from selfilter.judge.parse import parse_rating
from selfilter.judge.quality import judge_quality


def _auc_by_pairs(clean, broken):
    """Every (clean, broken) pair, counted one by one: the definition, nothing shared."""
    wins = 0.0
    for c, b in itertools.product(clean, broken):
        wins += 1.0 if c > b else 0.5 if c == b else 0.0
    return wins / (len(clean) * len(broken))


def test_auc_and_balanced_accuracy_match_their_definitions():
    rng = random.Random(4)
    kinds = ["clean", "wrong_answer", "truncated", "low_information", "near_duplicate"]
    hidden, ratings, ids = {}, {}, {}
    for uid in range(700):
        kind = rng.choice(kinds)
        ids[uid], hidden[f"r{uid}"] = f"r{uid}", kind
        ratings[uid] = float(rng.randint(0, 10)) + (2.0 if kind == "clean" else 0.0)  # many ties
    q = judge_quality(ratings, ids, hidden)
    clean = [ratings[u] for u in ratings if hidden[ids[u]] == "clean"]
    broken = [ratings[u] for u in ratings if hidden[ids[u]] in ("wrong_answer", "truncated", "low_information")]
    assert q["n_clean"] == len(clean) and q["n_broken"] == len(broken)
    assert q["auc"] == pytest.approx(_auc_by_pairs(clean, broken), abs=1e-12)
    tpr = sum(c >= 5 for c in clean) / len(clean)
    tnr = sum(b < 5 for b in broken) / len(broken)
    assert q["balanced_accuracy"] == pytest.approx((tpr + tnr) / 2)


def test_no_broken_records_means_no_measure_rather_than_a_number():
    q = judge_quality({0: 9.0, 1: 3.0}, {0: "a", 1: "b"}, {"a": "clean", "b": "near_duplicate"})
    assert q["auc"] is None and q["balanced_accuracy"] is None


def test_caption_view_is_partial_sometimes_wrong_and_seeded_by_image():
    scene = {"image": "images/000007.png", "objects": [
        {"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"},
        {"shape": "triangle", "color": "green"}, {"shape": "circle", "color": "white"}]}
    views = [caption_view({**scene, "image": f"images/{i}.png"}, 0.5, 0.5, seed=0) for i in range(400)]
    kept = sum(len(v["objects"]) for v in views) / (4 * len(views))
    assert 0.45 < kept < 0.6                      # ~ recall (plus the at-least-one rule)
    assert all(v["objects"] for v in views)
    originals = {(o["shape"], o["color"]) for o in scene["objects"]}
    changed = sum((o["shape"], o["color"]) not in originals for v in views for o in v["objects"])
    assert changed > 0.3 * sum(len(v["objects"]) for v in views)   # ~ error, less same-pair swaps
    assert caption_view(scene, 0.5, 0.5, seed=0) == caption_view(scene, 0.5, 0.5, seed=0)
    assert caption_view(scene, 1.0, 0.0, seed=3)["objects"] == scene["objects"]


def test_a_caption_reading_judge_tells_clean_from_broken_worse_than_the_scene_reader():
    pool = shapes.generate_pool(seed=2, pool_size=600)
    records = shapes.pool_records(pool)
    for uid, r in enumerate(records):
        r["uid"] = uid
    scenes = {r["image"]: {"image": r["image"], "objects": shapes.shifted(s.objects, s.shift)}
              for r, s in zip(records, pool)}
    hidden = {r["id"]: s.kind for r, s in zip(records, pool)}
    ids = {r["uid"]: r["id"] for r in records}

    def quality(judge):
        replies = judge.respond(records, scenes, progress=False)
        return judge_quality({u: parse_rating(x) for u, x in enumerate(replies)}, ids, hidden)

    full = quality(AnnotationJudge())
    caption = quality(AnnotationJudge(caption=(0.6, 0.2)))
    assert full["auc"] > 0.9
    assert 0.5 < caption["auc"] < full["auc"] - 0.05, (caption, full)
