"""Recall of the IVF index over a backfill's re-embedded rows against the exact scan, by nprobe and depth.

    python benchmarks/backfill_index_recall.py --mixture 1000000                 # gallery_scale's mixture, 160-d
    python benchmarks/backfill_index_recall.py --model DEMO/models/bt2 --cache bt2.npz   # Fashion-MNIST embedded

The rows are re-embedded in a random order (one per ``--seeds`` value) and searched as a backfill searches them
(``BackfillSearch``): exact up to the limit (``--limit``; the library's by default, lower for a small gallery),
where the index is trained on the rows re-embedded by then, then grown by the rest. At each progress point, the
queries' top ``depth`` rows (depth 1, 10, 100: the slot rule fills at most k ≤ 100 slots a query) are compared with
the exact top ``depth`` of the same rows (faiss ``knn``): recall = the share of the exact rows found, mean ± sd over
the seeds. Queries: ``--mixture``: held-out points of the gallery's mixture ("mixture") and points of another mixture
("off-mixture", far from every cluster); ``--model``: the Fashion-MNIST test split embedded by the model, the
gallery being the training split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

# this folder is on sys.path when a benchmark runs as a script
from gallery_scale import mixture

DEPTHS = (1, 10, 100)
BATCH = 1024


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def mixture_data(count: int, queries: int) -> tuple[np.ndarray, dict]:
    """backfill_commit.py's new-model vectors: a 128-d mixture widened by 32 dimensions to 160."""
    points = mixture(count + queries, 128, 1000, seed=0)
    extra = np.random.default_rng(1).normal(size=(128, 32)).astype(np.float32) / np.sqrt(128)

    def widened(vectors):
        return unit(np.concatenate([vectors, vectors @ extra], axis=1))

    return widened(points[:count]), {"mixture": widened(points[count:]),
                                     "off-mixture": widened(mixture(queries, 128, 1000, seed=2))}  # fmt: skip


def model_data(model_dir: str, cache: str | None, queries: int) -> tuple[np.ndarray, dict]:
    """Fashion-MNIST's training split (the gallery) and test split (the queries), embedded by a BT² model."""
    if cache and Path(cache).is_file():
        stored = np.load(cache)
        return unit(stored["train"]), {"test split": unit(stored["test"][:queries])}
    from bt2_hf import BT2Model
    from bt2_hf.data.fashion_mnist import load_fashion_mnist

    model = BT2Model.from_pretrained(model_dir).eval()
    embedded = {split: model.encode(images=load_fashion_mnist(split=split).images, batch_size=256).numpy()
                for split in ("train", "test")}  # fmt: skip
    if cache:
        np.savez(cache, **embedded)
    return unit(embedded["train"]), {"test split": unit(embedded["test"][:queries])}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


def measure_hold(search, order: np.ndarray, vectors: np.ndarray, commits: int = 32) -> np.ndarray:
    """How long each of ``commits`` more commits holds the index alone (what a search can wait for), in ms.

    The commits come from the rows before the last point's (re-added: only the lock's timing matters here)."""
    import contextlib

    from bt2_hf.galleries import backfill_search

    holds, exclusive = [], backfill_search._SharedLock.exclusive

    @contextlib.contextmanager
    def timed(lock):
        with exclusive(lock):
            started = time.perf_counter()
            yield
            holds.append(time.perf_counter() - started)

    backfill_search._SharedLock.exclusive = timed
    try:
        # A second order that repeats the first rows after the covered ones: the table can grow past the gallery.
        repeated = np.concatenate([order[: search.done], order[: commits * BATCH]])
        for done in range(search.done + BATCH, search.done + (commits + 1) * BATCH, BATCH):
            search = search.extended(repeated, vectors, done)
    finally:
        backfill_search._SharedLock.exclusive = exclusive
    return np.asarray(holds) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mixture", type=int, help="gallery size of gallery_scale's mixture")
    source.add_argument("--model", help="a BT² model folder: Fashion-MNIST embedded by it")
    parser.add_argument("--cache", help="with --model: an .npz of the embeddings, written once and read after")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--limit", type=int, help="the exact limit (default: the library's)")
    parser.add_argument("--nprobe", default="8,16,32,64")
    parser.add_argument("--points", default="0.25,0.5,1.0", help="progress points, fractions of the gallery")
    parser.add_argument("--seeds", default="0,1,2", help="one random backfill order per seed")
    parser.add_argument("--lists_per_sqrt", type=float, help="lists per √(rows) (default: the library's)")
    parser.add_argument("--hold", action="store_true",
                        help="also time the index lock's exclusive side over 32 commits at the last point")  # fmt: skip
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)

    import faiss

    from bt2_hf.galleries import backfill_search
    from bt2_hf.galleries.backfill_search import BackfillSearch

    if args.mixture:
        vectors, query_sets = mixture_data(args.mixture, args.queries)
    else:
        vectors, query_sets = model_data(args.model, args.cache, args.queries)
    count, limit = len(vectors), args.limit or backfill_search.EXACT_SCAN_LIMIT
    if args.lists_per_sqrt:
        backfill_search.LISTS_PER_SQRT_ROWS = args.lists_per_sqrt
    probes = [int(value) for value in args.nprobe.split(",")]
    print(f"{count} rows × {vectors.shape[1]}, exact limit {limit}, threads {faiss.omp_get_max_threads()}", flush=True)
    cells: dict = {}  # (point, query set, nprobe, depth) → recalls over the seeds
    lists = None
    for seed in (int(value) for value in args.seeds.split(",")):
        order = np.random.default_rng(seed).permutation(count)
        search, done = BackfillSearch.empty(vectors.shape[1], count, exact_limit=limit), 0
        for point in (float(value) for value in args.points.split(",")):
            target = max(int(point * count), limit + 1)
            started = time.perf_counter()
            while done < target:  # commits as a backfill makes them: the index trained once, at the limit
                done = min(target, done + BATCH) if search.approximate or done + BATCH <= limit else limit + 1
                search = search.extended(order, vectors, done)
            lists = search.lists
            table = vectors[order[:done]]
            for name, queries in query_sets.items():
                truth = order[faiss.knn(queries, table, max(DEPTHS), metric=faiss.METRIC_INNER_PRODUCT)[1]]
                for nprobe in probes:
                    found = search.search(queries, max(DEPTHS), nprobe=nprobe)[1]
                    for depth in DEPTHS:
                        key = (point, done, name, nprobe, depth)
                        cells.setdefault(key, []).append(recall(found[:, :depth], truth[:, :depth]))
            print(f"seed {seed}: {done} rows ({lists} lists) in {time.perf_counter() - started:.1f} s", flush=True)
    holds = measure_hold(search, order, vectors) if args.hold else None
    rows = [{"progress": point, "done": done, "queries": name, "nprobe": nprobe, "depth": depth,
             "recall_mean": float(np.mean(values)), "recall_sd": float(np.std(values, ddof=1)) if len(values) > 1
             else 0.0, "seeds": len(values)} for (point, done, name, nprobe, depth), values in cells.items()]  # fmt: skip
    print(f"\nlists {lists}; recall mean ± sd over {len(args.seeds.split(','))} orders")
    print("| progress | queries | nprobe | " + " | ".join(f"recall@{depth}" for depth in DEPTHS) + " |")
    print("|---|---|---|" + "---|" * len(DEPTHS))
    for point, name, nprobe in dict.fromkeys((row["progress"], row["queries"], row["nprobe"]) for row in rows):
        found = {row["depth"]: row for row in rows if (row["progress"], row["queries"], row["nprobe"]) ==
                 (point, name, nprobe)}  # fmt: skip
        print(f"| {point:.0%} | {name} | {nprobe} | " + " | ".join(
            f"{found[depth]['recall_mean']:.4f} ± {found[depth]['recall_sd']:.4f}" for depth in DEPTHS) + " |")  # fmt: skip
    if holds is not None:
        print(f"\nthe index's exclusive side, {len(holds)} commits of {BATCH} rows after {search.done}: p50 "
              f"{np.median(holds):.3f} ms, max {holds.max():.3f} ms")  # fmt: skip
    if args.output:
        Path(args.output).write_text(
            json.dumps({"count": count, "limit": limit, "lists": lists, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
