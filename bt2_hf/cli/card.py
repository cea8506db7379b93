"""``bt2 card <checkpoint_dir>``: render or refresh a model card from a checkpoint and an evaluation JSON."""

from __future__ import annotations

import argparse
import logging
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

logger = logging.getLogger(__name__)


EXAMPLES = """\
bt2 card bt2_demo_output/models/bt2                    # refresh README.md, keeping the demo's sections
bt2 card runs/bt2 --results verify.json --repo_id my-org/my-bt2
bt2 card runs/bt2 --output /tmp/card.md                  # write elsewhere
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt2 card",
        description="Write README.md for a checkpoint from its config.json compatibility metadata (and an evaluation "
        "JSON). An existing card is refreshed: generated sections are replaced, the user's own sections are kept.",
    )
    parser.add_argument("checkpoint_dir", help="a directory written by BT2Model.save_pretrained")
    parser.add_argument(
        "--results",
        default=None,
        help="evaluation JSON (a PairReport.to_dict(), e.g. bt2 verify --output, or a per-pair dict)",
    )
    parser.add_argument("--method", default=None, help="unused (kept so old command lines still parse)")
    parser.add_argument("--output", default=None, help="where to write the card (default: <checkpoint_dir>/README.md)")
    parser.add_argument("--repo-id", default=None, help="the Hub id shown in the card (default: the directory)")
    parser.add_argument("--dataset", default=None, help="name of the evaluation dataset")
    parser.add_argument("--license", default=None, help="license for the card's metadata")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bt2 card``; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging()
    from ..hub.card import create_or_update_model_card

    render_kwargs = {
        key: value
        for key, value in (
            ("repo_id", args.repo_id),
            ("metrics", args.results),
            ("method", args.method),
            ("dataset", args.dataset),
            ("license", args.license),
        )
        if value is not None
    }
    try:
        path = create_or_update_model_card(args.checkpoint_dir, output=args.output, **render_kwargs)
    except (OSError, ValueError) as error:
        print(f"bt2 card: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
