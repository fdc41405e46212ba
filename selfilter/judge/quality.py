"""How good the judge is, measured against the hidden imperfection labels.

A judge's job is to tell correct samples from broken ones, so its quality is measured on
exactly that: records labelled ``clean`` against those with a broken answer (``wrong_answer``,
``low_information``, ``truncated``). Near-duplicates are left out - their content is correct and
no per-sample judge can see that a sample repeats another.

- ``auc``: the probability that a random clean record is rated above a random broken one (ties
  count one half) - threshold-free, 0.5 = a coin.
- ``balanced_accuracy``: the mean of the two recalls when ratings >= ``threshold`` are called
  clean (5 on the 0-10 scale: the middle).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

BROKEN = ("wrong_answer", "low_information", "truncated")


def judge_quality(ratings: Mapping[int, float], uid_to_id: Mapping[int, str], hidden: Mapping[str, str],
                  threshold: float = 5.0) -> dict[str, Any]:
    """``ratings`` uid -> 0-10 rating; ``uid_to_id`` the pool's record ids; ``hidden`` id -> kind."""
    clean, broken = [], []
    for uid, rating in ratings.items():
        kind = hidden.get(uid_to_id.get(uid, ""))
        if kind == "clean":
            clean.append(float(rating))
        elif kind in BROKEN:
            broken.append(float(rating))
    out: dict[str, Any] = {"n_clean": len(clean), "n_broken": len(broken), "threshold": threshold,
                           "auc": None, "balanced_accuracy": None}
    if not clean or not broken:
        return out
    c, b = np.asarray(clean), np.sort(np.asarray(broken))
    # Mann-Whitney U by counting, per clean rating, the broken ones below and equal to it
    below = np.searchsorted(b, c, side="left")
    equal = np.searchsorted(b, c, side="right") - below
    out["auc"] = float((below + 0.5 * equal).sum() / (len(c) * len(b)))
    out["balanced_accuracy"] = float(((c >= threshold).mean() + (b < threshold).mean()) / 2)
    return out


def quality_from_files(ratings_rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
                       hidden_rows: Sequence[Mapping[str, Any]], threshold: float = 5.0) -> dict[str, Any]:
    """:func:`judge_quality` from the rows of ratings.parquet, records.jsonl and hidden.jsonl."""
    return judge_quality({int(r["uid"]): float(r["rating"]) for r in ratings_rows},
                         {int(r["uid"]): str(r["id"]) for r in records},
                         {str(h["id"]): str(h["kind"]) for h in hidden_rows}, threshold)
