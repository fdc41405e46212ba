"""``selfilter`` command line: one subcommand per module, imported only when used.

Each entry names a module that defines ``add_arguments(parser)`` and ``run(args) -> int``.
Keeping imports lazy makes ``selfilter --help`` instant (torch is not imported for it).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("selfilter.data.ingest", "validate LLaVA-format annotations into records.jsonl + rejected.jsonl"),
    "shapes": ("selfilter.data.shapes", "generate the embedded 'shapes' instruction dataset and benchmarks"),
    "calibration": ("selfilter.report.gate", "exit 0 calibrated, 1 a check failed, 3 not established (a check skipped: too few seeds) - reports/calibration.json"),
    "regimes": ("selfilter.regimes.report", "build the selector map (reports/regimes.md, .json, regimes/map.png) from the "
                "regimes a sweep collected (python -m flows.regimes runs them)"),
    "verdict": ("selfilter.report.verdict", "print who won at each budget, the calibration verdict and where the "
                "report, plots and MLflow store are (exit 0 calibrated, 1 not calibrated, 3 not established)"),
}


# name -> one example each command's --help ends with
EXAMPLES: dict[str, str] = {
    "ingest": "selfilter ingest llava_v1_5_mix665k.json --image-dir data/images --out data/pool",
    "shapes": "selfilter shapes --params params.yaml --out data/shapes",
    "calibration": "selfilter calibration reports/calibration.json",
    "verdict": "selfilter verdict --reports reports",
    "regimes": "selfilter regimes --sweep sweeps/regimes.yaml --reports reports",
}

EPILOG = """\
examples:
  {examples}

the pipeline (README):
  make run                                  dvc repro, then selfilter verdict
  dvc repro select@random                   one stage (and what it needs); python -m stages.select --help
  dvc exp run -S select.k_nearest=5         an experiment: reruns only what reads the key
  dvc metrics show / dvc exp show --only-changed     the compact results (reports/summary.json)
  python -m flows.pipeline --profile smoke  the same stages as a Prefect flow (docs/prefect.md)
  python -m flows.regimes                   the selector map: the grid in several data regimes (sweeps/regimes.yaml)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfilter",
        description="Self-Filter data selection for visual instruction tuning. "
        "The pipeline itself runs with `dvc repro` (see README); these commands are its parts.",
        epilog=EPILOG.format(examples="\n  ".join(EXAMPLES[n] for n in COMMANDS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module add its own arguments.
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / the list of valid commands
        if args.command is None:
            parser.print_help()
            return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"selfilter {name}", description=COMMANDS[name][1],
                                  epilog=f"example:\n  {EXAMPLES[name]}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
