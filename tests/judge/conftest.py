from __future__ import annotations

import pytest

from fake_openai import FakeOpenAI, rating_from_prompt


@pytest.fixture
def server():
    with FakeOpenAI(rating_from_prompt) as s:
        yield s
