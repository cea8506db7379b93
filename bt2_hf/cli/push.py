"""``bt2 push <checkpoint_dir> <repo_id>``: upload a saved checkpoint with a generated model card to the Hub."""

from __future__ import annotations

import argparse
import logging
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

logger = logging.getLogger(__name__)


EXAMPLES = """\
bt2 push bt2_demo_output/models/bt2 my-org/fashion-mnist-bt2
bt2 push runs/bt2 my-org/my-bt2 --revision v2 --private --results verify.json
HF_ENDPOINT=http://127.0.0.1:8765 bt2 push runs/bt2 bt2-tester/my-bt2   # a local Hub: see `bt2 hub-serve --help`
bt2 push runs/bt2 my-org/my-bt2 --verbose                                 # also log every HTTP request
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt2 push",
        description="Push a checkpoint (config, safetensors weights, processor) and its generated model card to the "
        "Hub. The endpoint is HF_ENDPOINT (huggingface_hub's configured endpoint); `bt2 hub-serve` runs a local one. "
        "The card keeps the sections already in the checkpoint's README.md (a pipeline's verdict, your own notes).",
    )
    parser.add_argument("checkpoint_dir", help="a directory written by BT2Model.save_pretrained")
    parser.add_argument("repo_id", help="the Hub repo, 'namespace/name'")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    parser.add_argument("--token", default=None, help="Hub token (defaults to HF_TOKEN or the logged-in one)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    parser.add_argument("--results", default=None, help="evaluation JSON whose metrics go into the card")
    parser.add_argument("--method", default=None, help="which method of a {'methods': ...} results file to read")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument("--license", default=None, help="license for the card's metadata")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request (debug level)")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bt2 push``; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    from ..hub.push import push_to_hub
    from ..modeling_bt2 import BT2Model

    try:
        model = BT2Model.from_pretrained(args.checkpoint_dir, local_files_only=True)
        card_kwargs = {k: v for k, v in (("method", args.method), ("license", args.license)) if v is not None}
        info = push_to_hub(
            model,
            args.repo_id,
            revision=args.revision,
            token=args.token,
            private=args.private,
            commit_message=args.commit_message,
            card_metrics=args.results,
            card_kwargs=card_kwargs,
        )
    except (OSError, ValueError) as error:
        print(f"bt2 push: {error}", file=sys.stderr)
        return 1
    print(f"Pushed {args.checkpoint_dir} to {args.repo_id} at commit {info.oid} ({info.commit_url}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
