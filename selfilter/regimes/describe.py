"""One line naming the data regime a run was measured in (printed with the verdict).

A verdict on the embedded testbed holds for the regime its knobs made - how much of the pool is
broken, how difficulty is spread, what the judge sees - and the selector map
(sweeps/regimes.yaml) shows the verdict changes with them; so the verdict says which it was.
"""
from __future__ import annotations

from typing import Any, Mapping

NOISE_LEVELS = ((0.35, "high"), (0.10, "mid"), (0.0, "low"))   # share of broken answers -> label


def regime_line(params: Mapping[str, Any]) -> str:
    data, judge = params.get("data", {}) or {}, params.get("judge", {}) or {}
    if data.get("source", "shapes") != "shapes":
        return (f"your data ({data.get('annotations')}); the selector map of when each selector wins is "
                "measured on the embedded testbed (python -m flows.regimes)")
    shapes = data.get("shapes", {}) or {}
    imp = shapes.get("imperfections", {}) or {}
    wrong, low, trunc, dup = (float(imp.get(k, 0.0)) for k in ("wrong_answer", "low_information", "truncated",
                                                               "near_duplicate"))
    broken = wrong + low + trunc
    noise = next(label for floor, label in NOISE_LEVELS if broken >= floor)
    skew = float(shapes.get("difficulty_skew", 0.0) or 0.0)
    spread = (f"scenes of 1-{shapes.get('max_objects', 6)} objects equally often" if skew == 0
              else f"mostly easy scenes, a thin tail of crowded ones (difficulty_skew {skew:g})")
    a = judge.get("annotation", {}) or {}
    if judge.get("backend", "annotation") != "annotation":
        seen = f"an LLM judge ({(judge.get('openai') or {}).get('model')})"
    elif a.get("view", "scene") == "caption":
        seen = (f"a caption-reading judge (sees {float(a.get('caption_recall', 0.7)):.0%} of objects, "
                f"{float(a.get('caption_error', 0.1)):.0%} of them wrong)")
    else:
        seen = "a judge that reads the scene annotation"
    return (f"embedded testbed, {noise} noise ({broken:.0%} broken answers: {wrong:.0%} wrong, {low:.0%} "
            f"non-answers, {trunc:.0%} truncated; {dup:.0%} near-duplicates), {spread}, {seen}")
