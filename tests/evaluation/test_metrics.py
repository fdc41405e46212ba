"""Scores of the shapes benchmarks against hand-computed values."""
import pytest

from selfilter.evaluation import metrics as M


@pytest.mark.parametrize("pred, answer, hit", [
    ("Red.", "red", 1.0),
    ("  RED ", "red", 1.0),
    ("three", "3", 1.0),
    ("A large square", "large square", 1.0),
    ("red circle", "red", 0.0),
    ("", "red", 0.0),
    ("2", "3", 0.0),
])
def test_exact_match_normalises_case_punctuation_articles_numbers(pred, answer, hit):
    assert M.exact_match(pred, answer) == hit


def test_parse_yes_no_reads_the_first_word_only():
    assert M.parse_yes_no("Yes, there is.") == "yes"
    assert M.parse_yes_no("no") == "no"
    assert M.parse_yes_no("maybe yes") == "other"
    assert M.parse_yes_no("") == "other"


def test_pope_scores_hand_computed():
    # answers: yes yes yes no no ; predictions: yes no yes yes other
    items = [{"prediction": p, "answer": a} for p, a in
             [("yes", "yes"), ("no", "yes"), ("yes", "yes"), ("yes", "no"), ("other", "no")]]
    s = M.pope_scores(items)
    # tp=2 fp=1 fn=1 ; correct=2/5 ; predicted yes 3/5
    assert s["accuracy"] == pytest.approx(2 / 5)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["yes_ratio"] == pytest.approx(3 / 5)


def test_pope_always_yes_has_yes_ratio_one_and_half_accuracy():
    items = [{"prediction": "yes", "answer": a} for a in ["yes", "no"] * 5]
    s = M.pope_scores(items)
    assert s["yes_ratio"] == 1.0 and s["accuracy"] == 0.5 and s["recall"] == 1.0
    assert M.pope_scores([])["accuracy"] == 0.0


SCENE = [{"shape": "circle", "color": "red", "size": "small"},
         {"shape": "square", "color": "blue", "size": "large"},
         {"shape": "square", "color": "blue", "size": "small"}]


def test_caption_mentions_plurals_and_colours():
    assert M.caption_mentions("Two blue squares and a small red circle.") == [("blue", "square"), ("red", "circle")]
    assert M.caption_mentions("a large triangle") == [(None, "triangle")]


def test_chair_item_object_level_counts_hallucinated_mentions_and_recall():
    item = M.chair_item("There are 3 objects: a red circle, a green square and a triangle.", SCENE, level="object")
    # mentions: red circle (ok), green square (colour wrong -> hallucinated), triangle (absent)
    # distinct scene objects: (red, circle), (blue, square) -> recalled: red circle only
    assert item == {"mentions": 3, "hallucinated": 2, "recalled": 1, "objects": 2}


def test_chair_item_category_level_counts_mentioned_absent_categories():
    item = M.chair_item("There are 3 objects: a red circle, a green square and a triangle.", SCENE)
    # categories mentioned: red, circle, green, square, triangle; present: red, blue, circle, square
    # hallucinated: green, triangle; recalled: red, circle, square (blue is missed)
    assert item == {"mentions": 5, "hallucinated": 2, "recalled": 3, "objects": 4}
    # each category counts once per caption, plurals included
    assert M.chair_item("two blue squares, a blue square", SCENE) == \
        {"mentions": 2, "hallucinated": 0, "recalled": 2, "objects": 4}
    with pytest.raises(ValueError, match="category, object"):
        M.chair_item("a", SCENE, level="pixel")


def test_chair_scores_pool_over_captions():
    items = [M.chair_item("a red circle and a green square", SCENE),  # 4 categories, 1 hallucinated
             M.chair_item("a blue square", SCENE),                    # 2 categories, 0 hallucinated
             M.chair_item("nothing to see", SCENE)]                   # no mention
    s = M.chair_scores(items)
    assert s["chair_i"] == pytest.approx(1 / 6)
    assert s["chair_s"] == pytest.approx(1 / 3)
    assert s["object_recall"] == pytest.approx(5 / 12)
    p, r = 5 / 6, 5 / 12
    assert s["object_f1"] == pytest.approx(2 * p * r / (p + r))


def test_empty_captions_score_zero_f1_not_a_perfect_chair():
    s = M.chair_scores([M.chair_item("", SCENE)])
    assert s["chair_i"] == 0.0 and s["object_f1"] == 0.0


def test_majority_baseline_normalises_and_breaks_ties_alphabetically():
    assert M.majority_baseline(["Red", "red.", "blue"]) == ("red", pytest.approx(2 / 3))
    assert M.majority_baseline(["no", "yes"]) == ("no", 0.5)
    assert M.majority_baseline([]) == ("", 0.0)


def test_accuracy_by_group():
    items = [{"qtype": "color", "score": 1.0}, {"qtype": "color", "score": 0.0}, {"qtype": "size", "score": 1.0}]
    assert M.accuracy_by_group(items, "qtype") == {"color": 0.5, "size": 1.0}
