"""A judge stage wired to the fake endpoint: records with planted ratings, a params file, and
the checks every judge fault case shares (ratings lost, one-line errors)."""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import pandas as pd

N = 12
CONCURRENCY = 3
MAX_RETRIES = 3
KEY_ENV = "SELFILTER_RELIABILITY_JUDGE_KEY"
# A made-up key, drawn per session so that it is in no source file either (a clone of this
# repository is among the files the secrets case greps). Not a real secret anywhere.
CANARY = f"sk-canary-{secrets.token_hex(16)}"


def planted(uid: int) -> int:
    return (uid * 7) % 11  # 0..10, uneven, so a shifted or reused rating shows


def write_records(path: Path, n: int = N) -> Path:
    path.write_text("".join(json.dumps({
        "uid": i, "id": f"r{i}", "image": f"{i}.png",
        "conversations": [{"from": "human", "value": f"<image>\nSample {i}: what is shown?"},
                          {"from": "gpt", "value": f"RATE={planted(i)} a shape"}]}) + "\n" for i in range(n)))
    return path


def write_params(path: Path, base_url: str, cache_dir: Path, **openai_kw) -> Path:
    cfg = {"base_url": base_url, "model": "fake", "api_key_env": KEY_ENV, "concurrency": CONCURRENCY,
           "timeout_s": 0.5, "max_retries": MAX_RETRIES, "backoff_s": 0.01, "max_backoff_s": 0.05, **openai_kw}
    path.write_text(json.dumps({"judge": {"backend": "openai", "cache_dir": str(cache_dir),
                                          "max_failed_fraction": 0.0, "openai": cfg}}))
    return path


def ratings_lost(out: Path, n: int = N, unparsed_ok: frozenset[int] = frozenset()) -> int:
    """Records without their planted rating: missing, wrong, or imputed where the reply was fine.
    ``unparsed_ok`` are uids whose reply was unparseable by design (named, not lost)."""
    table_path = out / "ratings.parquet"
    if not table_path.exists():
        return n
    table = pd.read_parquet(table_path).set_index("uid")
    lost = n - len(table.index.intersection(range(n)))
    for uid, row in table.iterrows():
        if uid in unparsed_ok:
            lost += bool(row["parsed"])  # an unparseable reply must be flagged, never passed off
        else:
            lost += (not row["parsed"]) or row["rating"] != planted(uid)
    return int(lost)


def one_line_error(err: str, stage: str) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return "Traceback" not in err and sum(ln.startswith(f"{stage}: error:") for ln in lines) == 1
