"""The fault-injection suite's ledger and its `soak` switch.

Every case records what it injected as one row - fault | where | outcome | records lost | repeat
calls | calls (bound) - through the ``ledger`` fixture; the rows are printed as a table at the end
of the session and written to ``$SELFILTER_RELIABILITY_TABLE`` (default
``.cache/reliability/table.md``). A test asserts on the same numbers it records, so a row that
reads "0 lost" is a checked 0.

Cases marked ``soak`` (SIGKILL of every long stage at seeded points of a real smoke run, and the
other expensive ones) run only with ``SELFILTER_SOAK=1`` (``make reliability``): the default
``make test`` stays within its time budget.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

SOAK = os.environ.get("SELFILTER_SOAK") == "1"
COLUMNS = ("fault", "where", "outcome", "lost", "repeat_calls", "calls", "bound")


@dataclass
class Row:
    fault: str
    where: str
    outcome: str
    lost: int = 0            # records whose output (rating, record, run) is missing or wrong
    repeat_calls: int = 0    # judge requests for prompts that an earlier run already answered
    calls: int | None = None  # requests (or runs) the case made, where counting them means something
    bound: int | None = None  # the stated upper bound for ``calls``


_ROWS: list[Row] = []


@pytest.fixture
def ledger():
    """``ledger(fault, where, outcome, lost=0, repeat_calls=0, calls=None, bound=None)``."""
    def record(*args, **kw) -> Row:
        row = Row(*args, **kw)
        _ROWS.append(row)
        return row
    return record


def pytest_collection_modifyitems(config, items):
    if SOAK:
        return
    skip = pytest.mark.skip(reason="soak case: set SELFILTER_SOAK=1 (make reliability)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def table_markdown(rows: list[Row]) -> str:
    def cell(v):
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(getattr(r, c)) for c in COLUMNS) + " |" for r in rows]
    faults = len(rows)
    survived = sum(r.lost == 0 and r.repeat_calls == 0 and (r.bound is None or (r.calls or 0) <= r.bound)
                   for r in rows)
    lines.append(f"\n{faults} faults injected, {survived} survived (0 lost, 0 repeat calls, within bound); "
                 f"records lost {sum(r.lost for r in rows)}, repeat calls {sum(r.repeat_calls for r in rows)}")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    text = table_markdown(_ROWS)
    terminalreporter.section("reliability: faults injected")
    terminalreporter.write_line(text)
    out = Path(os.environ.get("SELFILTER_RELIABILITY_TABLE", ".cache/reliability/table.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in _ROWS], indent=1) + "\n")
