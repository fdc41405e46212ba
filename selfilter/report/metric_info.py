"""What a metric's name says about it: which direction is better and the range it lives in.

The report prints the direction beside every metric and keeps intervals inside the range: a
t-interval over three seeds of an accuracy can reach below 0 and above 1, which reads as
nonsense (``0.452 ± 0.972``). The range is known for rates (accuracy, exact match, F1,
precision, recall, probabilities, CHAIR); other scores (MME's perception score, losses) are
left unclipped.
"""
from __future__ import annotations

import re

# Metric names whose smaller value is better (hallucination rates, losses); every other metric
# the pipeline reports (accuracy, exact match, F1, answer probability) is higher-is-better.
LOWER_IS_BETTER = ("chair", "nll", "loss", "error", "hallucination")
_RATE = re.compile(r"(^|[_/])(acc|accuracy|exact_match|em|f1|precision|recall|prob|chair)(_|$)")


def better(metric: str) -> str:
    """'lower is better' or 'higher is better' for a ``task/metric`` key (or ``overall``)."""
    name = metric.rsplit("/", 1)[-1].lower()
    return "lower is better" if any(w in name for w in LOWER_IS_BETTER) else "higher is better"


def metric_range(metric: str) -> tuple[float, float] | None:
    """(0, 1) for a rate, None when the name does not say (the interval is then left as is)."""
    name = metric.rsplit("/", 1)[-1].lower().split(",", 1)[0]
    return (0.0, 1.0) if _RATE.search(name) else None
