"""Reading a rating out of a judge's reply (Alpagasus: the score is on the first line)."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

MAX_RATING = 10.0
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_rating(text: str | None) -> float | None:
    """The first number on the first non-empty line, clipped to [0, 10]; None if there is none.

    Accepts "8", "8/10", "Score: 8.5", "**7**". A number later in the reply is not a rating:
    judges explain themselves with counts and examples.
    """
    if not text:
        return None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = _NUMBER.search(lines[0])
    if m is None:
        return None
    return float(min(max(float(m.group()), 0.0), MAX_RATING))


def fill_unparsed(ratings: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(ratings with None replaced by the mean of the parsed ones, parsed mask).

    With nothing parsed at all the mean is undefined; the midpoint 5.0 is used and the mask
    says so.
    """
    parsed = np.array([r is not None for r in ratings], dtype=bool)
    values = np.array([np.nan if r is None else r for r in ratings], dtype=np.float64)
    fill = float(values[parsed].mean()) if parsed.any() else MAX_RATING / 2
    values[~parsed] = fill
    return values, parsed
