import numpy as np
import pytest

from selfilter.judge.parse import fill_unparsed, parse_rating
from selfilter.judge.prompt import build_messages, cache_key


@pytest.mark.parametrize("text, expected", [
    ("8", 8.0), ("8/10\nGood.", 8.0), ("Score: 8.5", 8.5), ("**7**\nok", 7.0), ("\n\n 9 \nfine", 9.0),
    ("12", 10.0), ("-3", 0.0), ("Rating: 10/10", 10.0),
    ("Excellent answer\nScore 9", None), ("", None), (None, None), ("   \n  ", None),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


def test_unparsed_get_the_mean_of_the_parsed():
    values, parsed = fill_unparsed([8.0, None, 4.0, None])
    np.testing.assert_array_equal(values, [8.0, 6.0, 4.0, 6.0])
    np.testing.assert_array_equal(parsed, [True, False, True, False])
    values, parsed = fill_unparsed([None])
    assert values[0] == 5.0 and not parsed[0]


def test_prompt_shows_the_scene_when_given_and_keys_differ_by_model():
    with_scene = build_messages("USER: q ASSISTANT: a", {"image": "x.png", "objects": [{"shape": "circle", "color": "red"}]})
    without = build_messages("USER: q ASSISTANT: a")
    assert "shape: circle, color: red" in with_scene[1]["content"]
    assert "not available" in without[1]["content"] and "USER: q ASSISTANT: a" in without[1]["content"]
    assert "first line" in without[1]["content"] and "0 to 10" in without[1]["content"]
    assert cache_key("m1", without) != cache_key("m2", without) != cache_key("m1", with_scene)
    assert cache_key("m1", without) == cache_key("m1", build_messages("USER: q ASSISTANT: a"))
