"""select_params stage: split the ``select`` params section into one file per method.

    python -m stages.select_params --params params.yaml --out select_params

Writes ``OUT/<method>.json`` for every method of ``select.methods`` and ``select.field_methods``:
its budgets, the seeds and exactly the options it declares in the registry (``Method.options``).
Each ``select@<method>`` stage depends on its own file instead of the whole ``select`` section,
so after ``dvc exp run -S select.gamma=0.5`` only the methods that read ``gamma`` (the
Self-Filter variants with the diversity penalty) select again; the others' files are unchanged
and DVC skips them. The select stage checks that its file matches params.yaml.

Example:
    python -m stages.select_params --params params.yaml --out select_params
"""
from __future__ import annotations

import argparse
from pathlib import Path

from selfilter.config import load_section
from selfilter.io import write_json
from selfilter.selection import registry as reg
from selfilter.selection.config import SelectConfig
from stages._common import StageParser, run_stage


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder, one <method>.json each")


def _run(args: argparse.Namespace) -> int:
    cfg = load_section("select", SelectConfig, args.params)
    out = Path(args.out)
    methods = list(dict.fromkeys([*cfg.methods, *cfg.field_methods]))
    for old in out.glob("*.json") if out.is_dir() else ():
        if old.stem not in methods:  # a method dropped from params must not leave its file behind
            old.unlink()
    for name in methods:
        write_json(out / f"{name}.json", reg.method_params(reg.get_method(name), cfg))
    print(f"select_params: {len(methods)} methods -> {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = StageParser("stages.select_params", __doc__)
    add_arguments(p)
    return run_stage("select_params", _run, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
