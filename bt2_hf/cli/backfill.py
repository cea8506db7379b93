"""``bt2 backfill``: re-embed a fraction of a gallery with a newer model, in place and crash-safe.

Examples::

    bt2 backfill --index gallery/ --model new_model/ --data /usr/share/datasets/fashion-mnist --split all \\
        --fraction 0.1 --order priority
    bt2 backfill --index gallery/ --model new_model/ --data /usr/share/datasets/fashion-mnist --split all \
        --fraction 0.5                    # continues in the recorded (priority) order
    bt2 backfill --index galleries.db --collection fashion --model new_model/ --data ... --fraction 0.1  # Milvus
    bt2 backfill --index gallery/ --model new_model/ --data ... --fraction 1.0 --finalize

Run it again with a larger ``--fraction`` to continue, or with the same one after an interruption: it resumes at
the last completed batch, in the order the gallery recorded when the backfill started (no need to repeat
``--order``). ``--index`` is a gallery directory, or a Milvus URI (a milvus-lite ``.db`` file or ``http://…``) with
``--collection``. ``--finalize`` (at fraction 1) makes the gallery a plain gallery of the new model.
"""

from __future__ import annotations

import argparse
import json
import sys

from ._flags import snake_case_flags
from ._output import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt2 backfill",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--index", required=True, help="gallery directory, or a Milvus URI (.db file, http://…)")
    parser.add_argument("--collection", help="Milvus collection name (with a Milvus URI)")
    parser.add_argument("--model", required=True, help="the new model's checkpoint directory (or Hub id)")
    parser.add_argument("--data", required=True, help="the gallery's dataset (as given to `bt2 embed`)")
    parser.add_argument("--split")
    parser.add_argument("--column")
    parser.add_argument("--id-column")
    parser.add_argument("--fraction", type=float, required=True, help="backfilled fraction to reach, in [0, 1]")
    parser.add_argument(
        "--order",
        choices=["random", "priority"],
        help="order of a new backfill (default random); a backfill in progress continues in its recorded order",
    )
    parser.add_argument("--seed", type=int, help="seed of a new backfill's order (default 0; recorded)")
    parser.add_argument("--batch-size", type=int, default=1024, help="items per committed batch")
    parser.add_argument("--embed-batch-size", type=int, default=256, help="items per forward pass")
    parser.add_argument("--device")
    parser.add_argument("--finalize", action="store_true", help="at fraction 1: rebuild as the new model's gallery")
    parser.add_argument("--allow-unmeasured", action="store_true", help="accept declared, unmeasured compatibility")
    parser.add_argument("--no-progress", action="store_true")
    return snake_case_flags(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    from bt2_hf import BT2Model
    from bt2_hf.compatibility import IncompatibleModelsError
    from bt2_hf.galleries import GalleryError, GallerySourceError, backfill, finalize_backfill
    from bt2_hf.galleries.stores import open_gallery

    try:
        store = open_gallery(args.index, collection=args.collection)
        model = BT2Model.from_pretrained(args.model)
        state = backfill(
            store, model, args.data, fraction=args.fraction, order=args.order, seed=args.seed,
            batch_size=args.batch_size, embed_batch_size=args.embed_batch_size, device=args.device, split=args.split,
            column=args.column, id_column=args.id_column, allow_unmeasured=args.allow_unmeasured,
            show_progress=not args.no_progress,
        )  # fmt: skip
        if args.finalize:
            finalize_backfill(store)
            state = dict(state, finalized=True)
    except (GalleryError, GallerySourceError, IncompatibleModelsError, ValueError, FileNotFoundError) as error:
        print(f"bt2 backfill: {error}", file=sys.stderr)
        return 2
    from bt2_hf.galleries.mixed import DEFAULT_RULE

    summary = {key: state.get(key) for key in ("done", "count", "target", "order", "finalized")}
    # Searches of the partly backfilled gallery rank by this rule unless asked otherwise (`bt2 index search --rule`).
    summary["search_rule"] = None if state.get("finalized") else DEFAULT_RULE
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
