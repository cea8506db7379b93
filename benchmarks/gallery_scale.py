"""Galleries at scale: IVF-PQ over a mixture-of-Gaussians gallery, backfill, and milvus-lite against faiss.

    python benchmarks/gallery_scale.py                         # 1M × 128, 1,000 clusters, 10k queries
    python benchmarks/gallery_scale.py --count 200000 --queries 2000    # a smaller run

Measures (printed, and written as JSON with ``--output``):

- IVF-PQ build time (``FaissGallery.build``: vectors to disk, k-means on a sample, chunked adds);
- memory of the index in RAM (PQ codes + list ids + centroids) against a flat float32 index;
- recall@10 against exact (flat) search and the time of the queries, at the default settings and in a table over
  ``nprobe`` and the re-ranking depth;
- a 10 % backfill with the new vectors given (160-d, ``backfill(embed_rows=...)``);
- the same search through milvus-lite (a smaller collection: ``--milvus-count``) against faiss on that collection.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def mixture(count: int, dim: int, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """Unit vectors drawn around ``clusters`` random unit centres (structured like real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += spread / np.sqrt(dim) * rng.normal(size=block.shape).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.search(queries, k)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found.tolist(), truth.tolist())]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument(
        "--table-queries", type=int, default=2000, help="queries per cell of the nprobe × rerank table"
    )
    parser.add_argument("--milvus-count", type=int, default=100_000)
    parser.add_argument("--milvus-queries", type=int, default=1000)
    parser.add_argument("--skip-milvus", action="store_true")
    parser.add_argument("--workdir", help="where the galleries go (default: a temporary directory)")
    parser.add_argument("--output", help="JSON file for the figures")
    args = parser.parse_args()

    import faiss

    from bt2_hf.galleries import FaissGallery, backfill, search_gallery

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bt2-gallery-bench-"))
    if not args.workdir:  # its galleries take gigabytes at 1M: removed at exit, also after an error
        atexit.register(shutil.rmtree, workdir, True)
    figures: dict = {"count": args.count, "dim": args.dim, "clusters": args.clusters, "queries": args.queries,
                     "threads": faiss.omp_get_max_threads()}  # fmt: skip
    started = time.perf_counter()
    points = mixture(args.count + args.queries, args.dim, args.clusters, seed=0)  # queries: fresh points
    vectors, queries = points[: args.count], points[args.count :]
    print(f"data: {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    truth = exact_top(vectors, queries, 10)
    figures["flat_exact_search_s"] = round(time.perf_counter() - started, 2)
    print(f"exact flat search of {args.queries} queries: {figures['flat_exact_search_s']} s")

    fingerprint = "sha256:" + "0" * 64
    encoder = {"fingerprint": fingerprint, "name_or_path": "bench/old", "embedding_dim": args.dim}
    started = time.perf_counter()
    gallery = FaissGallery.build(workdir / "ivfpq", vectors, encoder=encoder, index_type="ivfpq", overwrite=True)
    figures["ivfpq_build_s"] = round(time.perf_counter() - started, 1)
    index_bytes = faiss.serialize_index(gallery.index).size
    flat_bytes = args.count * args.dim * 4
    figures.update(ivfpq_params=gallery.manifest["index"]["params"], ivfpq_ram_bytes=int(index_bytes),
                   flat_ram_bytes=flat_bytes, ram_ratio=round(index_bytes / flat_bytes, 4))  # fmt: skip
    print(f"IVF-PQ build: {figures['ivfpq_build_s']} s; index {index_bytes / 2**20:.1f} MiB vs flat "
          f"{flat_bytes / 2**20:.1f} MiB (ratio {figures['ram_ratio']})")  # fmt: skip

    class Config:  # the gallery encoder's own config: the prefix is the whole vector
        name_or_path, embedding_dim, compatible_with = "bench/old", args.dim, []

    Config.fingerprint = fingerprint
    gallery = FaissGallery.open(workdir / "ivfpq", verify=False)
    search_gallery(gallery, queries[:100], k=10, query_config=Config)  # warm the page cache and threads
    started = time.perf_counter()
    result = search_gallery(gallery, queries, k=10, query_config=Config)
    figures["default_search_s"] = round(time.perf_counter() - started, 2)
    figures["default_recall_at_10"] = round(recall(result.rows, truth), 4)
    print(f"default settings: recall@10 {figures['default_recall_at_10']}, {args.queries} queries in "
          f"{figures['default_search_s']} s")  # fmt: skip

    table = []
    probe_queries, probe_truth = queries[: args.table_queries], truth[: args.table_queries]
    for nprobe in (4, 8, 16, 32):
        for rerank in (100, 200, 500, 1000):
            started = time.perf_counter()
            result = search_gallery(gallery, probe_queries, k=10, query_config=Config, nprobe=nprobe, rerank=rerank)
            seconds = time.perf_counter() - started
            row = {"nprobe": nprobe, "rerank": rerank, "recall_at_10": round(recall(result.rows, probe_truth), 4),
                   "seconds_per_10k_queries": round(seconds * 10_000 / len(probe_queries), 2)}  # fmt: skip
            table.append(row)
            print(row)
    figures["table"] = table

    new_dim = args.dim + 32
    new_fingerprint = "sha256:" + "1" * 64

    class NewConfig:
        name_or_path, embedding_dim = "bench/new", new_dim
        compatible_with = [{"fingerprint": Config.fingerprint, "embedding_dim": args.dim, "name_or_path": "bench/old"}]

    NewConfig.fingerprint = new_fingerprint

    rng = np.random.default_rng(1)
    started = time.perf_counter()
    state = backfill(
        gallery, embed_rows=lambda rows: np.concatenate(
            [vectors[rows], rng.normal(size=(len(rows), 32)).astype(np.float32) * 0.1], axis=1),
        identity={"fingerprint": new_fingerprint, "name_or_path": "bench/new", "embedding_dim": new_dim},
        query_config=NewConfig, fraction=0.1, batch_size=10_000, allow_unmeasured=True, show_progress=False,
    )  # fmt: skip
    figures["backfill_10pct_s"] = round(time.perf_counter() - started, 2)
    figures["backfill_done"] = state["done"]
    print(f"10 % backfill ({state['done']} vectors given): {figures['backfill_10pct_s']} s")
    started = time.perf_counter()
    new_queries = np.concatenate([queries, np.zeros((len(queries), 32), np.float32)], axis=1)
    search_gallery(gallery, new_queries, k=10, query_config=NewConfig, allow_unmeasured=True)
    figures["mixed_search_s"] = round(time.perf_counter() - started, 2)
    print(f"{args.queries} new-model queries over the 10 %-backfilled gallery: {figures['mixed_search_s']} s")

    if not args.skip_milvus:
        from bt2_hf.galleries.milvus_store import MilvusGallery

        count, n_queries = min(args.milvus_count, args.count), min(args.milvus_queries, args.queries)
        sub, sub_queries = vectors[:count], queries[:n_queries]
        sub_truth = exact_top(sub, sub_queries, 10)
        milvus_figures = {"count": count, "queries": n_queries}
        for index_type in ("flat", "hnsw"):
            started = time.perf_counter()
            milvus = MilvusGallery.build(str(workdir / "milvus.db"), f"bench_{index_type}", sub, encoder=encoder,
                                         index_type=index_type, overwrite=True)  # fmt: skip
            build_s = time.perf_counter() - started
            started = time.perf_counter()
            local = FaissGallery.build(workdir / f"faiss_{index_type}", sub, encoder=encoder, index_type=index_type,
                                       overwrite=True)  # fmt: skip
            faiss_build_s = time.perf_counter() - started
            timings = {}
            for name, store in (("milvus_lite", milvus), ("faiss", local)):
                search_gallery(store, sub_queries[:10], k=10, query_config=Config)
                started = time.perf_counter()
                found = search_gallery(store, sub_queries, k=10, query_config=Config)
                timings[name] = {"search_s": round(time.perf_counter() - started, 3),
                                 "recall_at_10": round(recall(found.rows, sub_truth), 4)}  # fmt: skip
            milvus_figures[index_type] = dict(timings, milvus_build_s=round(build_s, 1),
                                              faiss_build_s=round(faiss_build_s, 1))  # fmt: skip
            print(index_type, milvus_figures[index_type])
        figures["milvus"] = milvus_figures
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
