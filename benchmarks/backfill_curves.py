"""Backfill curves of a real old/new pair under the mixed-gallery rules, side by side.

    python benchmarks/backfill_curves.py --old out/models/old --new out/models/bt2 [--split test] [--output c.json]
    python benchmarks/backfill_curves.py --old val/models/old --new val/models/bt2 --split validation   # choosing

Queries = gallery = the Fashion-MNIST test split, leave-one-out (the demo's protocol); ``--split validation`` uses
the validation split that ``bt2 demo --validation`` carves from the training split (the one to choose settings on:
run it with that run's models). For each order (``random``, ``--random_seeds`` of them; ``centroid-distance``, the
demo's priority order: items farthest from their class centroid first; ``priority``, the galleries' label-free one)
and each rule of :mod:`bt2_hf.galleries.mixed` (``calibrated``; ``slots``, the galleries' default; ``naive``: new/new
and new/old cosines in one sort; ``compatible``, ranked as defined on every order although the galleries apply it to
random orders only; ``adaptive``: naive scoring on a random order from 5 % re-embedded, the slot rule otherwise),
prints top-1 at β = 0, 0.1, …, 1 (``--small_betas``: 0.005 to 0.05 too), the area along β and the least margin over
new → old (β = 0), as a table; ``--plot`` writes the curves as a PNG.

``--learned``: learned mixing (:mod:`bt2_hf.galleries.relevance_calibration`) against the slot rule and naive
scoring, in two folds: the split's items are halved (seeded), the maps are fitted on one half (its items as queries
and gallery, leave-one-out) and every rule is measured on the other half as a gallery of its own, then the halves
swap; random orders with seeds 0–4 (mean ± sd of the area; the lowest point minus new → old of the worst seed), the
centroid-distance and the priority order; β = 0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, …, 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDERS = ("random", "centroid-distance", "priority")
LEARNED_BETAS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def load_split(data_dir: str, split: str):
    """Images and labels of the test split, or of the demo's validation split carved from the training split."""
    from bt2_hf.data.fashion_mnist import load_fashion_mnist

    if split != "validation":
        data = load_fashion_mnist(data_dir, split)
        return data.images, data.labels.numpy()
    from bt2_hf.experiments.demo import VALIDATION_SEED, DemoSize
    from bt2_hf.experiments.demo_data import load_demo_data, split_off

    train = load_demo_data(data_dir).train
    _, held_out = split_off(train, DemoSize().validation_fraction, seed=VALIDATION_SEED)
    return held_out.images, held_out.labels.numpy()


def plot(results: dict, path: Path, new_to_old: float, new_to_new: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(ORDERS), figsize=(11, 4.2), sharey=True)
    styles = {
        "calibrated": ("#2ca02c", "-", "o"),
        "slots": ("#1f77b4", "-", "s"),
        "naive": ("#d62728", "--", "."),
        "compatible": ("#9467bd", "-", "^"),
        "adaptive": ("#ff7f0e", "-", "d"),
    }
    for axes, order in zip(panels, ORDERS):
        for rule, (colour, line, marker) in styles.items():
            curve = results.get(f"{order}/{rule}")
            if curve:
                axes.plot(curve["betas"], curve["top1"], color=colour, linestyle=line, marker=marker,
                          label=f"{rule} (area {curve['area']:.1f})")  # fmt: skip
        for value, label in ((new_to_old, "new → old"), (new_to_new, "new → new")):
            axes.axhline(value, color="#777777", linewidth=0.8, linestyle=":")
            axes.annotate(label, (1.0, value), textcoords="offset points", xytext=(-4, 3), ha="right", fontsize=7)
        axes.set_title(f"{order} order")
        axes.set_xlabel("backfilled fraction β")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    panels[0].set_ylabel("top-1 (%)")
    figure.suptitle("Partial backfill: new queries over a mixed gallery, by ranking rule")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def learned_comparison(old_embeddings, new_embeddings, labels, prefix: int, seeds: int = 5) -> dict:
    """Slots, naive and learned mixing in two folds (see the module docstring): ``{fold/order/seed: curves}``."""
    import numpy as np

    from bt2_hf.galleries import fit_relevance_calibration, mixed_backfill_curves

    halves = np.array_split(np.random.default_rng(0).permutation(len(labels)), 2)
    results = {}
    for fold, (fit_rows, measured_rows) in enumerate((halves, halves[::-1])):
        fit_rows, measured_rows = np.sort(fit_rows), np.sort(measured_rows)
        relevance = fit_relevance_calibration(new_embeddings[fit_rows][:, :prefix], old_embeddings[fit_rows],
                                              new_embeddings[fit_rows], new_embeddings[fit_rows],
                                              query_labels=labels[fit_rows])  # fmt: skip
        print(f"fold {fold}: fitted on {len(fit_rows)} items: {relevance.to_dict()}", flush=True)
        old_half, new_half, labels_half = (old_embeddings[measured_rows], new_embeddings[measured_rows],
                                           labels[measured_rows])  # fmt: skip
        for order, seed in [("random", seed) for seed in range(seeds)] + [("centroid-distance", 0), ("priority", 0)]:
            curves = mixed_backfill_curves(old_half, new_half, labels_half, prefix, betas=LEARNED_BETAS, order=order,
                                           seed=seed, rules=("slots", "naive", "learned"), relevance=relevance)  # fmt: skip
            for rule, curve in curves.items():
                curve["least_minus_new_old"] = min(curve["top1"]) - curve["top1"][0]
                results[f"{fold}/{order}/{seed}/{rule}"] = curve
    print("| fold | rule | random area (mean ± sd) | random least (worst seed) | centroid-distance area / least | "
          "priority area / least |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for fold in (0, 1):
        for rule in ("slots", "naive", "learned"):
            randoms = [results[f"{fold}/random/{seed}/{rule}"] for seed in range(seeds)]
            areas = np.array([curve["area"] for curve in randoms])
            others = [results[f"{fold}/{order}/0/{rule}"] for order in ("centroid-distance", "priority")]
            print(f"| {fold} | {rule} | {areas.mean():.2f} ± {areas.std(ddof=1):.2f} | "
                  f"{min(curve['least_minus_new_old'] for curve in randoms):+.2f} | "
                  + " | ".join(f"{curve['area']:.2f} / {curve['least_minus_new_old']:+.2f}" for curve in others)
                  + " |")  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--split", default="test", help="test (report) or validation (choose)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--rules", default="calibrated,slots,naive,compatible,adaptive")
    parser.add_argument("--small_betas", action="store_true", help="β = 0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, …, 1")
    parser.add_argument("--random_seeds", type=int, default=1, help="random orders measured (seeds 0, 1, …)")
    parser.add_argument("--output", help="JSON file for the curves")
    parser.add_argument("--plot", help="PNG file for the curves")
    parser.add_argument("--learned", action="store_true", help="learned mixing against slots and naive, two folds")
    args = parser.parse_args()

    from bt2_hf import BT2Model
    from bt2_hf.galleries import mixed_backfill_curves
    from bt2_hf.galleries.embed import encode_items

    images, labels = load_split(args.data, args.split)
    images, labels = images[: args.limit], labels[: args.limit]
    old, new = BT2Model.from_pretrained(args.old), BT2Model.from_pretrained(args.new)
    old_embeddings, new_embeddings = encode_items(old, images, 512), encode_items(new, images, 512)
    prefix = old.config.embedding_dim
    if args.learned:
        results = learned_comparison(old_embeddings, new_embeddings, labels, prefix)
        if args.output:
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        return
    rules = tuple(args.rules.split(","))
    results = {}
    print(f"{len(labels)} queries = gallery items ({args.split} split), top-1 % at β = 0, 0.1, …, 1")
    print("| order | rule | top-1 along β | area | least − new→old |")
    print("|---|---|---|---|---|")
    betas = LEARNED_BETAS if args.small_betas else None
    orders = [("random", seed) for seed in range(args.random_seeds)] + [(order, 0) for order in ORDERS[1:]]
    for order, seed in orders:
        curves = mixed_backfill_curves(old_embeddings, new_embeddings, labels, prefix, order=order, seed=seed,
                                       rules=rules, betas=betas)  # fmt: skip
        name = order if order != "random" or args.random_seeds == 1 else f"random-{seed}"
        for rule in rules:
            curve = curves[rule]
            results[f"{name}/{rule}"] = curve
            least = min(curve["top1"]) - curve["top1"][0]
            curve["least_minus_new_old"] = least
            values = " ".join(f"{v:.1f}" for v in curve["top1"])
            print(f"| {name} | {rule} | {values} | {curve['area']:.2f} | {least:+.2f} |")
    first = next(iter(results.values()))
    if args.plot:
        plot(results, Path(args.plot), first["top1"][0], first["top1"][-1])
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
