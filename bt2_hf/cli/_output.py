"""What the commands print: a search's JSON (``--output`` or standard output) and the log's level (quiet HTTP
clients unless verbose: ``bt2 --verbose``, a command's ``--verbose`` or ``BT2_LOG_LEVEL=DEBUG``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path


def write_or_print_json(output: dict, path: str | Path | None) -> None:
    """Write ``output`` atomically to ``path``, or print it as one JSON line when no path is given."""
    if path:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(path, output)
    else:
        print(json.dumps(output))


# Libraries that log one line per HTTP request at INFO: shown only when verbose.
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "huggingface_hub", "urllib3")
# Libraries that narrate their own start-up at INFO (faiss: which CPU build it loaded, after failing the others).
CHATTY_LOGGERS = ("faiss.loader",)
# The environment variable that sets the commands' log level (DEBUG also shows the HTTP requests).
LOG_LEVEL_VARIABLE = "BT2_LOG_LEVEL"
_verbose_for_every_command = False  # set by `bt2 --verbose <command>` (cli/main.py)


def set_verbose(verbose: bool) -> None:
    """Make every later :func:`configure_logging` verbose (``bt2 --verbose <command>``), and quiet or show the HTTP
    clients' per-request lines at once."""
    global _verbose_for_every_command
    _verbose_for_every_command = bool(verbose)
    quiet_http_loggers(verbose)


def _level_from_environment() -> int | None:
    name = os.environ.get(LOG_LEVEL_VARIABLE, "").strip().upper()
    level = logging.getLevelName(name) if name else None
    return level if isinstance(level, int) else None


def is_verbose(verbose: bool | None = None) -> bool:
    """Whether the HTTP requests are logged: ``verbose`` (a command's own ``--verbose``), ``bt2 --verbose`` or
    ``BT2_LOG_LEVEL=DEBUG``."""
    return bool(verbose) or _verbose_for_every_command or _level_from_environment() == logging.DEBUG


def quiet_http_loggers(verbose: bool | None = None) -> None:
    """Put the HTTP clients' loggers at WARNING (their per-request INFO lines hidden), or at DEBUG when verbose."""
    verbose = is_verbose(verbose)
    for name in HTTP_LOGGERS + CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        # huggingface_hub sets its logger's level from HF_HUB_VERBOSITY when it is first imported, which may be
        # after this call: without the variable it would put itself back at WARNING.
        os.environ.setdefault("HF_HUB_VERBOSITY", "debug")


def configure_logging(
    verbose: bool | None = None, format: str = "%(levelname)s %(name)s: %(message)s", level: int = logging.INFO
) -> None:
    """Log at ``level`` (a command's default; ``BT2_LOG_LEVEL`` overrides it), and the HTTP clients' per-request
    lines only when verbose (see :func:`is_verbose`), then everything at DEBUG.

    Every command calls it instead of ``logging.basicConfig``, so ``python -m bt2_hf.cli.<command>`` is as quiet
    as ``bt2 <command>``.
    """
    verbose = is_verbose(verbose)
    environment_level = _level_from_environment()
    if verbose:
        level = logging.DEBUG
    elif environment_level is not None:
        level = environment_level
    logging.basicConfig(level=level, format=format)
    quiet_http_loggers(verbose)
    if os.environ.get(LOG_LEVEL_VARIABLE, "").strip() and environment_level is None:
        logging.getLogger(__name__).warning(
            "%s=%r is not a log level: set DEBUG, INFO, WARNING or ERROR.", LOG_LEVEL_VARIABLE,
            os.environ[LOG_LEVEL_VARIABLE],
        )  # fmt: skip
