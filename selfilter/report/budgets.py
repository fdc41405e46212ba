"""How a budget is keyed in the summary ("0.15") and shown to a reader ("15%")."""
from __future__ import annotations


def bkey(budget: float | str) -> str:
    return f"{float(budget):g}"


def budget_label(b: float | str) -> str:
    return f"{float(b) * 100:g}%"
