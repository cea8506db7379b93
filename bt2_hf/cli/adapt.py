"""``bt2 adapt``: fit a post-hoc adapter from a new model's space into an old model's, and save the adapted model.

Both models embed the same training items (images of a class data set, or texts); the adapter (Procrustes,
low-rank affine or residual MLP) is fitted on the pairs and saved with the new model as one query model (config,
safetensors weights with the adapter's, fingerprint, model card) into --output, atomically. Its embeddings are in
the old model's space; like any new model it searches an old gallery only after `bt2 verify` measured it there.

Text training items: a .jsonl file (one object a line with a "text" field, or --text_field), a .txt file (one text
a line) or a datasets folder written by save_to_disk (its --split, column --text_field). Image training items: any
--data of `bt2 train` (fashion_mnist, an IDX directory, an imagefolder, a save_to_disk folder, a Hub id).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

logger = logging.getLogger(__name__)

KINDS = ("procrustes", "low_rank_affine", "residual_mlp")

EXAMPLES = """\
bt2 adapt runs/mpnet --old runs/minilm --data train_texts.jsonl --kind procrustes --output runs/mpnet-adapted
bt2 adapt runs/new-cnn --old runs/old-cnn --data fashion_mnist --split train --kind low_rank_affine --rank 32 \\
    --output runs/new-cnn-adapted
bt2 verify runs/mpnet-adapted --old runs/minilm --data reverse_dictionary/ --split test   # then measure it
"""


def build_parser() -> argparse.ArgumentParser:
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="bt2 adapt", description="\n\n".join([paragraphs[0], paragraphs[2]]))
    parser.add_argument("new", help="the new model (a checkpoint directory or a Hub id)")
    parser.add_argument("--old", required=True, help="the old model, whose space (and galleries) to map into")
    parser.add_argument("--data", required=True, help="the paired training items (see above); never held-out data")
    parser.add_argument("--kind", required=True, choices=KINDS, help="the adapter")
    parser.add_argument("--output", required=True, help="directory of the adapted model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--split", default="train", help="the split of --data to fit on (default: train)")
    parser.add_argument("--text_field", default="text", help="the texts' field or column (default: text)")
    parser.add_argument("--data_dir", help="directory of the Fashion-MNIST IDX files for --data fashion_mnist")
    parser.add_argument("--dataset_name", help="the training data's name to record (default: --data)")
    parser.add_argument("--max_items", type=int, help="fit on at most this many items (a seeded subset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and of the residual MLP's training")
    parser.add_argument("--rank", type=int, help="low_rank_affine: the rank bound (default: full rank)")
    parser.add_argument("--ridge", type=float, help="low_rank_affine: the L2 penalty (default 1e-3)")
    parser.add_argument("--hidden_dim", type=int, help="residual_mlp: the hidden width (default 256)")
    parser.add_argument("--epochs", type=int, help="residual_mlp: training epochs (default 30)")
    parser.add_argument("--learning_rate", type=float, help="residual_mlp: AdamW learning rate (default 1e-3)")
    parser.add_argument("--old_name", help="the old model's name to record, e.g. its Hub id (default: --old)")
    parser.add_argument("--old_revision", help="the old model's Hub revision to record")
    parser.add_argument("--repo_id", help="the Hub id the card's usage snippet shows")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print what was recorded (config.adapter) as JSON")
    return with_examples(snake_case_flags(parser), EXAMPLES)


_OWN_ARGUMENTS = {
    "procrustes": (),
    "low_rank_affine": ("rank", "ridge"),
    "residual_mlp": ("hidden_dim", "epochs", "learning_rate"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bt2 adapt``; returns the exit status (2 on bad input)."""
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    given = {name: getattr(args, name) for names in _OWN_ARGUMENTS.values() for name in names}
    given = {name: value for name, value in given.items() if value is not None}
    foreign = sorted(set(given) - set(_OWN_ARGUMENTS[args.kind]))
    if foreign:
        flags = ", ".join(f"--{name}" for name in foreign)
        print(f"bt2 adapt: {flags} do(es) not apply to --kind {args.kind}.", file=sys.stderr)
        return 2
    adapter_kwargs = dict(given)
    if args.kind == "residual_mlp":
        adapter_kwargs["seed"] = args.seed
    from bt2_hf.adapt import adapt_model, adapt_summary_lines
    from bt2_hf.errors import BT2InputError

    try:
        result = adapt_model(
            args.new, args.old, args.data, args.kind, args.output, split=args.split, text_field=args.text_field,
            data_dir=args.data_dir, dataset_name=args.dataset_name, max_items=args.max_items, seed=args.seed,
            adapter_kwargs=adapter_kwargs, old_name=args.old_name, old_revision=args.old_revision,
            batch_size=args.batch_size, device=args.device, overwrite=args.overwrite, repo_id=args.repo_id,
        )  # fmt: skip
    except (BT2InputError, ValueError, FileNotFoundError, FileExistsError, OSError) as error:
        print(f"bt2 adapt: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.model.config.adapter, indent=2))
    else:
        for line in adapt_summary_lines(result):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
