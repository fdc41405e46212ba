from __future__ import annotations

import re

import pytest

from fake_openai import FakeOpenAI


def rating_from_prompt(user: str) -> str:
    """Reply with the rating the test planted in the conversation ("RATE=<text>")."""
    m = re.search(r"RATE=(\S+)", user)
    return (m.group(1).replace("_", " ") if m else "7") + "\nBecause the test said so."


@pytest.fixture
def server():
    with FakeOpenAI(rating_from_prompt) as s:
        yield s
