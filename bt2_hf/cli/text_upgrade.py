"""``bt2 text-upgrade``: all-MiniLM-L6-v2 → all-mpnet-base-v2 on the WordNet reverse dictionary: re-embedding, post-hoc
adapters and (when installed) BCT / BT² heads, measured on one test split (see :mod:`bt2_hf.experiments.text_upgrade`)."""

from __future__ import annotations

import argparse
import sys

from ._output import configure_logging

EXAMPLES = """\
bt2 text-upgrade --new_model ~/.cache/bt2_hf/models/all-mpnet-base-v2 --output_dir runs/minilm_to_mpnet
bt2 text-upgrade --new_model DIR --old_model DIR --num_documents 2000 --test_queries 300 --output_dir runs/small
"""


def build_parser(prog: str = "bt2 text-upgrade") -> argparse.ArgumentParser:
    from ._flags import snake_case_flags, with_examples

    defaults = _defaults()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare re-embedding, post-hoc adapters and BT²/BCT heads for a MiniLM → MPNet upgrade on a real "
        "offline retrieval set (WordNet definitions → the words they define).",
    )
    add = parser.add_argument
    add("--output_dir", required=True, help="Where results.json, results.md and the plot go.")
    add("--new_model", required=True, help="The new encoder's local folder (all-mpnet-base-v2; see the recipe).")
    add("--old_model", default=None, help="The old encoder's local folder (default: the packaged all-MiniLM-L6-v2).")
    add("--wordnet_dir", default=None, help="WordNet database folder (default: Debian's /usr/share/wordnet).")
    add("--num_documents", type=int, default=defaults.num_documents, help="Documents in the corpus.")
    add("--train_queries", type=int, default=defaults.train_queries)
    add("--validation_queries", type=int, default=defaults.validation_queries)
    add("--test_queries", type=int, default=defaults.test_queries)
    add("--split_seed", type=int, default=defaults.split_seed, help="Hash seed of the splits.")
    add("--seeds", type=int, nargs="+", default=defaults.seeds, help="Seeds of what is trained (MLP adapter, heads).")
    add("--cache_dir", default=defaults.cache_dir, help="Embedding cache (keyed by model fingerprint and texts).")
    add("--batch_size", type=int, default=defaults.batch_size, help="Texts per forward pass when embedding.")
    add("--k", type=int, default=defaults.k, help="Cut-off of Recall@K, MRR@K, nDCG@K.")
    add("--ranks", type=int, nargs="+", default=defaults.ranks, help="Low-rank adapter ranks tried on validation.")
    add("--fit_on", nargs="+", default=defaults.fit_on, choices=["queries", "queries+documents"],
        help="Adapter training pairs tried on validation.")  # fmt: skip
    add("--mlp_hidden_dim", type=int, default=defaults.mlp_hidden_dim)
    add("--mlp_epochs", type=int, default=defaults.mlp_epochs)
    add("--head_steps", type=int, default=defaults.head_steps, help="Steps of the BT²/BCT heads (when installed).")
    add("--no_backfill", dest="backfill", action="store_false", help="Skip the backfill curves.")
    add("--overwrite", action="store_true", help="Replace an existing output_dir.")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def _defaults():
    from ..experiments.text_upgrade_settings import TextUpgradeSettings

    return TextUpgradeSettings(output_dir="")


def main(argv: list[str] | None = None, prog: str = "bt2 text-upgrade") -> int:
    args = build_parser(prog).parse_args(argv)  # before the heavy imports: --help answers at once
    from ..errors import BT2InputError
    from ..experiments.text_upgrade import TextUpgradeSettings, run_text_upgrade

    configure_logging(format="%(asctime)s %(name)s: %(message)s")
    try:
        results = run_text_upgrade(TextUpgradeSettings(**vars(args)))
    except (BT2InputError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results["table"])
    print()
    print(results["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
