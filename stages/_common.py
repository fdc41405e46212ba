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
    # the openai client's HTTP layer logs a line per request, URL included (which may carry
    # credentials): hundreds of thousands of lines for a judge run over a real pool
    for http in ("httpx", "httpx2"):
        logging.getLogger(http).setLevel(logging.WARNING)
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


def add_model_pass_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of a stage that passes every pool record through the base model (el2n,
    ifd, less): one definition, so their command lines stay alike."""
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--records", required=True, help="records.jsonl from ingest")
    p.add_argument("--image-dir", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--model", required=True, help="base VLM folder (save_pretrained) or hub name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
