"""``bt2 eval-text`` (or ``bt2 eval --text``): text→image retrieval of a text tower against an image gallery.

Queries are class-level captions rendered from the dataset's class names (held-out templates by default); the
gallery is an image split embedded by one or more image models (e.g. the OLD model, and a new model). Relevance is
class-level. Reports Recall@1/5/10 and mAP per (text model, gallery model) pair, as a table and as JSON.

    bt2 eval-text --text_models runs/text/text_bt2 runs/text/text_independent \\
        --gallery_models runs/text/old_image runs/text/new_image --split test --output text_eval.json

``--output_kind features`` searches with a BT² tower's feature ``f`` (its independent-tower block) instead of the
embedding prefix: the way to search a gallery of the new image model its independent twin was aligned with.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ._flags import snake_case_flags, with_examples
from ._output import configure_logging

EXAMPLES = """\
bt2 eval-text --text_models runs/text_bt2 --gallery_models runs/old runs/new --data_dir /usr/share/datasets/fashion-mnist
bt2 eval-text --text_models runs/text_bt2 --gallery_models runs/old --templates all --output text.json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 eval-text", description=__doc__.split("\n\n")[0])
    parser.add_argument("--text_models", nargs="+", required=True, help="Text tower checkpoints (bt2_hf).")
    parser.add_argument("--gallery_models", nargs="+", required=True, help="Image model checkpoints (bt2_hf).")
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, or a dataset directory.")
    parser.add_argument("--data_dir", default=None, help="Fashion-MNIST IDX directory.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--gallery_size", type=int, default=None, help="Class-balanced gallery images (default all).")
    parser.add_argument(
        "--templates", choices=("held_out", "train", "all"), default="held_out", help="Which caption templates."
    )
    parser.add_argument(
        "--output_kind",
        choices=("embeddings", "features"),
        default="embeddings",
        help="embeddings: the full embedding (its prefix meets an old gallery); features: BT²'s f block.",
    )
    parser.add_argument("--metrics", default="recall@1,recall@5,recall@10,map")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--output", default=None, help="Write the results as JSON here.")
    return with_examples(snake_case_flags(parser), EXAMPLES)


def run(args: argparse.Namespace) -> dict:
    """Evaluate every (text model, gallery model) pair; returns ``{"<text>/<gallery>": {metric: fraction}}``."""
    from bt2_hf import BT2Model
    from bt2_hf.data import load_image_classification
    from bt2_hf.data.captions import DEFAULT_CAPTION_TEMPLATES, class_captions, split_templates
    from bt2_hf.experiments.embedding import embed_split, embed_texts
    from bt2_hf.retrieval.text_to_image import chance_recall_at_1, evaluate_text_to_image

    data = load_image_classification(args.dataset, args.split, data_dir=args.data_dir)
    if data.images is None:
        raise ValueError("bt2 eval-text needs an in-memory image split (Fashion-MNIST or a small dataset).")
    data = data.take_per_class(args.gallery_size, seed=0)
    train_templates, held_out = split_templates(DEFAULT_CAPTION_TEMPLATES)
    templates = {"held_out": held_out, "train": train_templates, "all": list(DEFAULT_CAPTION_TEMPLATES)}[
        args.templates
    ]
    captions, caption_labels = class_captions(data.class_names, templates)
    gallery_labels = data.labels.numpy()
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    galleries = {}
    for path in args.gallery_models:
        model = BT2Model.from_pretrained(path)
        if model.modality != "image":
            raise ValueError(f"--gallery_models takes image models; {path} encodes {model.modality}.")
        galleries[Path(path).name] = embed_split(model, data.images, batch_size=args.batch_size)
    results: dict = {"pairs": {}, "num_queries": len(captions), "gallery_size": int(len(gallery_labels))}
    results["chance_recall@1"] = chance_recall_at_1(caption_labels, gallery_labels)
    for path in args.text_models:
        model = BT2Model.from_pretrained(path)
        if model.modality != "text":
            raise ValueError(f"--text_models takes text towers; {path} encodes {model.modality}.")
        queries = embed_texts(model, captions, output=args.output_kind).numpy()
        for gallery_name, gallery in galleries.items():
            results["pairs"][f"{Path(path).name}/{gallery_name}"] = evaluate_text_to_image(
                queries, gallery, caption_labels, gallery_labels, metrics=metrics
            )
    return results


def _print(results: dict) -> None:
    pairs = results["pairs"]
    metrics = list(next(iter(pairs.values())).keys()) if pairs else []
    print(f"{'text/gallery':<48}" + "".join(f"{m:>11}" for m in metrics))
    for pair, values in pairs.items():
        print(f"{pair:<48}" + "".join(f"{100 * values[m]:>11.1f}" for m in metrics))
    print(f"chance recall@1: {100 * results['chance_recall@1']:.1f}  ({results['num_queries']} captions, "
          f"{results['gallery_size']} gallery images)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format=logging.BASIC_FORMAT, level=logging.WARNING)
    try:
        results = run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"bt2 eval-text: {error}", file=sys.stderr)
        return 1
    _print(results)
    if args.output:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(args.output, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
