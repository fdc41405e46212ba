"""``selfilter regimes``: build reports/regimes.{json,md} and the heat map from collected regimes.

Reads every ``<reports>/regimes/<regime>/`` that holds regime.json and metrics.json (what the
sweep flow, flows/regimes.py, collects), so the map can be rebuilt at any time, and a sweep
that ran part of its regimes gives a map of those, naming the rest as not run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from selfilter.config import ConfigError
from selfilter.io import read_json, write_json, write_text
from selfilter.regimes.map import build_map, render_markdown
from selfilter.regimes.spec import load_spec


def load_entries(regimes_dir: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    entries = []
    for d in sorted(p for p in regimes_dir.glob("*") if p.is_dir()):
        if (d / "regime.json").is_file() and (d / "metrics.json").is_file():
            entries.append((read_json(d / "regime.json"), read_json(d / "metrics.json")))
    return entries


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def write_map(spec_path: str | Path, reports: str | Path) -> dict[str, Any]:
    """Build and write the map; return it."""
    from selfilter.regimes.plot import plot_regime_map

    reports = Path(reports)
    spec = load_spec(spec_path)
    entries = load_entries(reports / "regimes")
    if not entries:
        raise FileNotFoundError(f"{reports / 'regimes'}: no collected regime (run the sweep: python -m flows.regimes)")
    m = build_map(entries, spec.model_dump())
    # paths relative to the checkout (the reports folder's parent): the map is committed, and a
    # machine's own folders mean nothing in another clone
    m["sweep"] = _relative(Path(spec_path), reports.resolve().parent)
    # not under reports/plots/: that folder is the compare stage's DVC output, replaced on every run
    plot = plot_regime_map(m, reports / "regimes" / "map.png")
    m["plot"] = _relative(Path(plot), reports.resolve().parent)
    write_json(reports / "regimes.json", m)
    write_text(reports / "regimes.md", render_markdown(m) + "\n![selector map](regimes/map.png)\n")
    return m


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", default="sweeps/regimes.yaml", help="the sweep file the regimes were run from")
    p.add_argument("--reports", default="reports", help="folder holding regimes/<regime>/ (written: regimes.json, regimes.md, regimes/map.png)")


def run(args: argparse.Namespace) -> int:
    try:
        m = write_map(args.sweep, args.reports)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    h = m["hypothesis"]
    print(f"{len(m['regimes'])} regime(s) mapped ({', '.join(m['regimes'])})"
          + (f"; not run: {', '.join(m['not_run'])}" if m["not_run"] else ""))
    print(f"hypothesis {h['status']}: {h['cells_won']} of {h['cells_tested']} cell(s) where its premise holds won"
          + (f" ({h['cells_premise_absent']} without its premise)" if h.get("cells_premise_absent") else "") + f" - {h['text']}")
    print(f"map: {args.reports}/regimes.md, {args.reports}/regimes.json, {m['plot']}")
    return 0
