"""Data selection: Self-Filter stage 2 (``diverse_greedy``), the baselines, the method registry."""
from selfilter.selection.baselines import full, oracle_clean, prototypicality, random_select, top_k
from selfilter.selection.greedy import GreedyResult, diverse_greedy, reference_greedy
from selfilter.selection.registry import (
    METHODS,
    Method,
    Picked,
    SelectionInputs,
    SelectOptions,
    get_method,
    run_method,
)

__all__ = [
    "METHODS", "GreedyResult", "Method", "Picked", "SelectOptions", "SelectionInputs",
    "diverse_greedy", "full", "get_method", "oracle_clean", "prototypicality", "random_select",
    "reference_greedy", "run_method", "top_k",
]
