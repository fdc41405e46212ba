"""What every stage entry point shares: one-line user errors, quiet library logging."""
from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Callable

from selfilter import console
from selfilter.config import ConfigError


def run_stage(name: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a stage body: INFO logs by module name, and user errors (bad params, bad
    input files) as one ``<name>: error: ...`` line with exit 1 instead of a traceback."""
    console.setup()  # INFO logs by module name; third-party bars and per-checkpoint chatter off
    try:
        return body(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an output folder that cannot be created or written, a full disk
        if e.filename is None:
            raise
        print(f"{name}: error: cannot write or read {e.filename}: {e.strerror}", file=sys.stderr)
        return 1


# Help for the flags every stage has, so no stage's --help leaves them blank.
COMMON_HELP = {
    "--params": "params file; the stage reads its own section (default: %(default)s)",
    "--no-progress": "no progress bar (logs only)",
}


class StageParser(argparse.ArgumentParser):
    """A stage's command line. ``--help`` shows the module docstring's first line, the flags, and
    then the rest of the docstring - which opens with the command exactly as dvc.yaml runs it -
    under "Example", and how to run the stage through DVC."""

    def __init__(self, module: str, doc: str):
        first, _, rest = (doc or "").strip().partition("\n\n")  # first paragraph: the description
        first = " ".join(first.split())
        stage = module.rsplit(".", 1)[-1]
        # docstrings continue long commands with a backslash, which Python folds into spaces
        body = re.sub(r"(?<=\S) {3,}(?=\[|--)", " \\\n        ", textwrap.dedent(rest).strip("\n"))
        epilog = f"Example (as dvc.yaml runs it):\n{body}" if body else ""
        epilog += (f"\n\nThrough DVC (skipped when nothing it depends on changed): dvc repro {stage}"
                   "\nSettings: params.yaml (SELFILTER_VERBOSE=1 shows third-party progress bars and logs)")
        super().__init__(prog=f"python -m {module}", description=first.strip(), epilog=epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter)

    def add_argument(self, *names, **kwargs):
        if "help" not in kwargs:
            for name in names:
                if name in COMMON_HELP:
                    kwargs["help"] = COMMON_HELP[name]
        return super().add_argument(*names, **kwargs)


def add_model_pass_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of a stage that passes every pool record through the base model (el2n,
    ifd, less): one definition, so their command lines stay alike."""
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--records", required=True, help="records.jsonl from ingest")
    p.add_argument("--image-dir", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--model", required=True, help="base VLM folder (save_pretrained) or hub name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
