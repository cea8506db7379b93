"""``bt2 verify``: measure whether a new model may search an old model's galleries, and record it in its config.

Embeds a named held-out split with both models (and an independent one), evaluates old→old, new→old and new→new
with the one evaluator, judges ``M(new→old) > M(old→old)`` on top-1 and mAP, and writes a measured
``compatible_with`` entry (data set, split, size, hash, metrics, criterion, margin, date, version) into
``NEW/config.json``, then refreshes ``NEW/README.md``. A failing criterion is recorded as failing; the command then
exits with status 1 (0 when it passes, 2 on bad input).

Examples::

    bt2 verify out/bt2 --old out/old --data fashion_mnist --split test
    bt2 verify out/bt2 --old org/old-model --data path/to/imagefolder --split validation --independent out/indep
"""

from __future__ import annotations

import argparse
import logging
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

logger = logging.getLogger(__name__)


EXAMPLES = """\
bt2 verify bt2_demo_output/models/bt2 --old bt2_demo_output/models/old --data fashion_mnist --split test
bt2 verify runs/new --old runs/old --data my_photos/ --split test --independent runs/independent
bt2 verify runs/new --old my-org/old-model --data fashion_mnist --split test --no_write   # measure, write nothing
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 verify", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "new", help="the new (query) model: a checkpoint directory (or a Hub id, then nothing is written)"
    )
    parser.add_argument("--old", required=True, help="the old model whose galleries the new model should search")
    parser.add_argument(
        "--data",
        required=True,
        help="held-out data: 'fashion_mnist', a directory (IDX, imagefolder, save_to_disk) or a Hub id",
    )
    parser.add_argument("--split", default="test", help="the held-out split's name (never the training split)")
    parser.add_argument("--independent", help="an independently trained new model (adds update gain and tax)")
    parser.add_argument("--data_dir", help="directory of the Fashion-MNIST IDX files for --data fashion_mnist")
    parser.add_argument("--dataset_name", help="the data set's name to record (default: --data)")
    parser.add_argument("--max_per_class", type=int, help="evaluate on at most this many items of each class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max_per_class subsample")
    parser.add_argument("--old_name", help="the old model's name to record, e.g. its Hub id (default: --old)")
    parser.add_argument("--old_revision", help="the old model's Hub revision to record")
    parser.add_argument("--method", help="how the new model was trained (default: its config.training.method)")
    parser.add_argument("--criterion_metrics", default="top1,mAP", help="metrics the criterion must hold on")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no_write", action="store_true", help="measure and print only; leave config.json as it is")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing measurement on more items or another split (recorded in the entry)",
    )
    parser.add_argument("--output", help="also write the verification (entry + PairReport) to this JSON file")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    from bt2_hf.compatibility import CompatibilityMetadataError, IncompatibleModelsError
    from bt2_hf.verify import summary_lines, verify_compatibility

    try:
        result = verify_compatibility(
            args.new,
            args.old,
            args.data,
            args.independent,
            split=args.split,
            data_dir=args.data_dir,
            dataset_name=args.dataset_name,
            max_per_class=args.max_per_class,
            seed=args.seed,
            criterion_metrics=[m.strip() for m in args.criterion_metrics.split(",") if m.strip()],
            old_name=args.old_name,
            old_revision=args.old_revision,
            method=args.method,
            batch_size=args.batch_size,
            device=args.device,
            write=not args.no_write,
            replace=args.replace,
        )
    except (
        ValueError,
        FileNotFoundError,
        OSError,
        TypeError,
        IncompatibleModelsError,
        CompatibilityMetadataError,
    ) as error:
        print(f"bt2 verify: {error}", file=sys.stderr)
        return 2
    for line in summary_lines(result):
        print(line)
    if result.written_to is not None:
        replaced = result.entry.get("replaced")
        note = (
            f" (replacing the measurement on {replaced['dataset'].get('size')} items, --replace)" if replaced else ""
        )
        print(f"recorded in {result.written_to}{note}")
    elif args.no_write:
        print("not recorded (--no_write): config.json is unchanged")
    if args.output:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(args.output, result.to_dict())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
