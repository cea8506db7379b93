"""Backfill curves of a real old/new pair under the naive and the slot-preserving mixed-gallery rules.

    python benchmarks/backfill_curves.py --old out/models/old --new out/models/bt2 [--data DIR] [--output curves.json]

Queries = gallery = the Fashion-MNIST test split, leave-one-out (the demo's protocol). For each order (``random``;
``centroid-distance``, the demo's priority order: items farthest from their class centroid first) and each rule
(``naive``: new/new and new/old cosines in one sort, as :func:`bt2_hf.retrieval.backfill.backfill_curve` does;
``slots``: :mod:`bt2_hf.galleries.mixed`), prints top-1 at β = 0, 0.1, …, 1 and the least margin over new→old.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--output")
    args = parser.parse_args()

    from bt2_hf import BT2Model
    from bt2_hf.data.fashion_mnist import load_fashion_mnist
    from bt2_hf.galleries import mixed_backfill_curves
    from bt2_hf.galleries.embed import encode_items

    data = load_fashion_mnist(args.data, args.split)
    images, labels = data.images[: args.limit], data.labels[: args.limit].numpy()
    old, new = BT2Model.from_pretrained(args.old), BT2Model.from_pretrained(args.new)
    old_embeddings, new_embeddings = encode_items(old, images, 512), encode_items(new, images, 512)
    prefix = old.config.embedding_dim
    results = {}
    for order in ("random", "centroid-distance"):
        curves = mixed_backfill_curves(old_embeddings, new_embeddings, labels, prefix, order=order)
        for rule, curve in curves.items():
            results[f"{order}/{rule}"] = curve
            floor = curve["top1"][0]
            print(f"{order:>17} {rule:>5}: " + " ".join(f"{v:5.1f}" for v in curve["top1"])
                  + f"  area {curve['area']:.2f}  least − new→old {min(curve['top1']) - floor:+.2f}")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
