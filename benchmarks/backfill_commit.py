"""The CPU of one backfill commit, and of a search over the re-embedded items, as the backfill progresses.

    python benchmarks/backfill_commit.py --n 100000
    python benchmarks/backfill_commit.py --n 1000000 --points 0.1,0.5,0.9
    OMP_NUM_THREADS=1 python benchmarks/backfill_commit.py --n 1000000 --points 0.1,0.9 --compare_exact

A commit, as ``bt2 serve``'s backfill job makes it (``CommitsUnderWriteLock``): the batch's rows written, the search
over the re-embedded items after the batch prepared (``prepare_backfill_search``), the commit point (the manifest,
then the switch). The gallery is a flat faiss gallery of ``--n`` × ``--dim`` unit vectors (the gallery's own index
plays no part in a commit), the new model's vectors ``--dim`` + 32 wide, in a random backfill order. At each
progress point the backfill jumps there (one bulk write, untimed, and one untimed commit that reads the jump's rows),
then ``--commits`` batches of ``--batch_size`` rows are committed one after the other and timed with the thread's
CPU clock and the wall clock, while a second Python thread wakes every 0.5 ms: its longest gap is how long a search
on the service's event loop could wait for the commit's hold of the GIL. Then single new-model queries search the
re-embedded items (``search_backfilled``, depth 100).

``--compare_exact`` runs the progress points twice on the same gallery, in one sitting: first with the exact scan
of every re-embedded row (the library's exact limit raised above ``--n``: "before"), then with the library's own
settings (an IVF index past the limit: "after"). Each pass reports, besides the commits, the recall of its searches
against an exact search of the same rows (faiss ``knn`` on the same vectors) at depths 1, 10 and 100 for two query
sets: held-out points of the gallery's mixture ("mixture": queries that look like the items) and points of another
mixture ("off-mixture": each query far from every cluster, the hard case for an IVF index), and the CPU of the
first extension at each point (it reads the jump's rows: at the first point it is the rebuild of a gallery opened
mid-backfill, index training included). Run it with ``OMP_NUM_THREADS=1``: the commit's CPU is the thread's clock,
which would not count faiss's other threads.

It uses only the store's public methods, so the same script measures another checkout of the library in the same
sitting (``PYTHONPATH=<that checkout> python benchmarks/backfill_commit.py``); the library measured is printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# this folder is on sys.path when a benchmark runs as a script
from gallery_scale import mixture

OLD = "sha256:" + "0a" * 32
NEW = "sha256:" + "0b" * 32
EXTRA_DIMS = 32


def milliseconds(values) -> dict:
    values = np.asarray(values) * 1000.0
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)), "max": float(values.max())}


class GilProbe:
    """A thread that sleeps 0.5 ms at a time and records how late it wakes: the other threads' GIL holds."""

    def __init__(self):
        self.gaps, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.0005)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def set_exact_limit(limit):
    """Set the library's exact limit (``None``: its default); returns the limit in force (``None``: it has none)."""
    from bt2_hf.galleries import backfill_search

    if not hasattr(backfill_search, "EXACT_SCAN_LIMIT"):  # a checkout with the exact scan only
        return None
    default = getattr(set_exact_limit, "default", None) or backfill_search.EXACT_SCAN_LIMIT
    set_exact_limit.default = default
    backfill_search.EXACT_SCAN_LIMIT = default if limit is None else int(limit)
    return backfill_search.EXACT_SCAN_LIMIT


def exact_top(table: np.ndarray, queries: np.ndarray, depth: int) -> np.ndarray:
    """The reference: positions of the ``depth`` best rows of ``table`` by inner product."""
    import faiss

    return faiss.knn(queries, table, depth, metric=faiss.METRIC_INNER_PRODUCT)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


def run_points(args, store, order, old, extra, new_dim, queries, query_sets, mode) -> list[dict]:
    """Start a backfill on ``store``, then measure its commits and searches at each progress point."""
    store.start_backfill(dict(model={"fingerprint": NEW, "name_or_path": "new", "embedding_dim": new_dim},
                              dimension=new_dim, order="random", seed=0, done=0, count=args.n, target=args.n,
                              batch_size=args.batch_size), order)  # fmt: skip

    def new_vectors(rows):
        return np.concatenate([old[rows], old[rows] @ extra], axis=1)

    def commit(done: int, stop: int, timings: dict | None) -> None:
        rows = order[done:stop]
        wall, clock = time.perf_counter(), time.thread_time()
        store.write_backfill_rows(rows, new_vectors(rows))
        written = time.thread_time()
        search = store.prepare_backfill_search(stop)
        prepared = time.thread_time()
        store.commit_backfill_batch(stop, search)
        if timings is not None:
            timings["write"].append(written - clock)
            timings["prepare"].append(prepared - written)
            timings["commit"].append(time.thread_time() - prepared)
            timings["wall"].append(time.perf_counter() - wall)

    points, done = [], 0
    for point in (float(p) for p in args.points.split(",")):
        target = int(point * args.n)
        for start in range(done, target, 65_536):  # the jump, untimed
            stop = min(target, start + 65_536)
            store.write_backfill_rows(order[start:stop], new_vectors(order[start:stop]))
        store.commit_backfill_batch(target)
        clock = time.thread_time()
        commit(target, target + args.batch_size, None)  # reads the jump's rows (and may train the index)
        jump_cpu = time.thread_time() - clock
        done = target + args.batch_size
        timings = {"write": [], "prepare": [], "commit": [], "wall": []}
        with GilProbe() as probe:
            for _ in range(args.commits):
                commit(done, done + args.batch_size, timings)
                done += args.batch_size
        searches = []
        for query in queries:
            clock = time.perf_counter()
            store.search_backfilled(query[None, :], 100)
            searches.append(time.perf_counter() - clock)
        reference = new_vectors(order[:done])
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        recalls = {}
        for name, query_set in query_sets.items():
            truth = order[exact_top(reference, query_set, 100)]
            found = store.search_backfilled(query_set, 100)[1]
            recalls[name] = {depth: recall(found[:, :depth], truth[:, :depth]) for depth in (1, 10, 100)}
        del reference
        total = [sum(parts) for parts in zip(timings["write"], timings["prepare"], timings["commit"])]
        row = {"mode": mode, "progress": point, "done": done, "cpu_ms_per_commit": milliseconds(total),
               "wall_ms_per_commit": milliseconds(timings.pop("wall")),
               "other_thread_longest_wait_ms": float(max(probe.gaps) * 1000),
               **{f"{name}_cpu_ms": milliseconds(values) for name, values in timings.items()},
               "jump_commit_cpu_s": jump_cpu,
               "search_backfilled_ms": {"p50": float(np.percentile(searches, 50) * 1000),
                                        "p99": float(np.percentile(searches, 99) * 1000)},
               "recall": recalls}  # fmt: skip
        points.append(row)
        print(f"[{mode}] progress {point:.0%} ({done} re-embedded): commit CPU {row['cpu_ms_per_commit']['mean']:.1f} ms "
              f"(prepare {row['prepare_cpu_ms']['mean']:.1f}, write {row['write_cpu_ms']['mean']:.1f}, "
              f"commit {row['commit_cpu_ms']['mean']:.1f}), wall {row['wall_ms_per_commit']['mean']:.1f} ms; another "
              f"thread waited up to {row['other_thread_longest_wait_ms']:.1f} ms; the jump's commit {jump_cpu:.2f} s "
              f"CPU; search_backfilled p50 {row['search_backfilled_ms']['p50']:.2f} ms p99 "
              f"{row['search_backfilled_ms']['p99']:.2f} ms; recall@1/10/100 "
              + "; ".join(f"{name} " + "/".join(f"{value:.4f}" for value in by_depth.values())
                          for name, by_depth in recalls.items()),
              flush=True)  # fmt: skip
    return points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="gallery size")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=1024, help="rows per commit (serve's default)")
    parser.add_argument("--points", default="0.1,0.5,0.9", help="progress points, fractions of the gallery")
    parser.add_argument("--commits", type=int, default=8, help="timed commits per point")
    parser.add_argument("--queries", type=int, default=200, help="timed single-query searches per point")
    parser.add_argument("--compare_exact", action="store_true",
                        help="run the points with the exact scan first, then with the library's settings")  # fmt: skip
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)

    import bt2_hf
    from bt2_hf.galleries import FaissGallery

    library = str(Path(bt2_hf.__file__).resolve().parent)
    print(f"library: {library}", flush=True)
    points = mixture(args.n + args.queries, args.dim, 1000, seed=0)  # the last ones: queries like the items
    old, near = points[: args.n], points[args.n :]
    rng = np.random.default_rng(1)
    extra = rng.normal(size=(args.dim, EXTRA_DIMS)).astype(np.float32) / np.sqrt(args.dim)
    new_dim = args.dim + EXTRA_DIMS
    order = rng.permutation(args.n)

    def widened(vectors):
        vectors = np.concatenate([vectors, vectors @ extra], axis=1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    queries = widened(mixture(args.queries, args.dim, 1000, seed=2))  # timed; off the gallery's mixture
    query_sets = {"mixture": widened(near), "off-mixture": queries}
    results = {"library": library, "n": args.n, "dim": args.dim, "new_dim": new_dim, "batch_size": args.batch_size,
               "points": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        store = FaissGallery.build(Path(tmp) / "g", old, list(range(args.n)),
                                   encoder={"fingerprint": OLD, "embedding_dim": args.dim})  # fmt: skip
        print(f"built {args.n} × {args.dim} in {time.perf_counter() - started:.1f} s", flush=True)
        passes = ["exact", "library"] if args.compare_exact else ["library"]
        for mode in passes:
            exact_limit = set_exact_limit(args.n + 1 if mode == "exact" else None)
            print(f"pass {mode!r}: exact limit {exact_limit}", flush=True)
            results["points"] += run_points(args, store, order, old, extra, new_dim, queries, query_sets, mode)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
