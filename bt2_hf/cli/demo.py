"""``bt2 demo``: the end-to-end Fashion-MNIST story (old CNN gallery; independent, BCT and BT² ViTs)."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt2 demo",
        description="Train an old CNN on Fashion-MNIST classes 0-4 and three new ViTs on all classes (independent, "
        "BCT, BT²), evaluate old/old, new/old and new/new retrieval, and save plots, results.json and Hub-ready "
        "checkpoints with model cards.",
    )
    parser.add_argument("--output", default="bt2_demo_output", help="Output directory (default: %(default)s).")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Directory with the four Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist from "
        "`apt-get install dataset-fashion-mnist`).",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="Default: cuda when available.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="The GPU-sized run (all data, wider models, 30 epochs).")
    size.add_argument("--tiny", action="store_true", help="A seconds-long smoke run (few images; numbers are noise).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hub-namespace", default="bt2-hf-demo", help="Namespace used in the cards' repo ids.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from rich.console import Console

    from ..demo import DemoSize, results_table, run_demo

    size = DemoSize.full() if args.full else DemoSize.tiny() if args.tiny else DemoSize()
    console = Console(width=max(110, Console().width))
    try:
        result = run_demo(
            args.output,
            data_dir=args.data_dir,
            device=args.device,
            size=size,
            seed=args.seed,
            hub_namespace=args.hub_namespace,
        )
    except (FileNotFoundError, ValueError) as error:  # missing data, no CUDA device: say what to do, no traceback
        console.print(f"[red]bt2 demo: {error}[/red]")
        return 2
    console.print(results_table(result.results))
    summary = result.results
    console.print(
        "Update gain (top-1): " + ", ".join(f"{m} {v['top1']:+.1f}%" for m, v in summary["update_gain"].items())
    )
    console.print(f"Backfill area (top-1, random order): {summary['backfill']['random']['area_top1']:.2f}")
    console.print(
        f"Wrote {result.output_dir}/results.json, plots/ ({', '.join(p.name for p in result.plots.values())})"
    )
    console.print(f"Checkpoints with cards: {', '.join(str(p) for p in result.model_dirs.values())}")
    console.print(f"Total time: {summary['timings_s']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
