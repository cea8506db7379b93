"""``bt2 index build|search`` for galleries: from an embedding directory or a model + dataset, faiss or Milvus.

Examples::

    bt2 index build --embedding-dir gallery_embeddings/ --index-type ivfpq --output gallery/
    bt2 index build --model old_model/ --data /usr/share/datasets/fashion-mnist --split all --output gallery/
    bt2 index build --embedding-dir gallery_embeddings/ --output galleries.db --collection fashion   # milvus-lite
    bt2 index search --index gallery/ --query-model new_model/ --query-data queries/ -k 10 --output hits.json
    bt2 index search --index text_gallery/ --query-model text_tower/ --query-text "a red dress" -k 5

``bt2 index`` hands a command line to this module when it names an embedding directory, a model, a query model or
a gallery made by it (``--index`` a gallery directory or Milvus URI); the older ``--embeddings`` / ``--queries``
(precomputed ``.npy``) forms stay with :mod:`bt2_hf.cli.index`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile

from bt2_hf.cli._output import write_or_print_json

from ._flags import snake_case_flags

GALLERY_FLAGS = ("--embedding-dir", "--embedding_dir", "--model", "--query-model", "--query_model", "--collection")


def handles(argv: list[str]) -> bool:
    """Whether a ``bt2 index`` command line is for this module (see the module docstring)."""
    from bt2_hf.galleries import is_gallery_directory
    from bt2_hf.galleries.stores import is_milvus_uri

    if any(arg.split("=")[0] in GALLERY_FLAGS for arg in argv) or "ivfpq" in argv:
        return True
    if "--index" in argv and argv.index("--index") + 1 < len(argv):
        location = argv[argv.index("--index") + 1]
        return is_milvus_uri(location) or is_gallery_directory(location)
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bt2 index", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a gallery (faiss directory or Milvus collection)")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--embedding-dir", help="a directory written by `bt2 embed`")
    source.add_argument("--model", help="embed --data with this model first")
    build.add_argument("--data", help="the dataset to embed (with --model)")
    build.add_argument("--split")
    build.add_argument("--column")
    build.add_argument("--id-column")
    build.add_argument("--streaming", action="store_true")
    build.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    build.add_argument("--batch-size", type=int, default=256)
    build.add_argument("--embeddings-output", help="keep the embeddings made with --model here (resumable)")
    build.add_argument("--index-type", default="flat", choices=["flat", "ivf", "ivfpq", "hnsw"])
    for name in ("nlist", "nprobe", "pq-m", "rerank", "hnsw-m", "ef-search"):
        build.add_argument(f"--{name}", type=int)
    build.add_argument("--output", required=True, help="gallery directory, or a Milvus URI (.db file, http://…)")
    build.add_argument("--collection", help="Milvus collection name (default bt2_gallery)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing gallery")
    search = commands.add_parser("search", help="search a gallery with a query model")
    search.add_argument("--index", required=True, help="gallery directory or Milvus URI")
    search.add_argument("--collection")
    search.add_argument("--query-model", required=True, help="the query model's checkpoint (or Hub id)")
    queries = search.add_mutually_exclusive_group(required=True)
    queries.add_argument("--query-data", help="a dataset of query images or texts (IDX, folder, .txt/.jsonl)")
    queries.add_argument("--query-images", nargs="+", help="image files")
    queries.add_argument("--query-text", action="append", help="a query string (repeatable)")
    search.add_argument("--split")
    search.add_argument("--limit", type=int, help="only the first N queries of --query-data")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--nprobe", type=int)
    search.add_argument("--rerank", type=int)
    search.add_argument("--output", help="JSON file for the results (default: print)")
    search.add_argument("--allow-unmeasured", action="store_true", help="admit declared, unmeasured compatibility")
    return snake_case_flags(parser)


def _index_params(args) -> dict:
    names = {"nlist": "nlist", "nprobe": "nprobe", "pq_m": "pq_m", "rerank": "rerank", "hnsw_m": "M",
             "ef_search": "ef_search"}  # fmt: skip
    return {target: getattr(args, name) for name, target in names.items() if getattr(args, name) is not None}


def run_build(args) -> dict:
    from bt2_hf.galleries import EmbeddingDirectory, FaissGallery, embed_dataset
    from bt2_hf.galleries.stores import is_milvus_uri

    if args.model:
        from bt2_hf import BT2Model

        if not args.data:
            raise ValueError("--model needs --data (the dataset to embed).")
        directory = args.embeddings_output or tempfile.mkdtemp(prefix="bt2-embed-")
        embeddings = embed_dataset(
            BT2Model.from_pretrained(args.model), args.data, directory, split=args.split, column=args.column,
            id_column=args.id_column, streaming=args.streaming, dtype=args.dtype, batch_size=args.batch_size,
        )  # fmt: skip
    else:
        embeddings = EmbeddingDirectory(args.embedding_dir)
    if is_milvus_uri(args.output):
        from bt2_hf.galleries.milvus_store import MilvusGallery
        from bt2_hf.galleries.stores import DEFAULT_COLLECTION

        gallery = MilvusGallery.from_embeddings(
            args.output, args.collection or DEFAULT_COLLECTION, embeddings, index_type=args.index_type,
            overwrite=args.overwrite, **_index_params(args),
        )  # fmt: skip
    else:
        gallery = FaissGallery.from_embeddings(
            args.output, embeddings, index_type=args.index_type, overwrite=args.overwrite, **_index_params(args)
        )
    manifest = gallery.manifest
    summary = {"output": str(args.output), "count": manifest["count"], "dimension": manifest["dimension"],
               "index": manifest["index"], "encoder": manifest["encoder"]["fingerprint"]}  # fmt: skip
    print(json.dumps(summary))
    return summary


def _queries(args, model):
    from PIL import Image

    from bt2_hf.galleries import open_source

    if args.query_text:
        return list(range(len(args.query_text))), args.query_text
    if args.query_images:
        return list(args.query_images), [Image.open(path) for path in args.query_images]
    source = open_source(args.query_data, split=args.split)
    count = min(len(source), args.limit or len(source))
    return source.ids(0, count), source.items(0, count)


def run_search(args) -> dict:
    from bt2_hf import BT2Model
    from bt2_hf.galleries import search_gallery
    from bt2_hf.galleries.embed import encode_items
    from bt2_hf.galleries.stores import open_gallery

    store = open_gallery(args.index, collection=args.collection)
    model = BT2Model.from_pretrained(args.query_model)
    from bt2_hf.compatibility import admit_to_gallery

    # Refuse before encoding the queries (an image model over a text gallery is admitted through the encoder's lineage).
    admit_to_gallery(model.config, store.encoder, store.dimension, allow_unmeasured=args.allow_unmeasured)
    query_ids, items = _queries(args, model)
    embeddings = encode_items(model, items, 256)
    params = {key: getattr(args, key) for key in ("nprobe", "rerank") if getattr(args, key) is not None}
    result = search_gallery(store, embeddings, k=args.k, query_config=model.config,
                            allow_unmeasured=args.allow_unmeasured, **params)  # fmt: skip
    hits = [
        {"query": query, "ids": ids, "scores": [round(float(s), 6) for s in scores[: len(ids)]],
         "backfilled": [bool(b) for b in flags[: len(ids)]]}
        for query, ids, scores, flags in zip(query_ids, result.ids, result.scores, result.backfilled)
    ]  # fmt: skip
    output = {"prefix_dim": result.prefix_dim, "admission": result.admission, "results": hits}
    write_or_print_json(output, args.output)
    return output


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from bt2_hf.compatibility import IncompatibleModelsError
    from bt2_hf.galleries import EmbeddingDirectoryError, GalleryError, GallerySourceError

    try:
        run_build(args) if args.command == "build" else run_search(args)
    except (IncompatibleModelsError, GalleryError, EmbeddingDirectoryError, GallerySourceError, ValueError,
            FileNotFoundError, FileExistsError) as error:  # fmt: skip
        print(f"bt2 index: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
