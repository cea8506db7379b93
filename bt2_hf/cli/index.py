"""``bt2 index build|search``: build a gallery (faiss on disk or Milvus) and search it with a query model.

Every gallery is one format (:mod:`bt2_hf.galleries`): a directory with ``manifest.json`` (the encoder's identity,
the owner's admission policy, the file hashes, an optional probe set), or a Milvus collection with the same manifest.

Build, from one of three sources::

    # 1. the directory `bt2 embed --output emb` wrote
    bt2 index build --embedding_dir emb/ --output gallery/
    bt2 index build --embedding_dir emb/ --index_type ivfpq --output gallery/
    # 2. a model and a dataset (embedded first; --embeddings_output keeps the embeddings, resumable)
    bt2 index build --model old_model/ --data /usr/share/datasets/fashion-mnist --split test --output gallery/
    # 3. precomputed embeddings (.npz with 'embeddings' [+ 'ids'], or .npy) and the encoder's config
    bt2 index build --embeddings gallery.npz --encoder_config old_model/ --output gallery/
    # into Milvus: a milvus-lite file (*.db) or a server URI (http://…) as --output, with a collection
    bt2 index build --embedding_dir emb/ --output galleries.db --collection fashion
    # with a probe set for the gallery's gate (`bt2 gallery admit`) and the owner's admission policy
    bt2 index build --model old_model/ --data fmnist/ --split train --output gallery/ \\
        --probe_from fmnist/ --probe_split test --probe_size 500 --min_margin 0.5 --min_size 300

Search, with queries as a dataset, image files, texts or precomputed embeddings::

    bt2 index search --index gallery/ --query_model new_model/ --query_data fmnist/ --split test --limit 5
    bt2 index search --index gallery/ --query_model new_model/ --query_images shoe.png bag.png -k 5 --format table
    bt2 index search --index text_gallery/ --query_model text_tower/ --query_text "a red dress" -k 5
    bt2 index search --index gallery/ --queries queries.npz --query_config new_model/ -k 10 --output hits.json
    bt2 index search --index galleries.db --collection fashion --query_model new_model/ --query_data fmnist/

Results carry each hit's item id, gallery row, score and, where the gallery has them, its label and file path
(JSON by default; ``--format table`` prints a readable table). A query model is admitted by the gallery's encoder,
the gallery's own measurement (`bt2 gallery admit`) or a measured compatibility entry judged with the gallery's
policy; anything else is refused with the command that would measure it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bt2_hf.cli._output import configure_logging, write_or_print_json

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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=doc, epilog=__doc__.split("\n\n", 2)[2] if prog == "bt2 index" else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _parser("bt2 index", __doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    examples = __doc__.split("\n\n")
    build = commands.add_parser(
        "build", help="build a gallery (faiss directory or Milvus collection)",
        description="Build a gallery from an embedding directory, a model + dataset, or precomputed embeddings.",
        epilog="\n\n".join(examples[2:4]), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--embedding-dir", "--shards", dest="embedding_dir",
                        help="a directory written by `bt2 embed --output DIR`")  # fmt: skip
    source.add_argument("--model", help="embed --data with this model checkpoint first")
    source.add_argument("--embeddings", help=".npz (embeddings [+ ids]) or .npy file, with --encoder_config")
    build.add_argument("--encoder-config", help="with --embeddings: the encoder's checkpoint dir or config.json")
    build.add_argument("--data", help="with --model: the dataset to embed (IDX dir, imagefolder, save_to_disk, .txt)")
    build.add_argument("--split", help="split of --data (IDX: train, test or all)")
    build.add_argument("--column", help="image or text column of a datasets dataset")
    build.add_argument("--id-column", help="id column of a datasets dataset")
    build.add_argument("--streaming", action="store_true", help="stream an imagefolder (--model)")
    build.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="of the stored vectors")
    build.add_argument("--batch-size", type=int, default=256)
    build.add_argument("--embeddings-output", help="with --model: keep the embeddings here (resumable)")
    build.add_argument("--index-type", default="flat", choices=["flat", "ivf", "ivfpq", "hnsw"])
    for name in ("nlist", "nprobe", "pq-m", "rerank", "hnsw-m", "ef-search"):
        build.add_argument(f"--{name}", type=int, help=f"index parameter {name} (see bt2_hf.galleries)")
    build.add_argument("--output", required=True,
                       help="gallery directory, or a Milvus URI (a milvus-lite .db file, http://…) with --collection")  # fmt: skip
    build.add_argument("--collection", help="Milvus collection name (default bt2_gallery)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing gallery (kept until the new one "
                       "is complete)")  # fmt: skip
    gate = build.add_argument_group("the gallery's gate (probe set and admission policy)")
    gate.add_argument("--probe-from", help="labelled held-out data to sample the probe set from (faiss galleries)")
    gate.add_argument("--probe-split", help="split of --probe_from (IDX: test)")
    gate.add_argument("--probe-size", type=_positive_int, default=500, help="probe items, class-balanced")
    gate.add_argument("--probe-seed", type=int, default=0)
    gate.add_argument("--encoder", help="the encoder checkpoint that embeds the probe set (default: --model, or "
                      "the model recorded by the embedding directory)")  # fmt: skip
    gate.add_argument("--required-metrics", default="top1,mAP", help="metrics new→old must beat old→old on")
    gate.add_argument("--min-margin", type=float, default=0.0, help="points each required metric must win by")
    gate.add_argument("--min-size", type=int, default=0, help="fewest held-out items a measurement may use")
    gate.add_argument("--require-gate", action="store_true",
                      help="admit other models only on the gallery's own measurement, never on a config's entry")  # fmt: skip

    search = commands.add_parser(
        "search", help="search a gallery with a query model",
        description="Search a gallery; the query model is checked against the gallery first.",
        epilog=examples[4] + "\n\n" + examples[5], formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    search.add_argument("--index", required=True, help="gallery directory, or a Milvus URI with --collection")
    search.add_argument("--collection", help="Milvus collection name (default bt2_gallery)")
    model = search.add_mutually_exclusive_group(required=True)
    model.add_argument("--query-model", help="the query model's checkpoint (or Hub id): embeds the queries")
    model.add_argument("--query-config", help="with --queries: the query model's checkpoint dir or config.json")
    queries = search.add_mutually_exclusive_group(required=True)
    queries.add_argument("--query-data", help="a dataset of query images or texts (IDX, folder, .txt/.jsonl)")
    queries.add_argument("--query-images", nargs="+", help="image files")
    queries.add_argument("--query-text", action="append", help="a query string (repeatable)")
    queries.add_argument("--queries", "--query-embeddings", dest="queries",
                         help="precomputed query embeddings (.npz with 'embeddings' [+ 'ids'], or .npy)")  # fmt: skip
    search.add_argument("--split", help="split of --query_data")
    search.add_argument("--limit", type=_positive_int, help="only the first N queries of --query_data")
    search.add_argument("-k", type=_positive_int, default=10, help="neighbours per query (≥ 1)")
    search.add_argument("--nprobe", type=int)
    search.add_argument("--rerank", type=int)
    search.add_argument(
        "--rule",
        choices=["slots", "adaptive", "calibrated", "compatible", "naive"],
        default="slots",
        help="how a partly backfilled gallery is ranked (default: slots; the output names the rule that ranked)",
    )
    search.add_argument("--format", choices=["json", "table"], default="json", help="what is printed")
    search.add_argument("--output", help="JSON file for the results (written whatever --format prints)")
    search.add_argument(
        "--allow-unmeasured", action="store_true",
        help="search even if the query model's compatibility was never measured (logged, and recorded in the "
        "results as the admission)",
    )  # fmt: skip
    return snake_case_flags(parser)


def _index_params(args) -> dict:
    names = {"nlist": "nlist", "nprobe": "nprobe", "pq_m": "pq_m", "rerank": "rerank", "hnsw_m": "M",
             "ef_search": "ef_search"}  # fmt: skip
    return {target: getattr(args, name) for name, target in names.items() if getattr(args, name) is not None}


def _policy(args) -> dict:
    metrics = [name.strip() for name in args.required_metrics.split(",") if name.strip()]
    return {"required_metrics": metrics, "min_margin": args.min_margin, "min_size": args.min_size,
            "require_gate": bool(args.require_gate)}  # fmt: skip


def _probe(args, encoder_identity: dict, loaded_model=None):
    """The probe set of ``--probe_from``, embedded by the gallery's encoder (checked to be that encoder)."""
    if not args.probe_from:
        return None
    from bt2_hf import BT2Model
    from bt2_hf.compatibility import same_fingerprint
    from bt2_hf.galleries.gate import make_probe

    model = loaded_model
    if model is None:
        location = args.encoder or encoder_identity.get("name_or_path")
        if not location:
            raise ValueError("--probe_from needs the encoder's checkpoint: pass --encoder.")
        model = BT2Model.from_pretrained(location)
    if not same_fingerprint(model.config.fingerprint, encoder_identity.get("fingerprint")):
        raise ValueError(
            f"The probe encoder {model.config.name_or_path} is not the model that made the gallery's vectors "
            "(fingerprints differ): pass --encoder with that model's checkpoint."
        )
    return make_probe(model, args.probe_from, args.probe_size, split=args.probe_split, seed=args.probe_seed,
                      batch_size=args.batch_size)  # fmt: skip


def run_build(args) -> dict:
    from bt2_hf.galleries import EmbeddingDirectory, FaissGallery, embed_dataset
    from bt2_hf.galleries.stores import is_milvus_uri

    milvus = is_milvus_uri(args.output)
    if not milvus and Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(
            f"{args.output} already exists; pass --overwrite to replace it (the old gallery stays until the new one "
            "is complete), or choose another --output."
        )
    if milvus and args.probe_from:
        raise ValueError("--probe_from applies to gallery directories; a Milvus gallery has no probe set yet.")
    policy, model = _policy(args), None
    extra = {"policy": policy} if not milvus else {}
    if args.embeddings:
        if not args.encoder_config:
            raise ValueError("--embeddings needs --encoder_config (the encoder's checkpoint dir or config.json).")
        if milvus:
            raise ValueError("Build a Milvus gallery from an embedding directory (`bt2 embed`): --embedding_dir.")
        config = load_config(args.encoder_config)
        if not getattr(config, "fingerprint", None):
            raise ValueError(f"{args.encoder_config} has no fingerprint: save the encoder with save_pretrained first.")
        vectors, ids = load_embeddings(args.embeddings)
        encoder = {"fingerprint": config.fingerprint, "name_or_path": config.name_or_path,
                   "embedding_dim": int(config.embedding_dim),
                   "compatible_dim": int(getattr(config, "compatible_dim", None) or config.embedding_dim),
                   "modality": "image", "compatible_with": list(config.compatible_with or [])}  # fmt: skip
        gallery = FaissGallery.build(
            args.output, vectors, ids, encoder=encoder, index_type=args.index_type, overwrite=args.overwrite,
            dataset={"name": Path(args.embeddings).name}, dtype=args.dtype, probe=_probe(args, encoder), **extra,
            **_index_params(args),
        )  # fmt: skip
        return _summary(args, gallery)
    if not args.model:
        return _build_from(args, EmbeddingDirectory(args.embedding_dir), milvus, policy, None, extra)
    from bt2_hf import BT2Model

    if not args.data:
        raise ValueError("--model needs --data (the dataset to embed).")
    directory = args.embeddings_output or tempfile.mkdtemp(prefix="bt2-embed-")
    try:
        model = BT2Model.from_pretrained(args.model)
        embeddings = embed_dataset(
            model, args.data, directory, split=args.split, column=args.column, id_column=args.id_column,
            streaming=args.streaming, dtype=args.dtype, batch_size=args.batch_size,
        )  # fmt: skip
        return _build_from(args, embeddings, milvus, policy, model, extra)
    finally:
        if not args.embeddings_output:  # embedded only for this gallery, which holds its own copy of the vectors
            shutil.rmtree(directory, ignore_errors=True)


def _build_from(args, embeddings, milvus: bool, policy, model, extra: dict) -> dict:
    """The gallery of an embedding directory (faiss, or a Milvus collection), its summary printed."""
    from bt2_hf.galleries import FaissGallery

    if milvus:
        from bt2_hf.galleries.milvus_store import MilvusGallery
        from bt2_hf.galleries.stores import DEFAULT_COLLECTION

        gallery = MilvusGallery.from_embeddings(
            args.output, args.collection or DEFAULT_COLLECTION, embeddings, index_type=args.index_type,
            overwrite=args.overwrite, **_index_params(args),
        )  # fmt: skip
        gallery.set_policy(policy)
    else:
        probe = _probe(args, embeddings.manifest["model"], model)
        gallery = FaissGallery.from_embeddings(
            args.output, embeddings, index_type=args.index_type, overwrite=args.overwrite, probe=probe, **extra,
            **_index_params(args),
        )  # fmt: skip
    return _summary(args, gallery)


def _summary(args, gallery) -> dict:
    manifest = gallery.manifest
    summary = {"output": str(args.output), "count": manifest["count"], "dimension": manifest["dimension"],
               "index": manifest["index"], "encoder": manifest["encoder"]["fingerprint"],
               "labels": bool((manifest.get("items") or {}).get("labels")),
               "probe": (manifest.get("probe") or {}).get("size"), "policy": manifest.get("policy")}  # fmt: skip
    print(json.dumps(summary))
    return summary


def _queries(args):
    from PIL import Image

    from bt2_hf.galleries import open_source

    if args.query_text:
        return list(range(len(args.query_text))), args.query_text
    if args.query_images:
        return list(args.query_images), [Image.open(path).convert("RGB") for path in args.query_images]
    source = open_source(args.query_data, split=args.split)
    count = min(len(source), args.limit or len(source))
    return source.ids(0, count), source.items(0, count)


def run_search(args) -> dict:
    from bt2_hf.galleries import search_gallery
    from bt2_hf.galleries.stores import open_gallery

    store = open_gallery(args.index, collection=args.collection)
    if args.queries:
        embeddings, query_ids = load_embeddings(args.queries)
        if args.query_config:
            config = load_config(args.query_config)
        else:
            from bt2_hf import BT2Model

            config = BT2Model.from_pretrained(args.query_model).config  # its weights verified
        store.admit(config, args.allow_unmeasured)
        query_ids = query_ids or list(range(len(embeddings)))
    else:
        if args.query_config:
            raise ValueError("--query_config goes with precomputed --queries; to embed queries pass --query_model.")
        from bt2_hf import BT2Model
        from bt2_hf.galleries.embed import encode_items

        model = BT2Model.from_pretrained(args.query_model)
        config = model.config
        # Refuse before encoding the queries (an image model over a text gallery is admitted through the lineage).
        store.admit(config, args.allow_unmeasured)
        query_ids, items = _queries(args)
        embeddings = encode_items(model, items, 256)
    params = {key: getattr(args, key) for key in ("nprobe", "rerank") if getattr(args, key) is not None}
    result = search_gallery(store, embeddings, k=args.k, query_config=config, rule=args.rule,
                            allow_unmeasured=args.allow_unmeasured, **params)  # fmt: skip
    hits = [
        {"query": query, "ids": ids, "scores": [round(float(s), 6) for s in scores[: len(ids)]], "items": items}
        for query, ids, scores, items in zip(query_ids, result.ids, result.scores, result.hits())
    ]  # fmt: skip
    output = {"prefix_dim": result.prefix_dim, "admission": result.admission, "rule": result.rule, "results": hits}
    if args.output:
        write_or_print_json(output, args.output)
    if args.format == "table":
        print(results_table(output))
    elif not args.output:
        write_or_print_json(output, None)
    return output


def results_table(output: dict) -> str:
    """A readable table of ``bt2 index search`` results: one block per query, one line per hit."""
    admission = output.get("admission") or {}
    lines = [f"prefix {output['prefix_dim']} dims, admitted as {admission.get('basis', 'unchecked')}, ranked by the "
             f"{output.get('rule') or 'encoder'} rule"]  # fmt: skip
    for result in output["results"]:
        lines.append(f"\nquery {result['query']}")
        columns = ["rank", "score", "id", "row"] + [
            c for c in ("label", "path") if result["items"] and c in result["items"][0]
        ]
        rows = [[str(rank), f"{hit['score']:.4f}", str(hit["id"]), str(hit["row"])] + [str(hit[c]) for c in columns[4:]]
                for rank, hit in enumerate(result["items"], start=1)]  # fmt: skip
        widths = [max(len(column), *(len(row[i]) for row in rows)) if rows else len(column)
                  for i, column in enumerate(columns)]  # fmt: skip
        lines.append("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(format="%(message)s")
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
