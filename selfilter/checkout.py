"""Which checkout a Prefect flow run works in: the pull step of prefect.yaml.

A process worker starts each flow run in a fresh temporary folder; the pipeline needs the
worker's checkout of this repository (its dvc.yaml, params.yaml, data and DVC cache). The
checkout is, in order: ``$SELFILTER_ROOT`` when set; else the folder the worker was started in
(``$PWD``, which the shell exports and the worker passes on to its flow runs), so
``prefect worker start --pool selfilter-cpu`` from inside a checkout just works. Anything else
stops the run with one line saying what to set.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT_ENV = "SELFILTER_ROOT"
MARKERS = ("dvc.yaml", "params.yaml", "flows/pipeline.py")


class CheckoutError(RuntimeError):
    """No usable checkout: the message is the one line a user needs."""


def is_checkout(path: Path) -> bool:
    return all((path / m).is_file() for m in MARKERS)


def find_checkout(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ if env is None else env)
    hint = (f"set {ROOT_ENV} to your checkout of the selfilter repository, e.g. "
            f"`{ROOT_ENV}=$PWD prefect worker start --pool <pool>`, or start the worker from inside that checkout")
    if env.get(ROOT_ENV):
        root = Path(env[ROOT_ENV]).expanduser()
        if not is_checkout(root):
            raise CheckoutError(f"{ROOT_ENV}={root} is not a selfilter checkout (no {' / '.join(MARKERS)}); {hint}")
        return root.resolve()
    start = env.get("PWD")
    if start and is_checkout(Path(start)):
        return Path(start).resolve()
    where = f"the worker was started in {start}, which is not a selfilter checkout" if start else \
        "the worker's start folder is unknown ($PWD is not set)"
    raise CheckoutError(f"{ROOT_ENV} is not set and {where}; {hint}")


def use_checkout() -> dict[str, str]:
    """Prefect pull step (prefect.yaml: ``- selfilter.checkout.use_checkout: {}``): change to the
    checkout and return ``{"directory": ...}``. On failure prints one line and exits 1."""
    try:
        root = find_checkout()
    except CheckoutError as e:
        print(f"selfilter: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    os.chdir(root)
    return {"directory": str(root)}
