"""What the commands print: a search's JSON (``--output`` or standard output) and the log's level."""

from __future__ import annotations

import json
import logging
from pathlib import Path


def write_or_print_json(output: dict, path: str | Path | None) -> None:
    """Write ``output`` atomically to ``path``, or print it as one JSON line when no path is given."""
    if path:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(path, output)
    else:
        print(json.dumps(output))


# Libraries that log one line per HTTP request at INFO: shown only with --verbose.
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "huggingface_hub", "urllib3")


def configure_logging(verbose: bool = False, format: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """Log bt2_hf's progress at INFO; the HTTP clients' per-request lines only when ``verbose`` (then all at DEBUG)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=format)
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
