"""``bt2 demo``: the end-to-end story on any image set (old CNN gallery; independent, BCT and BT² ViTs), with a verdict."""

from __future__ import annotations

import argparse
import sys

from ._flags import hub_namespace, snake_case_flags, with_examples
from ._output import configure_logging

EXAMPLES = """\
bt2 demo --output_dir bt2_demo_output                 # Fashion-MNIST, CPU-sized (minutes)
bt2 demo --tiny --output_dir /tmp/bt2_smoke               # seconds; the numbers are noise
bt2 demo --full --device cuda --seeds 3                   # the GPU-sized run, mean ± sd over 3 seeds
bt2 demo --data_dir my_photos/ --dataset_name my-photos   # any imagefolder (one sub-directory per class)
bt2 demo --hub_namespace my-org                           # cards name my-org/<data set>-<model> repos
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt2 demo",
        description="Train an old CNN on the first half of a data set's classes and three new ViTs on all of them "
        "(independent, BCT, BT²) for the same number of optimizer steps, evaluate old/old, new/old and new/new "
        "retrieval, say whether to upgrade, and save plots, results.json and Hub-ready checkpoints with model cards. "
        "Default data: Fashion-MNIST.",
    )
    parser.add_argument(
        "--output_dir", "--output", dest="output", metavar="DIR", default="bt2_demo_output",
        help="Output directory (default: %(default)s). --output is the older spelling, kept as an alias.",
    )  # fmt: skip
    parser.add_argument(
        "--data_dir",
        "--data-dir",
        dest="data_dir",
        default=None,
        help="A directory of IDX files (train-/t10k-images-idx3-ubyte[.gz] …; class names from class_names.txt), "
        "an imagefolder (one sub-directory per class, optionally under train/ and test/), a save_to_disk "
        "directory, or a Hub dataset id. Default: /usr/share/datasets/fashion-mnist from "
        "`apt-get install dataset-fashion-mnist`.",
    )
    parser.add_argument(
        "--dataset_name",
        "--dataset-name",
        dest="dataset_name",
        default=None,
        help="The name used in titles, repo ids and cards (default: the directory's name or the Hub id).",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="Default: cuda when available.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="The GPU-sized run (all data, wider models, 7030 steps).")
    size.add_argument("--tiny", action="store_true", help="A seconds-long smoke run (few images; numbers are noise).")
    parser.add_argument(
        "--new_steps", "--new-steps", dest="new_steps", type=int, default=None,
        help="Optimizer steps of the independent new model, and of every new model with --from_scratch (default: "
        "the size's, 600 on CPU).",
    )  # fmt: skip
    parser.add_argument(
        "--finetune_steps", "--finetune-steps", dest="finetune_steps", type=int, default=None,
        help="Optimizer steps BT², BCT and the independent model's twin fine-tune it for (default: the size's, 1000 "
        "on CPU).",
    )  # fmt: skip
    parser.add_argument(
        "--train_fraction", "--train-fraction", dest="train_fraction", type=float, default=1.0,
        help="Train on this class-balanced fraction of the training split (e.g. 0.125); the step budget is unchanged.",
    )  # fmt: skip
    parser.add_argument(
        "--from_scratch", "--from-scratch", dest="from_scratch", action="store_true",
        help="Train BT² (and BCT) from scratch for --new_steps, measured against the independent model of as many "
        "steps, instead of fine-tuning the independent model for --finetune_steps more (the default).",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="Replace a finished run of another size or data set in the output directory (refused without it).",
    )  # fmt: skip
    parser.add_argument(
        "--baselines", action="store_true",
        help="Also train BCT, the paper's baseline (one more new model: about a third more time).",
    )  # fmt: skip
    parser.add_argument(
        "--validation", action="store_true",
        help="Report on a validation split carved from the training split (to choose settings; never the test split).",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="The first seed (default: %(default)s).")
    parser.add_argument("--seeds", type=int, default=1, help="Run this many seeds and report mean ± sd.")
    parser.add_argument(
        "--hub_namespace", "--hub-namespace", dest="hub_namespace", default="bt2-hf-demo", type=hub_namespace,
        help="Hub user or organisation named in the cards' repo ids (letters, digits, '-', '_', '.').",
    )  # fmt: skip
    return with_examples(snake_case_flags(parser), EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    from dataclasses import replace

    from rich.console import Console

    from ..experiments.demo import DemoSize, run_demo
    from ..experiments.report import results_table, seeds_table, summary_lines

    console = Console(width=max(110, Console().width))
    try:
        size = DemoSize.full() if args.full else DemoSize.tiny() if args.tiny else DemoSize()
        changes = {
            "train_fraction": args.train_fraction,
            "start_from_independent": not args.from_scratch,
            "baselines": args.baselines,
        }
        if args.new_steps is not None:
            changes["new_steps"] = args.new_steps
        if args.finetune_steps is not None:
            changes["finetune_steps"] = args.finetune_steps
        size = replace(size, **changes)
        result = run_demo(
            args.output,
            data_dir=args.data_dir,
            dataset_name=args.dataset_name,
            device=args.device,
            size=size,
            seed=args.seed,
            seeds=args.seeds,
            validation=args.validation,
            hub_namespace=args.hub_namespace,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, ValueError) as error:  # missing data, no CUDA device: say what to do, no traceback
        # One unwrapped line: paths in the message stay whole (copy-pasteable), and brackets in them are not markup.
        console.print(f"bt2 demo: {error}", style="red", soft_wrap=True, markup=False, highlight=False)
        return 2
    summary = result.results
    console.print(results_table(summary))
    if len(summary["seeds"]["seeds"]) > 1:
        console.print(seeds_table(summary))
    for order, curve in summary["backfill"].items():
        console.print(
            f"Partial backfill, {order} order: top-1 area {curve['area_top1']:.2f} under the gallery's slot rule "
            f"(naive scores {curve['area_top1_naive']:.2f}); lowest point vs new → old {curve['least_minus_new_old']:+.2f}"
        )
    console.print(
        f"Wrote {result.output_dir}/results.json, plots/ ({', '.join(p.name for p in result.plots.values())})"
    )
    console.print(f"Checkpoints with cards: {', '.join(str(p) for p in result.model_dirs.values())}")
    timings = summary["timings_s"]
    console.print(f"Time (first seed): {timings['total']:.0f} s wall, {timings['cpu']:.0f} s CPU")
    for line in summary_lines(summary):
        console.print(line, highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
