"""Records -> ratings table, whichever backend answers."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from selfilter.judge.parse import fill_unparsed, parse_rating


def ratings_table(uids: Sequence[int], replies: Sequence[str | None]) -> pd.DataFrame:
    """``uid, rating (0-10), parsed``; unparseable or missing replies get the mean rating."""
    values, parsed = fill_unparsed([parse_rating(r) for r in replies])
    return pd.DataFrame({"uid": np.asarray(uids, dtype=np.int64), "rating": values, "parsed": parsed})


def judge_records(records: Sequence[dict[str, Any]], scenes: dict[str, dict[str, Any]], backend: Any,
                  progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rate every record; return the table and the usage counts (calls, cache hits, tokens)."""
    replies = backend.respond(records, scenes, progress=progress)
    table = ratings_table([r["uid"] for r in records], replies)
    usage = backend.usage_report()
    usage.update(n_records=len(table), n_unparsed=int((~table["parsed"]).sum()),
                 mean_rating=float(table["rating"].mean()) if len(table) else None)
    return table, usage
