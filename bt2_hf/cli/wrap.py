"""``bt2 wrap``: turn a sentence-transformers text encoder (a local folder or a Hub id) into a bt2_hf checkpoint.

The checkpoint embeds exactly as the encoder does (its transformer, tokenizer, pooling and truncation; an identity
head; unit-norm rows, :meth:`bt2_hf.BT2Model.from_sentence_transformers`), and is saved with its fingerprint and a
model card into --output, atomically. It is then a model every other command takes: `bt2 embed` and `bt2 index build`
for the gallery it serves, `bt2 verify --old` and `bt2 adapt --old` for the models meant to replace it.
"""

from __future__ import annotations

import argparse
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

EXAMPLES = """\
bt2 wrap path/to/all-MiniLM-L6-v2 --output models/minilm
bt2 wrap sentence-transformers/all-mpnet-base-v2 --output models/mpnet      # a Hub id (downloaded once)
bt2 embed --model models/minilm --data corpus.jsonl --column text --output emb/minilm
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 wrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a sentence-transformers folder, or a Hub id")
    parser.add_argument("--output", required=True, help="directory of the bt2_hf checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--revision", help="the Hub revision of a Hub id")
    parser.add_argument("--local_files_only", action="store_true", help="never download (a Hub id must be cached)")
    parser.add_argument("--repo_id", help="the Hub id the card's usage snippet shows")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bt2 wrap``; returns the exit status (2 on bad input)."""
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    from bt2_hf import BT2Model
    from bt2_hf.errors import BT2InputError
    from bt2_hf.hub.card import create_or_update_model_card
    from bt2_hf.utils.io import atomic_directory

    try:
        model = BT2Model.from_sentence_transformers(
            args.source, revision=args.revision, local_files_only=args.local_files_only
        )
        with atomic_directory(args.output, overwrite=args.overwrite) as staging:
            model.save_pretrained(staging)
            create_or_update_model_card(staging, repo_id=args.repo_id)
    except (BT2InputError, ValueError, FileNotFoundError, FileExistsError, OSError) as error:
        print(f"bt2 wrap: {error}", file=sys.stderr)
        return 2
    config = model.config
    print(f"wrapped {args.source} → {args.output}")
    print(f"  {config.backbone_config.get('model_type')} encoder, {config.pooling} pooling, "
          f"{config.embedding_dim}-d unit embeddings, truncation at {model.processor.model_max_length} tokens")  # fmt: skip
    print(f"  fingerprint {config.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
