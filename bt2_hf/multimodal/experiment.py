"""Deprecated: ``python -m bt2_hf.multimodal.experiment`` is ``bt2 text-tower`` (:mod:`bt2_hf.cli.text_tower`).

The runner lives in :mod:`bt2_hf.pipelines.text_tower`; its names stay importable from here.
"""

from __future__ import annotations

import sys

from ..cli.text_tower import build_parser
from ..pipelines.text_tower import TextTowerSettings, caption_rows, default_text_model_path, run_text_tower

__all__ = ["TextTowerSettings", "build_parser", "caption_rows", "default_text_model_path", "main", "run_text_tower"]


def main(argv: list[str] | None = None) -> int:
    """``bt2 text-tower`` under its old name, with a one-line deprecation warning."""
    from ..cli.text_tower import main as text_tower_main

    # one line on stderr (a warnings.warn from a `python -m` entry point prints a second, source line)
    print(
        "warning: `python -m bt2_hf.multimodal.experiment` is deprecated, use `bt2 text-tower` (same flags).",
        file=sys.stderr,
    )
    return text_tower_main(argv, prog="python -m bt2_hf.multimodal.experiment")


if __name__ == "__main__":
    sys.exit(main())
