"""What a stage prints: its own progress bar and summary line, warnings - and nothing else.

A grid stage loads and saves a checkpoint and runs lmms-eval once per run; left alone, each of
those draws its own progress bars (transformers' "Loading weights" / "Writing model shards",
lmms-eval's "Model Responding" / "Postprocessing", datasets' map bars) - 125 times in the
default run, about 700,000 characters of console. :func:`setup` (called by every stage) turns
off every progress bar that is not created by this project's code, quiets INFO chatter of
third-party loggers, and makes the stage's own bar log-friendly when stderr is not a terminal
(DVC under CI, a Prefect worker's log): it redraws at most every ``NON_TTY_INTERVAL_S``.
Warnings and errors still surface. ``SELFILTER_VERBOSE=1`` turns all of it back on.
"""
from __future__ import annotations

import logging
import os
import sys

VERBOSE_ENV = "SELFILTER_VERBOSE"
NON_TTY_INTERVAL_S = 30.0
# Module-name prefixes whose bars are the stage's own (everything else is third-party).
OWN_MODULES = ("selfilter", "stages", "flows", "benchmarks", "__main__")
# Loggers that talk at INFO once per checkpoint or import.
# (httpx/httpx2: the openai client logs a line per request, URL included - it may carry credentials)
CHATTY_LOGGERS = ("accelerate", "numexpr", "transformers", "datasets", "httpx", "httpx2", "filelock", "urllib3",
                  "PIL", "matplotlib", "lmms-eval", "lmms_eval", "mlflow", "alembic", "sentence_transformers")

_installed = False


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _caller_module(depth_limit: int = 40) -> str:
    """Module name of the first frame outside tqdm and this file: who is creating the bar."""
    frame = sys._getframe(2)
    for _ in range(depth_limit):
        if frame is None:
            return ""
        name = frame.f_globals.get("__name__", "")
        if not (name.startswith("tqdm") or name == __name__):
            return name
        frame = frame.f_back
    return ""


def is_own(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in OWN_MODULES)


def _patch_tqdm() -> None:
    from tqdm import std

    original = std.tqdm.__init__

    def __init__(self, *args, **kwargs):  # noqa: N807 - replaces tqdm.__init__
        log_file = False
        if not is_own(_caller_module()):
            kwargs["disable"] = True
        elif not (kwargs.get("file") or sys.stderr).isatty():
            kwargs["mininterval"] = max(float(kwargs.get("mininterval") or 0.1), NON_TTY_INTERVAL_S)
            # tqdm's monitor thread redraws a bar idle for maxinterval (10 s): a line per 10 s
            kwargs["maxinterval"] = max(float(kwargs.get("maxinterval") or 10.0), NON_TTY_INTERVAL_S)
            log_file = True
        original(self, *args, **kwargs)
        self._selfilter_log_file = log_file

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    std.tqdm.__init__ = __init__

    # set_postfix redraws at once by default - every step, whatever mininterval says; in a log
    # file the postfix waits for the next (rate-limited) redraw instead
    for name in ("set_postfix", "set_postfix_str"):
        def postfix(self, *args, _original=getattr(std.tqdm, name), **kwargs):
            if getattr(self, "_selfilter_log_file", False):
                kwargs["refresh"] = False
            return _original(self, *args, **kwargs)

        setattr(std.tqdm, name, postfix)


def detail(logger: logging.Logger, msg: str, *args) -> None:
    """A per-item line (one per run, checkpoint, shard): logged at INFO under SELFILTER_VERBOSE,
    else at DEBUG - the stage's bar and summary line carry it on the console."""
    logger.log(logging.INFO if verbose() else logging.DEBUG, msg, *args)


def setup(level: int = logging.INFO) -> None:
    """Console of a stage process (idempotent): module-named INFO logs of this project,
    warnings of everyone, bars of this project only. Call once, early in the stage's main."""
    global _installed
    logging.basicConfig(level=level, format="%(name)s: %(message)s")
    if verbose() or _installed:
        return
    _installed = True
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its logger's level on import
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("DATASETS_VERBOSITY", "warning")
    _patch_tqdm()
    # loguru (lmms-eval's logger) prints INFO to stderr by default; keep its warnings
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover - lmms-eval brings loguru
        return
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}")
