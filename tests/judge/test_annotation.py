from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from selfilter.judge.annotation import AnnotationJudge, index_scenes
from selfilter.judge.run import judge_records

SCENE = {"image": "a.png", "objects": [
    {"shape": "circle", "color": "red", "size": "small", "row": "top", "col": "left", "x": 5, "y": 5},
    {"shape": "square", "color": "blue", "size": "large", "row": "bottom", "col": "right", "x": 27, "y": 27},
    {"shape": "triangle", "color": "red", "size": "large", "row": "middle", "col": "middle", "x": 16, "y": 16},
]}


def _rate(*turns, noise=0.0, uid=0, scene=SCENE):
    conv = []
    for q, a in turns:
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    table, _ = judge_records([{"uid": uid, "image": "a.png", "conversations": conv}], index_scenes([scene]),
                             AnnotationJudge(noise=noise, seed=1), progress=False)
    return float(table["rating"][0])


SHORT = "\nAnswer with a single word."


@pytest.mark.parametrize("question, right, wrong", [
    ("What color is the circle?", "red", "green"),
    ("What shape is the blue object?", "square", "circle"),
    ("Is the red circle small or large?", "small", "large"),
    ("Is the blue square on the left, in the middle or on the right?", "right", "left"),
    ("How many objects are there?", "3", "4"),
    ("How many red objects are there?", "2", "1"),
    ("How many triangles are there?", "1", "2"),
    ("Is there a blue circle in the image?", "no", "yes"),
    ("Is the red circle to the left of the blue square?", "yes", "no"),
    ("Is the blue square above the red triangle?", "no", "yes"),
    ("How many objects are to the right of the red circle?", "2", "0"),
    ("Are there more red objects than blue objects?", "yes", "no"),
    ("Is the red circle larger than the blue square?", "no", "yes"),
])
def test_short_answers_checked_against_the_scene(question, right, wrong):
    assert _rate((question + SHORT, right)) >= 9
    assert _rate((question + SHORT, wrong)) <= 2


def test_descriptions_claims_truncation_and_low_information():
    full = ("There are 3 objects: a small red circle at the top left, a large red triangle in the center "
            "and a large blue square at the bottom right.")
    assert _rate(("Describe the image in detail.", full)) == 10
    hallucinated = full.replace("blue square", "green square")
    assert 1 <= _rate(("Describe the image in detail.", hallucinated)) <= 6
    assert _rate(("Describe the image in detail.", full[: len(full) // 2])) <= 3      # cut off
    assert _rate(("What color is the circle?" + SHORT, "r")) <= 3                       # cut mid-word
    assert _rate(("Describe the image in detail.", "There are some shapes in the image.")) <= 3
    assert _rate(("What color is the circle?" + SHORT, "I am not sure.")) <= 3


def test_unknown_wording_is_neutral_and_noise_is_seeded_per_uid():
    assert _rate(("Why would someone draw this?", "To teach geometry to children.")) == 6
    a, b = _rate(("What color is the circle?", "red"), noise=2.0, uid=5), _rate(("What color is the circle?", "red"), noise=2.0, uid=5)
    assert a == b and 0 <= a <= 10 and a != _rate(("What color is the circle?", "red"), noise=2.0, uid=6)


def test_record_without_scene_gets_the_mean():
    recs = [{"uid": 0, "image": "a.png", "conversations": [{"from": "human", "value": "What color is the circle?"},
                                                           {"from": "gpt", "value": "red"}]},
            {"uid": 1, "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}]
    table, usage = judge_records(recs, index_scenes([SCENE]), AnnotationJudge(), progress=False)
    assert list(table["parsed"]) == [True, False] and table["rating"][1] == table["rating"][0]
    assert usage["no_scene"] == 1


def test_separates_the_generated_imperfections():
    """On the real shapes generator: clean samples rate well above wrong/low-info/truncated ones.

    The imperfection labels are read here, by the test, to evaluate the judge - never by it.
    """
    import json

    from selfilter.data import shapes

    pool = shapes.generate_pool(seed=3, pool_size=300)
    records = [{"uid": i, **r} for i, r in enumerate(shapes.pool_records(pool))]
    scenes = index_scenes({"image": r["image"], "objects": s.objects} for r, s in zip(records, pool))
    table, _ = judge_records(records, scenes, AnnotationJudge(), progress=False)
    by_kind = defaultdict(list)
    for s, rating in zip(pool, table["rating"]):
        by_kind[s.kind].append(rating)
    assert np.mean(by_kind["clean"]) >= 9
    for kind in ("wrong_answer", "low_information", "truncated"):
        assert np.mean(by_kind[kind]) <= 4, (kind, json.dumps(by_kind[kind][:5]))
