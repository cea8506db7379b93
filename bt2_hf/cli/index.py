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

from bt2_hf.cli._output import write_or_print_json

from ._flags import snake_case_flags

logger = logging.getLogger(__name__)


def load_config(path: str) -> SimpleNamespace:
    """Read a model's ``config.json`` (directory or file) into an object with attribute access.

    Raises:
        `BT2InputError`: the file is missing, not JSON, or lacks a positive integer ``embedding_dim``.
    """
    from bt2_hf.errors import BT2InputError
    from bt2_hf.utils.readers import read_json

    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"No config.json at {path}: give a checkpoint directory or its config.json.")
    config = read_json(file, "model config")
    if not isinstance(config, dict):
        raise BT2InputError("the model config is not a JSON object.", file)
    dim = config.get("embedding_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise BT2InputError(
            f"the model config has no valid 'embedding_dim' (got {dim!r}); it is needed to check embedding widths. "
            "Give the config.json of a model saved by bt2_hf (save_pretrained).",
            file,
        )
    config.setdefault("name_or_path", config.get("_name_or_path") or str(Path(path)))
    config.setdefault("compatible_with", [])
    return SimpleNamespace(**config)


def load_embeddings(path: str) -> tuple[np.ndarray, list | None]:
    """Embeddings (and ids) from a ``.npz`` (``embeddings`` [+ ``ids``]) or ``.npy`` file, checked.

    Raises:
        `BT2InputError`: unreadable file, no ``embeddings`` array, not an (n, d) finite matrix, wrong or duplicate ids.
    """
    from bt2_hf.errors import BT2InputError
    from bt2_hf.utils.readers import check_embeddings, check_unique_ids, load_npy, load_npz

    file = Path(path)
    if file.suffix == ".npz":
        data = load_npz(file, "embeddings (and ids)")
        if "embeddings" not in data:
            raise BT2InputError(f"has no 'embeddings' array (keys: {sorted(data)}).", file)
        embeddings = check_embeddings(data["embeddings"], file)
        ids = None
        if "ids" in data:
            ids = data["ids"].tolist()
            if not isinstance(ids, list) or len(ids) != len(embeddings):
                raise BT2InputError(f"'ids' must hold one id per embedding ({len(embeddings)}).", file)
            check_unique_ids(ids, file)
        return embeddings, ids
    if file.suffix == ".npy":
        return check_embeddings(load_npy(file, "embeddings"), file), None
    raise BT2InputError("expected .npz (embeddings [+ ids]) or .npy (embeddings).", file)


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
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing index at --output (kept until the new is complete)",
    )
    build.add_argument("--no-overwrite", action="store_true", help=argparse.SUPPRESS)  # the default now
    search = commands.add_parser("search", help="search a saved index with query embeddings")
    search.add_argument("--index", required=True)
    search.add_argument("--queries", required=True, help=".npz / .npy query embeddings")
    search.add_argument("--query-config", required=True, help="the query model's checkpoint dir or config.json")
    search.add_argument("-k", type=_positive_int, default=10, help="neighbours per query (≥ 1)")
    search.add_argument("--output", help="JSON file for the results (default: print)")
    search.add_argument(
        "--allow_unmeasured",
        action="store_true",
        help="search even if the query model's compatibility with the gallery's encoder was never measured with "
        "`bt2 verify` (logged, and recorded in the results as the admission)",
    )
    return snake_case_flags(parser)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args) -> dict:
    from bt2_hf.retrieval.index import GalleryIndex

    if args.command == "build":
        if Path(args.output).exists() and not args.overwrite:
            raise FileExistsError(
                f"{args.output} already exists; pass --overwrite to replace it (the old index stays until the new one "
                "is complete), or choose another --output."
            )
        config = load_config(args.encoder_config)
        kwargs = dict(
            encoder_fingerprint=getattr(config, "fingerprint", None),
            encoder_name=config.name_or_path,
            index_type=args.index_type,
            encoder_dim=config.embedding_dim,
        )
        if not kwargs["encoder_fingerprint"]:
            logger.warning("The encoder config has no fingerprint: searches of this index will be refused.")
        if args.shards:
            index = GalleryIndex.from_shards(args.shards, **kwargs)
        else:
            embeddings, ids = load_embeddings(args.embeddings)
            index = GalleryIndex.build(embeddings, ids, **kwargs)
        index.save(args.output, overwrite=args.overwrite)
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
    write_or_print_json(output, args.output)
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
    except (IncompatibleModelsError, GalleryIndexError, ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"bt2 index: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
