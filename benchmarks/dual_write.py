"""Dual-write latency: adding items to a served gallery, before (a full atomic rewrite of the gallery per write) and
after (append-only files committed by the manifest, rows added to the open index), in one run.

    python benchmarks/dual_write.py                      # 100k × 128 IVF-PQ with a backfill recorded (minutes)
    python benchmarks/dual_write.py --n 1000000          # 1M: idle cores only (the build alone takes minutes)
    python benchmarks/dual_write.py --n 20000 --before_writes 5 --after_writes 100      # a quick look

What runs: a gallery of ``--n`` unit vectors (a mixture of 1,000 Gaussian clusters, ``gallery_scale.mixture``) as an
IVF-PQ faiss gallery (the library's defaults: √N lists, nprobe 16, 1,000 candidates re-ranked exactly) with a
backfill recorded (a 160-d "new model", ``--backfilled`` of the items re-embedded), as during a migration: each
added item carries both vectors. Writes of 1 item and of 100 items, each timed from the call to the return of the
open gallery that holds the items (the service swaps it in), through the library's ``append_items``:

- before: the former ``append.py`` (read from git, ``--before_rev``): it rebuilds the gallery directory in staging
  (vectors, index, ids, backfill table) and swaps it in, then reopens it;
- after: this tree's ``append_items``: three appends, fsynced with the manifest's temporary file, the manifest
  renamed into place (the commit, timed apart: ``commit`` and ``rest``), ``index.add`` in memory.

Then the same writes through ``GalleryService.add_items`` (its locks) while its backfill job runs beside them (a
synthetic new model whose chunk of ``--job_chunk`` items takes ``--job_embed_seconds`` to embed): a write waits for
the job's commits, not for its model. Then, after all the appends: the search latency (p50 of 200 single encoder-space queries) of the gallery holding
the appended rows against the same gallery compacted, the time to open it (its appended rows re-added to the
index), and the time of ``compact_gallery``. Each write and each search is single-threaded
(``OMP_NUM_THREADS=1``); ``os.sync()`` runs before each phase, so that no phase waits for the writeback of the one
before. The temporary folder is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

# the 1M benchmark's synthetic embeddings (this folder is on sys.path when a benchmark runs as a script)
from gallery_scale import mixture
from serve_load import NEW as NEW_FINGERPRINT
from serve_load import OLD as OLD_FINGERPRINT
from serve_load import new_model_config

HERE = Path(__file__).resolve()
OLD = {"fingerprint": OLD_FINGERPRINT, "name_or_path": "bench-old", "embedding_dim": 128}
NEW = {"fingerprint": NEW_FINGERPRINT, "name_or_path": "new", "embedding_dim": 160}


def former_append_module(revision: str) -> types.ModuleType:
    """``bt2_hf/galleries/append.py`` as it was at ``revision``, imported as a module of the installed package."""
    source = subprocess.run(["git", "show", f"{revision}:bt2_hf/galleries/append.py"], cwd=HERE.parents[1],
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    module = types.ModuleType("bt2_hf.galleries._append_before")
    module.__package__ = "bt2_hf.galleries"
    exec(compile(source, f"{revision}:append.py", "exec"), module.__dict__)
    return module


def percentiles(seconds: list[float]) -> dict:
    values = np.asarray(seconds) * 1000
    return {"writes": len(values), "p50_ms": round(float(np.percentile(values, 50)), 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2), "max_ms": round(float(values.max()), 2)}  # fmt: skip


def build(directory: Path, n: int, backfilled: float, seed: int):
    from bt2_hf.galleries import FaissGallery

    vectors = mixture(n, 128, 1000, seed)
    started = time.perf_counter()
    gallery = FaissGallery.build(directory, vectors, encoder=OLD, index_type="ivfpq")
    built = time.perf_counter() - started
    order = np.random.default_rng(seed).permutation(n)
    gallery.start_backfill({"model": NEW, "dimension": 160, "order": "random", "seed": seed, "done": 0, "count": n,
                            "target": 0, "batch_size": 65536}, order)  # fmt: skip
    done = int(backfilled * n)
    rng = np.random.default_rng(seed + 1)
    for start in range(0, done, 65536):
        rows = order[start : min(done, start + 65536)]
        new = np.concatenate([vectors[rows], rng.normal(size=(len(rows), 32)).astype(np.float32) * 0.1], axis=1)
        gallery.write_backfill_batch(rows, new, start + len(rows))
    return built


def timed_writes(append, directory: Path, sizes: dict, first_id: int, seed: int, commits: list | None = None) -> dict:
    """Per write size, the seconds of each write (``append(store, vectors, ids, backfill) -> store``); with
    ``commits`` (the seconds of each manifest commit, appended by the write), the commit's share too."""
    from bt2_hf.galleries import FaissGallery

    store = FaissGallery.open(directory, verify=False)
    rng = np.random.default_rng(seed)
    next_id, results = first_id, {}
    for size, writes in sizes.items():
        seconds = []
        if commits is not None:
            commits.clear()
        for _ in range(writes):
            old = rng.normal(size=(size, 128)).astype(np.float32)
            new = rng.normal(size=(size, 160)).astype(np.float32)
            ids = list(range(next_id, next_id + size))
            next_id += size
            started = time.perf_counter()
            store = append(store, old, ids, new)
            seconds.append(time.perf_counter() - started)
        results[f"{size}_item"] = percentiles(seconds)
        if commits is not None and len(commits) == len(seconds):
            results[f"{size}_item"]["commit"] = percentiles(commits)
            results[f"{size}_item"]["rest"] = percentiles(np.subtract(seconds, commits).tolist())
        print(f"  {size}-item writes: {results[f'{size}_item']}", flush=True)
    return results


def service_writes(root: Path, sizes: dict, chunk: int, embed_seconds: float, seed: int) -> dict:
    """Dual-writes through ``GalleryService.add_items`` (the gallery's locks) while its backfill job runs: a synthetic
    new model whose embedding of a chunk takes ``embed_seconds`` (a model's forward passes), then the job's commit."""
    from bt2_hf.serving import GalleryService
    from bt2_hf.serving.service import BackfillJob, LoadedModel

    service = GalleryService(root, resume_jobs=False)
    _, served = service.served("bench")
    dim = served.store.dimension
    new = LoadedModel("new", "", types.SimpleNamespace(config=new_model_config(dim, OLD["fingerprint"]),
                                                       modality="image"))  # fmt: skip
    service.registry.models["new"] = new

    class SyntheticJob(BackfillJob):
        def _embedder(self):
            def embed_rows(rows):
                time.sleep(embed_seconds)  # the model's time; the job does not hold the gallery meanwhile
                old = self.served.store.vectors_at(np.sort(rows))[np.argsort(np.argsort(rows))]
                return np.concatenate([old, np.zeros((len(rows), 32), np.float32)], axis=1)

            return embed_rows

    service.start_job(served, new, {"batch_size": chunk, "pause": 0.0, "order": "random"}, SyntheticJob)
    rng = np.random.default_rng(seed)
    next_id, results = 2 * 10**9, {}
    try:
        for size, writes in sizes.items():
            seconds = []
            for _ in range(writes):
                items = [{"id": next_id + i, "vectors": {OLD["fingerprint"]: rng.normal(size=128).tolist(),
                                                         NEW["fingerprint"]: rng.normal(size=160).tolist()}}
                         for i in range(size)]  # fmt: skip
                next_id += size
                started = time.perf_counter()
                service.add_items("bench", items)
                seconds.append(time.perf_counter() - started)
            results[f"{size}_item"] = percentiles(seconds)
            print(f"  {size}-item writes beside the backfill job: {results[f'{size}_item']}", flush=True)
        results["job"] = {key: served.job.progress()[key] for key in ("status", "done", "count", "items_per_second")}
    finally:
        service.stop_jobs()
    return results


def search_p50(store, queries: np.ndarray) -> float:
    timings = []
    for query in queries:
        started = time.perf_counter()
        store.search_encoder_space(query[None, :], 10)
        timings.append(time.perf_counter() - started)
    return round(float(np.percentile(timings, 50)) * 1000, 3)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--backfilled", type=float, default=0.3, help="fraction re-embedded when the writes start")
    parser.add_argument("--before_writes", type=int, default=20, help="writes of each size through the former path")
    parser.add_argument("--after_writes", type=int, default=300, help="writes of each size through the append path")
    parser.add_argument("--before_rev", default="fb67c37", help="the commit whose append.py is 'before'")
    parser.add_argument(
        "--service_writes",
        type=int,
        default=100,
        help="writes of each size through GalleryService.add_items beside a running backfill job",
    )
    parser.add_argument("--job_chunk", type=int, default=1024, help="the backfill job's items per commit")
    parser.add_argument(
        "--job_embed_seconds", type=float, default=0.5, help="the synthetic model's time to embed one chunk"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--workdir", help="where the galleries go (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import faiss

    from bt2_hf.galleries import FaissGallery
    from bt2_hf.galleries.append import append_items, compact_gallery

    faiss.omp_set_num_threads(1)
    former = former_append_module(args.before_rev)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bt2-dual-write-"))
    results = {"n": args.n, "dimension": 128, "index": "ivfpq", "backfill_dimension": 160,
               "backfilled": args.backfilled, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
               "before_rev": args.before_rev}  # fmt: skip
    try:
        print(f"building {args.n} × 128 IVF-PQ with a backfill recorded ...", flush=True)
        results["build_seconds"] = round(build(work / "before", args.n, args.backfilled, args.seed), 1)
        shutil.copytree(work / "before", work / "after")
        shutil.copytree(work / "before", work / "service" / "bench")

        def before(store, old, ids, new):
            return former.append_items(store, old, ids, backfill_vectors=new)[0]

        def after(store, old, ids, new):
            return append_items(store, old, ids, backfill_vectors=new)[0]

        os.sync()  # the build's dirty pages written back before any write is timed
        print("before: a full rewrite per write", flush=True)
        results["before"] = timed_writes(before, work / "before", {1: args.before_writes, 100: args.before_writes},
                                         10**9, args.seed)  # fmt: skip
        os.sync()  # the rewrites' gigabytes written back: their writeback would stall the next fsyncs
        print("after: appended files", flush=True)
        # The commit (the manifest's write: the appended rows and the manifest fsynced together, then the rename)
        # timed apart from the rest of the write: on a shared disk the tail is the fsyncs'.
        import bt2_hf.galleries.append as append_module

        commits, commit = [], append_module.atomic_write_json

        def timed_commit(*arguments, **options):
            started = time.perf_counter()
            commit(*arguments, **options)
            commits.append(time.perf_counter() - started)

        append_module.atomic_write_json = timed_commit
        try:
            results["after"] = timed_writes(after, work / "after", {1: args.after_writes, 100: args.after_writes},
                                            10**9, args.seed, commits)  # fmt: skip
        finally:
            append_module.atomic_write_json = commit
        if args.service_writes:
            os.sync()
            print("after, through the service, beside a running backfill job", flush=True)
            results["service_beside_backfill"] = service_writes(
                work / "service", {1: args.service_writes, 100: args.service_writes}, args.job_chunk,
                args.job_embed_seconds, args.seed,
            )  # fmt: skip
        started = time.perf_counter()
        appended = FaissGallery.open(work / "after", verify=False)
        results["open_with_appended_seconds"] = round(time.perf_counter() - started, 3)
        results["appended_rows"] = len(appended.appended)
        queries = mixture(200, 128, 1000, args.seed)  # the gallery's own clusters
        results["search_p50_ms_with_appended"] = search_p50(appended, queries)
        started = time.perf_counter()
        compacted = compact_gallery(appended)
        results["compact_seconds"] = round(time.perf_counter() - started, 2)
        results["search_p50_ms_compacted"] = search_p50(compacted, queries)
        same = appended.search_encoder_space(queries, 10)[1] == compacted.search_encoder_space(queries, 10)[1]
        results["compacted_answers_identical"] = bool(same.all())
        for size in ("1_item", "100_item"):
            results[f"speedup_p50_{size}"] = round(results["before"][size]["p50_ms"] /
                                                   results["after"][size]["p50_ms"], 1)  # fmt: skip
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
