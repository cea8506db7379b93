"""How a search command hands back its JSON: into ``--output`` (written atomically) or onto standard output."""

from __future__ import annotations

import json
from pathlib import Path


def write_or_print_json(output: dict, path: str | Path | None) -> None:
    """Write ``output`` atomically to ``path``, or print it as one JSON line when no path is given."""
    if path:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(path, output)
    else:
        print(json.dumps(output))
