"""What every stage entry point shares: one-line user errors, quiet library logging."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from selfilter.config import ConfigError


def run_stage(name: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a stage body: INFO logs by module name, and user errors (bad params, bad
    input files) as one ``<name>: error: ...`` line with exit 1 instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise
    try:
        return body(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
