"""``bt2 plan``: what an upgrade costs before it starts: re-embedding avoided, backfill schedule, memory, latency.

The re-embedding that a BT² model avoids is the whole gallery through the new model: gallery size ÷ the new model's
throughput (from ``bt2 embed``'s manifest, a number, or ``--calibrate MODEL`` on synthetic inputs), on the priced
GPU (``--gpu_speedup``: how much faster it is than the device the throughput was measured on). Index memory follows
the gallery format (flat and IVF-PQ); query latency is measured on a small synthetic gallery here and scaled by
each index's cost model (``--no_latency`` skips the measurement).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

logger = logging.getLogger(__name__)

EXAMPLES = """\
bt2 plan --count 100000000 --item_type image --old_dim 128 --new_dim 160 --new_throughput 2400 \\
    --gpu_price 2.5 --backfill_rate 500                          # 100M images, throughput measured on the GPU
bt2 plan --count 5000000 --item_type text --calibrate runs/bt2 --gpu_price 2.5 --gpu_speedup 20 \\
    --budget_per_day 30 --json                                   # measure the model here on synthetic sentences
bt2 plan --count 1000000 --item_type image --old_dim 64 --new_dim 80 --new_throughput emb_new/ \\
    --gpu_price 0 --no_latency                                   # throughput from `bt2 embed`'s manifest
"""


def _throughput(text: str):
    """A number of items/s, or an embedding directory whose manifest records one (read later)."""
    try:
        return float(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, required=True, help="gallery size (items)")
    parser.add_argument("--item_type", choices=["image", "text"], required=True)
    parser.add_argument("--old_dim", type=int, help="the old model's (gallery's) embedding width")
    parser.add_argument("--new_dim", type=int, help="the new model's full embedding width (old width + extra dims)")
    parser.add_argument(
        "--new_throughput",
        type=_throughput,
        help="the new model's embedding throughput: items/s, or an embedding directory of `bt2 embed`",
    )
    parser.add_argument("--old_throughput", type=_throughput, help="the old model's, for the record (items/s or dir)")
    parser.add_argument(
        "--calibrate",
        metavar="MODEL",
        help="measure the new model's throughput here on synthetic inputs (and read its widths)",
    )
    parser.add_argument("--calibrate_items", type=int, default=256, help="synthetic items to embed (default 256)")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size of the calibration (default 64)")
    parser.add_argument("--device", help="device of the calibration (default: CPU, or the model's)")
    parser.add_argument("--gpu_price", type=float, required=True, help="price of one GPU hour")
    parser.add_argument(
        "--gpu_speedup",
        type=float,
        default=1.0,
        help="the priced GPU's throughput over the measured device's (default 1: measured on it)",
    )
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--backfill_rate", type=float, help="backfill at this many items/s, around the clock")
    rate.add_argument("--budget_per_day", type=float, help="backfill with this much GPU money a day")
    parser.add_argument("--days", type=int, default=7, help="days of β listed in the schedule (default 7)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="vectors.npy's dtype")
    parser.add_argument("--nprobe", type=int, help="IVF lists probed (default: the galleries' 16)")
    parser.add_argument("--rerank", type=int, help="IVF-PQ candidates re-ranked exactly (default: 1000)")
    parser.add_argument("--no_latency", action="store_true", help="skip the search calibration (no latency)")
    parser.add_argument(
        "--calibration_size",
        type=int,
        default=50_000,
        help="vectors of the synthetic gallery timed for the latency model (default 50000)",
    )
    parser.add_argument("--calibration_queries", type=int, default=300)
    parser.add_argument(
        "--calibration_max_mib",
        type=int,
        default=256,
        help="flat search and re-ranking are timed on vector tables doubling up to this size, past the CPU caches "
        "(default 256)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    parser.add_argument("--output", help="also write the plan as JSON to this file")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def _mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB" if size < 2**30 else f"{size / 2**30:,.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86_400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def render(plan: dict) -> str:
    """The plan as readable lines (what ``bt2 plan`` prints without ``--json``)."""
    given = plan["inputs"]
    avoided = plan["reembedding_avoided"]
    lines = [
        f"Gallery: {given['count']:,} {given['item_type']}s, {given['old_dim']}-d (old) → {given['new_dim']}-d (new).",
        f"Re-embedding avoided by a compatible (BT²) model: {avoided['gpu_hours']:,.2f} GPU-hours "
        f"({_duration(avoided['seconds'])} at {avoided['items_per_second']:,.0f} items/s), cost {avoided['cost']:,.2f}.",
    ]  # fmt: skip
    if "backfill" in plan:
        schedule = plan["backfill"]
        lines.append(f"Backfill at {schedule['items_per_day']:,.0f} items/day: 100 % after "
                     f"{_duration(schedule['days_to_full'] * 86_400)} (GPU cost to 100 %: "
                     f"{schedule['cost_to_full']:,.2f}).")  # fmt: skip
        lines.append("  β reached after: " + ", ".join(f"{f:.0%} {_duration(d * 86_400)}"
                                                      for f, d in schedule["at_fraction"].items()))  # fmt: skip
        lines.append("  β by day:        " + ", ".join(f"day {d}: {b:.1%}" for d, b in schedule["by_day"].items()))
    lines.append("Memory (RAM = loaded index + ids; disk = the gallery directory, vectors memory-mapped):")
    for stage, label in (("old_gallery", "old gallery"), ("during_backfill_at_full", "backfill at 100 %"),
                         ("new_gallery", "new gallery")):  # fmt: skip
        for kind, memory in plan["memory"][stage].items():
            lines.append(f"  {label:<18} {kind:<6} RAM {_mib(memory['ram']):>12}   disk {_mib(memory['disk']):>12}")
    if "latency" in plan:
        latency = plan["latency"]
        calibration = latency["calibration"]
        single = latency.get("one_at_a_time")
        lines.append(f"Query latency per query ({calibration['threads']} thread(s), calibrated on "
                     f"{calibration['count']:,} × {calibration['dimension']}; flat scans and re-ranking timed up to "
                     f"{_mib(4 * calibration['flat_scan'][-1][0])}):")  # fmt: skip
        lines.append(
            f"  {'':<25} {'one at a time' if single else '':>14} {'in batches of ' + str(calibration['queries']):>18}"
        )
        for stage, label in (("old_gallery", "old gallery"), ("new_gallery", "new gallery")):
            for kind, batched in latency[stage].items():
                alone = f"{1000 * single[stage][kind]['seconds_per_query']:11.3f} ms" if single else ""
                lines.append(f"  {label:<18} {kind:<6} {alone:>14} {1000 * batched['seconds_per_query']:15.3f} ms")
    return "\n".join(lines)


def run(args) -> dict:
    from bt2_hf.galleries.plan import (
        PlanInputError,
        calibrate_embedding,
        calibrate_searches,
        latency_estimates,
        make_plan,
        read_throughput,
    )

    old_dim, new_dim, throughput = args.old_dim, args.new_dim, args.new_throughput
    calibration_record = None
    if args.calibrate:
        if throughput is not None:
            raise PlanInputError("Give either --new_throughput or --calibrate MODEL, not both.")
        from bt2_hf import BT2Model

        model = BT2Model.from_pretrained(args.calibrate)
        if model.modality != args.item_type:
            raise PlanInputError(f"--calibrate {args.calibrate} embeds {model.modality}s, but --item_type is "
                                 f"{args.item_type}: calibrate the model that embeds the gallery's items.")  # fmt: skip
        new_dim = new_dim or int(model.config.embedding_dim)
        entries = getattr(model.config, "compatible_with", None) or []
        if old_dim is None and entries:
            old_dim = int(entries[0]["embedding_dim"])
        calibration_record = calibrate_embedding(model, items=args.calibrate_items, batch_size=args.batch_size,
                                                 device=args.device)  # fmt: skip
        throughput = calibration_record["items_per_second"]
    if throughput is None:
        raise PlanInputError("Give the new model's throughput: --new_throughput ITEMS_PER_S (or an embedding "
                             "directory of `bt2 embed`), or --calibrate MODEL.")  # fmt: skip
    if isinstance(throughput, str):
        throughput = read_throughput(throughput)
    old_throughput = args.old_throughput
    if isinstance(old_throughput, str):
        old_throughput = read_throughput(old_throughput)
    if old_dim is None or new_dim is None:
        raise PlanInputError("Give the embedding widths: --old_dim and --new_dim (or --calibrate a BT² model).")
    plan = make_plan(
        args.count, item_type=args.item_type, old_dim=old_dim, new_dim=new_dim, new_items_per_second=throughput,
        old_items_per_second=old_throughput, gpu_price_per_hour=args.gpu_price, speedup=args.gpu_speedup,
        backfill_rate=args.backfill_rate, budget_per_day=args.budget_per_day, dtype_bytes=4 if args.dtype ==
        "float32" else 2, days=args.days,
    )  # fmt: skip
    if not args.no_latency:  # after every input was checked: the measurement takes seconds
        logger.info(f"Timing search on a synthetic {args.calibration_size:,} × {old_dim} gallery and on vector tables "
                    f"up to {args.calibration_max_mib} MiB (10-20 s on a CPU; --no_latency skips it)...")  # fmt: skip
        searches = calibrate_searches(old_dim, count=args.calibration_size, queries=args.calibration_queries,
                                      nprobe=args.nprobe or 16, rerank=args.rerank or 1000,
                                      ladder_bytes=args.calibration_max_mib << 20)  # fmt: skip
        plan["latency"] = latency_estimates(searches, args.count, old_dim, new_dim, nprobe=args.nprobe,
                                            rerank=args.rerank)  # fmt: skip
    if calibration_record is not None:
        plan["embedding_calibration"] = calibration_record
    return plan


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    from bt2_hf.errors import BT2InputError

    try:
        plan = run(args)
    except (BT2InputError, ValueError, FileNotFoundError) as error:
        print(f"bt2 plan: {error}", file=sys.stderr)
        return 2
    if args.output:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(args.output, plan)
    print(json.dumps(plan) if args.json else render(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
