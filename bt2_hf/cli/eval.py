"""``bt2 eval``: compatibility of a model pair (old/old, new/old, new/new) or of a series of versions (matrix).

Inputs are saved embeddings, one file per model, on the same items in the same order:
``.npz`` with ``embeddings`` and ``labels`` (optionally ``gallery_embeddings`` / ``gallery_labels`` for a separate
gallery), or ``.npy`` embeddings with ``--labels labels.npy``. Two files = a pair (old, new); three or more = versions,
oldest first (the full matrix with AC / AA). Output: a table on the terminal, ``eval.json`` and PNG plots in
``--output-dir``.

Examples::

    bt2 eval --embeddings old.npz new.npz --independent indep.npz --backfill --output-dir out/
    bt2 eval --embeddings v1.npz v2.npz v3.npz --names alex vgg vit --metrics top1,map --output-dir out/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

logger = logging.getLogger(__name__)


EXAMPLES = """\
bt2 eval --embeddings old.npz bt2.npz --independent independent.npz --output_dir eval_out
bt2 eval --models bt2_demo_output/models/old bt2_demo_output/models/bt2 --dataset fashion_mnist --data_dir /usr/share/datasets/fashion-mnist
bt2 eval --embeddings v1.npz v2.npz v3.npz --output_dir matrix   # three or more: the compatibility matrix
bt2 eval --embeddings old.npz bt2.npz --backfill --output_dir backfill_curves
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 eval", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", nargs="+", help="one .npz/.npy per model, oldest first")
    source.add_argument("--models", nargs="+", help="checkpoints (needs --data-dir; see below)")
    parser.add_argument("--dataset", default="fashion_mnist", help="dataset for --models (bt2_hf.data name or path)")
    parser.add_argument("--data-dir", help="dataset directory for --models")
    parser.add_argument(
        "--split", default="test", help="split embedded with --models (query = gallery, leave-one-out)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--names", nargs="+", help="model names for the table (default: file stems)")
    parser.add_argument("--labels", help=".npy labels when the embedding files are .npy")
    parser.add_argument("--independent", help="embeddings of an independently trained new model (pair mode)")
    parser.add_argument("--metrics", default="top1,top5,top10,map,map@r", help="comma-separated metric names")
    parser.add_argument("--backend", default="faiss", choices=["faiss", "faiss-ivf", "faiss-hnsw", "torch"])
    parser.add_argument(
        "--research-protocol",
        action="store_true",
        help="truncate without re-normalising, as the BT² research code does (to reproduce its numbers)",
    )
    parser.add_argument("--backfill", action="store_true", help="pair mode: partial-backfill curves and their areas")
    parser.add_argument("--backfill-orders", default="random,centroid-distance")
    parser.add_argument("--betas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", help="where eval.json and the PNG plots go")
    parser.add_argument("--no-plots", action="store_true")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def load_embedding_file(path: str, labels_path: str | None = None):
    """Read one model's embeddings: returns ``(ModelEmbeddings, query_labels, gallery_labels)``.

    Raises:
        `BT2InputError`: unreadable / empty file, missing or malformed arrays, labels that do not match the rows.
    """
    from bt2_hf.errors import BT2InputError
    from bt2_hf.retrieval.compatibility import ModelEmbeddings
    from bt2_hf.utils.readers import check_embeddings, check_labels, load_npy, load_npz

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"Embedding file {file} does not exist.")
    if file.suffix == ".npz":
        data = load_npz(file, "embeddings and labels")
        if "embeddings" not in data:
            raise BT2InputError(f"has no 'embeddings' array (keys: {sorted(data)}).", file)
        query = check_embeddings(data["embeddings"], file)
        labels = data.get("labels")
        gallery = data.get("gallery_embeddings")
        gallery_labels = data.get("gallery_labels")
    elif file.suffix == ".npy":
        query, labels, gallery, gallery_labels = check_embeddings(load_npy(file, "embeddings"), file), None, None, None
    else:
        raise BT2InputError("expected a .npz (embeddings + labels) or .npy (embeddings) file.", file)
    labels_source = file
    if labels is None:
        if labels_path is None:
            raise BT2InputError("has no labels: save them in the .npz as 'labels' or pass --labels labels.npy.", file)
        labels, labels_source = load_npy(labels_path, "labels"), Path(labels_path)
    labels = check_labels(labels, labels_source, len(query))
    if (gallery is None) != (gallery_labels is None):
        raise BT2InputError("'gallery_embeddings' and 'gallery_labels' go together: give both or neither.", file)
    if gallery is not None:
        gallery = check_embeddings(gallery, file, "gallery_embeddings")
        gallery_labels = check_labels(gallery_labels, file, len(gallery), "gallery_labels")
        if gallery.shape[1] != query.shape[1]:
            raise BT2InputError(
                f"'gallery_embeddings' are {gallery.shape[1]}-d but 'embeddings' are {query.shape[1]}-d: one model "
                "embeds both.",
                file,
            )
    return ModelEmbeddings(query=query, gallery=gallery, name=file.stem), labels, gallery_labels


def _embed_with_models(args) -> list:
    """Embed the evaluation split with each checkpoint (thin wrapper over bt2_hf.data and BT2Model.encode)."""
    from bt2_hf.retrieval.compatibility import ModelEmbeddings

    try:
        from bt2_hf.data import load_image_classification
    except ImportError:
        raise ValueError(
            "bt2 eval --models needs bt2_hf.data (dataset loading), which is not available in this install. Embed "
            "the evaluation split with each model (model.encode) and pass the saved files with --embeddings."
        ) from None
    from bt2_hf import BT2Model

    data = load_image_classification(args.dataset, args.split, data_dir=args.data_dir)
    if data.images is None:
        raise ValueError("bt2 eval --models needs an in-memory image split; save embeddings and use --embeddings.")
    loaded = []
    for path in args.models:
        model = BT2Model.from_pretrained(path)
        embeddings = model.encode(images=data.images, batch_size=args.batch_size, show_progress=True)
        loaded.append((ModelEmbeddings(query=embeddings, name=Path(path).name), data.labels.numpy(), None))
    return loaded


def _percent(value: float) -> str:
    return "—" if value != value else f"{value * 100:.2f}"


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ModuleNotFoundError:  # plain text without rich
        print(title)
        for row in [columns] + rows:
            print("  ".join(f"{cell:>12}" for cell in row))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def run(args) -> dict:
    """Evaluate; ``--output-dir`` is written as a whole at the end (staged beside it), so a failed run writes nothing."""
    if not args.output_dir:
        return _run(args, None)
    from bt2_hf.utils.io import atomic_directory

    with atomic_directory(args.output_dir, keep_other_entries=True) as staging:
        return _run(args, staging)


def _run(args, output_dir: Path | None) -> dict:
    from bt2_hf.retrieval.backfill import backfill_curve
    from bt2_hf.retrieval.compatibility import compare_models, compatibility_matrix
    from bt2_hf.retrieval.evaluator import RetrievalEvaluator

    if args.models:
        loaded = _embed_with_models(args)
    else:
        loaded = [load_embedding_file(path, args.labels) for path in args.embeddings]
    models = [model for model, _, _ in loaded]
    query_labels, gallery_labels = loaded[0][1], loaded[0][2]
    sources = args.models or args.embeddings
    for (_, labels, _), path in zip(loaded, sources):
        if len(labels) != len(query_labels) or not np.array_equal(labels, query_labels):
            raise ValueError(
                f"{path} has different labels from {sources[0]} ({len(labels)} vs {len(query_labels)} items"
                + (", same count but different values" if len(labels) == len(query_labels) else "")
                + "): all inputs must hold the same items in the same order."
            )
    names = args.names or [model.name for model in models]
    if len(names) != len(models):
        raise ValueError(f"--names gives {len(names)} names for {len(models)} embedding files.")
    evaluator = RetrievalEvaluator(
        metrics=args.metrics, backend=args.backend, renormalize=not args.research_protocol, show_progress=True
    )
    metric_names = evaluator.metric_names
    report: dict = {
        "protocol": "research (no re-normalisation)" if args.research_protocol else "prefix + re-normalise"
    }

    if len(models) == 1:
        raise ValueError("Give at least two embedding files (old new), or more for a version matrix.")
    if len(models) == 2:
        independent = load_embedding_file(args.independent, args.labels)[0] if args.independent else None
        pair = compare_models(
            models[0], models[1], query_labels, gallery_labels, independent=independent, evaluator=evaluator
        )
        report["pair"] = {"old": names[0], "new": names[1], **pair.to_dict()}
        rows = [[key] + [_percent(result.metrics[m]) for m in metric_names] for key, result in pair.results.items()]
        rows.append(["criterion new/old > old/old"] + ["✓" if pair.criterion[m] else "✗" for m in metric_names])
        if pair.update_gain:
            rows.append(["update gain"] + [f"{pair.update_gain[m]:.3f}" for m in metric_names])
            rows.append(["compatibility tax"] + [_percent(pair.compatibility_tax[m]) for m in metric_names])
        _print_table(f"{names[1]} vs {names[0]} (query/gallery, %)", ["setting"] + metric_names, rows)
        if pair.flips:
            logger.info("flips (%s): %s", pair.flips["metric"], pair.flips)
        if args.backfill:
            betas = [float(beta) for beta in args.betas.split(",")]
            curves = [
                backfill_curve(
                    models[0],
                    models[1],
                    query_labels,
                    gallery_labels,
                    betas=betas,
                    order=order.strip(),
                    seed=args.seed,
                    evaluator=evaluator,
                )
                for order in args.backfill_orders.split(",")
            ]
            report["backfill"] = [curve.to_dict() for curve in curves]
            rows = [[curve.order] + [_percent(curve.area[m]) for m in metric_names] for curve in curves]
            _print_table("Backfill: area under M(β) (%)", ["order"] + metric_names, rows)
            if output_dir and not args.no_plots:
                from bt2_hf.retrieval.plots import plot_backfill_curves

                for metric in metric_names:
                    plot_backfill_curves(curves, metric, output_dir / f"backfill_{_file_safe(metric)}.png")
    else:
        matrix = compatibility_matrix(models, query_labels, gallery_labels, names=names, evaluator=evaluator)
        report["matrix"] = matrix.to_dict()
        for metric in metric_names:
            values = matrix.values[metric]
            rows = [
                [names[i]] + [_percent(values[i, j]) if j <= i else "" for j in range(len(names))]
                for i in range(len(names))
            ]
            title = f"{metric} (%), query ↓ / gallery →: AC={matrix.average_compatibility(metric):.3f}, AA={_percent(matrix.average_accuracy(metric))}"
            _print_table(title, ["query \\ gallery"] + names, rows)
            if output_dir and not args.no_plots:
                from bt2_hf.retrieval.plots import plot_compatibility_matrix

                plot_compatibility_matrix(matrix, metric, output_dir / f"matrix_{_file_safe(metric)}.png")
    if output_dir:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(output_dir / "eval.json", report)
        logger.info("Wrote %s", Path(args.output_dir) / "eval.json")
    return report


def _file_safe(name: str) -> str:
    return name.replace("@", "_at_").replace("/", "_")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"bt2 eval: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
