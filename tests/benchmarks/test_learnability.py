"""The learnability probe's data: clean, of the asked types, held-out layouts for evaluation."""
from collections import Counter

import pytest

from benchmarks.learnability import main, make_eval_set, make_training_set
from selfilter.data.shapes import BENCH_ANSWERS


def test_training_set_has_only_the_asked_types_and_single_object_scenes_for_single_types():
    train = make_training_set(["count", "color"], ["color"], n=60, turns=(1, 3), single_share=0.5,
                              image_size=32, max_objects=6, seed=0)
    assert len(train) == 60
    questions = [t["value"] for conv, _ in train for t in conv if t["from"] == "human"]
    assert all("How many" in q or "What color" in q for q in questions)
    # colour questions only on the one-object scenes: their answer is that object's colour
    assert any("What color" in q for q in questions) and any("How many" in q for q in questions)


def test_eval_set_is_held_out_and_balanced():
    rows = make_eval_set(["color", "size"], [], per_type=10, image_size=32, max_objects=6, seed=0)
    assert Counter(t for t, *_ in rows) == {"color": 10, "size": 10}
    assert Counter(a for t, _, a, _ in rows if t == "color") == {c: 2 for c in BENCH_ANSWERS["color"]}
    assert all(q.endswith("Answer with a single word.") for _, q, _, _ in rows)


def test_unknown_type_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["--types", "colour"])
    assert "unknown question types ['colour']" in capsys.readouterr().err
