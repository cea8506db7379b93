"""``bt2 index build|search``: a gallery index with a manifest, searched with a compatibility check.

Examples::

    bt2 index build --embeddings gallery.npz --encoder-config old_model/ --output gallery_index/
    bt2 index search --index gallery_index/ --queries queries.npy --query-config new_model/ -k 10 --output hits.json

``--encoder-config`` / ``--query-config`` take a checkpoint directory (its ``config.json``) or a ``config.json``
file: the fingerprint, width and ``compatible_with`` lineage come from there. ``.npz`` embedding files hold
``embeddings`` (and optionally ``ids``); ``.npy`` files hold the embeddings only (ids default to row numbers).
Galleries built from an embedding directory or a model + dataset (IVF-PQ, Milvus, backfill) take the options of
:mod:`bt2_hf.cli.gallery`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

logger = logging.getLogger(__name__)


def load_config(path: str) -> SimpleNamespace:
    """Read a model's ``config.json`` (directory or file) into an object with attribute access."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"No config.json at {path}: give a checkpoint directory or its config.json.")
    config = json.loads(file.read_text())
    config.setdefault("name_or_path", config.get("_name_or_path") or str(Path(path)))
    config.setdefault("compatible_with", [])
    return SimpleNamespace(**config)


def load_embeddings(path: str) -> tuple[np.ndarray, list | None]:
    file = Path(path)
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as data:
            if "embeddings" not in data:
                raise ValueError(f"{file} has no 'embeddings' array (keys: {sorted(data.files)}).")
            ids = data["ids"].tolist() if "ids" in data else None
            return data["embeddings"], ids
    if file.suffix == ".npy":
        return np.load(file, allow_pickle=False), None
    raise ValueError(f"{file}: expected .npz (embeddings [+ ids]) or .npy (embeddings).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 index", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build and save an index from gallery embeddings or shards")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", help=".npz / .npy gallery embeddings")
    source.add_argument("--shards", help="directory of embedding shards (embeddings-rank*-*.npy + .ids.json)")
    build.add_argument("--encoder-config", required=True, help="the gallery encoder's checkpoint dir or config.json")
    build.add_argument("--index-type", default="flat", choices=["flat", "ivf", "hnsw"])
    build.add_argument("--output", required=True, help="index directory to write (atomically)")
    build.add_argument("--no-overwrite", action="store_true")
    search = commands.add_parser("search", help="search a saved index with query embeddings")
    search.add_argument("--index", required=True)
    search.add_argument("--queries", required=True, help=".npz / .npy query embeddings")
    search.add_argument("--query-config", required=True, help="the query model's checkpoint dir or config.json")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--output", help="JSON file for the results (default: print)")
    search.add_argument(
        "--allow_unmeasured",
        action="store_true",
        help="search even if the query model's compatibility with the gallery's encoder was never measured with "
        "`bt2 verify` (logged, and recorded in the results as the admission)",
    )
    return parser


def run(args) -> dict:
    from bt2_hf.retrieval.index import GalleryIndex

    if args.command == "build":
        config = load_config(args.encoder_config)
        kwargs = dict(
            encoder_fingerprint=getattr(config, "fingerprint", None),
            encoder_name=config.name_or_path,
            index_type=args.index_type,
        )
        if not kwargs["encoder_fingerprint"]:
            logger.warning("The encoder config has no fingerprint: searches of this index will be refused.")
        if args.shards:
            index = GalleryIndex.from_shards(args.shards, **kwargs)
        else:
            embeddings, ids = load_embeddings(args.embeddings)
            index = GalleryIndex.build(embeddings, ids, **kwargs)
        index.save(args.output, overwrite=not args.no_overwrite)
        summary = {key: index.manifest[key] for key in ("count", "dimension", "index_type", "encoder_fingerprint")}
        print(json.dumps({"output": args.output, **summary}))
        return summary
    index = GalleryIndex.load(args.index)
    queries, query_ids = load_embeddings(args.queries)
    result = index.search(
        queries, k=args.k, query_config=load_config(args.query_config), allow_unmeasured=args.allow_unmeasured
    )
    query_ids = query_ids or list(range(len(queries)))
    hits = [
        {"query": query_id, "ids": ids, "scores": [round(float(s), 6) for s in scores[: len(ids)]]}
        for query_id, ids, scores in zip(query_ids, result.ids, result.scores)
    ]
    output = {"prefix_dim": result.prefix_dim, "admission": result.admission, "results": hits}
    if args.output:
        from bt2_hf.utils.io import atomic_write_json

        atomic_write_json(args.output, output)
    else:
        print(json.dumps(output))
    return output


def main(argv: list[str] | None = None) -> int:
    from bt2_hf.cli import gallery  # galleries (embedding directories, models, IVF-PQ, Milvus): bt2_hf/cli/gallery.py

    if gallery.handles(list(sys.argv[1:] if argv is None else argv)):
        return gallery.main(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from bt2_hf.compatibility import IncompatibleModelsError
    from bt2_hf.retrieval.index import GalleryIndexError

    try:
        run(args)
    except (IncompatibleModelsError, GalleryIndexError, ValueError, FileNotFoundError) as error:
        print(f"bt2 index: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
