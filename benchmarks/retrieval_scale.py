"""Retrieval at scale on CPU: the streaming evaluator on a 1M gallery, and against brute-force numpy at 50k.

Part 1: 10k queries (d=160, a BT² "new" model) against 1M random unit vectors (d=128, an "old" gallery): the prefix
rule cuts the queries to 128 dims and re-normalises; top-1 / top-5 / mAP@R with 1000 classes (R ≈ 1000). Reports
wall time and peak memory (goal: < 10 min, < 4 GB on 2 cores).

Part 2: the same protocol with a 50k gallery, the evaluator (faiss flat) against a brute-force numpy reference (dense
scores per query block, full stable argsort). Reports whether results are identical and the speed-up (goal ≥ 1.5x).

Run: ``python benchmarks/retrieval_scale.py [--gallery 1000000] [--queries 10000] [--small-gallery 50000]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time

import numpy as np

from bt2_hf.retrieval import RetrievalEvaluator

logger = logging.getLogger(__name__)


def random_unit_vectors(rng: np.random.Generator, count: int, dim: int, block: int = 200_000) -> np.ndarray:
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, block):  # blockwise, so the float64 draw never holds the whole gallery
        chunk = rng.standard_normal((min(block, count - start), dim), dtype=np.float32)
        out[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def brute_force(queries, gallery, query_labels, gallery_labels, block: int = 500):
    """Reference: dense prefix-cosine scores, full stable argsort, top-1 / top-5 / mAP@R per query.

    Queries whose class has no gallery item are skipped, as the evaluator does.
    """
    dim = gallery.shape[1]
    q = queries[:, :dim] / np.linalg.norm(queries[:, :dim], axis=1, keepdims=True)
    class_sizes = np.bincount(gallery_labels, minlength=query_labels.max() + 1)
    top1, top5, map_at_r = [], [], []
    for start in range(0, len(q), block):
        scores = q[start : start + block] @ gallery.T
        order = np.argsort(-scores, axis=1, kind="stable")
        relevant = gallery_labels[order] == query_labels[start : start + block, None]
        has_relevant = class_sizes[query_labels[start : start + block]] > 0
        top1.append(relevant[has_relevant, 0])
        top5.append(relevant[has_relevant, :5].any(axis=1))
        for row, labels_row in enumerate(relevant):
            r = class_sizes[query_labels[start + row]]
            if r == 0:
                continue
            hits = labels_row[:r]
            map_at_r.append(float((np.cumsum(hits) / np.arange(1, r + 1) * hits).sum() / r))
    return {
        "top1": float(np.concatenate(top1).mean()),
        "top5": float(np.concatenate(top5).mean()),
        "map@r": float(np.mean(map_at_r)),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--small-gallery", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    metrics = ["top1", "top5", "map@r"]
    report = {}

    queries = random_unit_vectors(rng, args.queries, 160)
    query_labels = rng.integers(0, args.classes, args.queries)
    if not args.skip_large:
        gallery = random_unit_vectors(rng, args.gallery, 128)
        gallery_labels = rng.integers(0, args.classes, args.gallery)
        start = time.perf_counter()
        result = RetrievalEvaluator(metrics=metrics).evaluate(queries, gallery, query_labels, gallery_labels)
        report["large"] = {
            "gallery": args.gallery,
            "queries": args.queries,
            "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_gb_so_far": round(peak_rss_gb(), 2),
            "metrics": result.metrics,
        }
        logger.info("1M-gallery run: %s", json.dumps(report["large"]))
        del gallery, gallery_labels

    gallery = random_unit_vectors(rng, args.small_gallery, 128)
    gallery_labels = rng.integers(0, args.classes, args.small_gallery)
    start = time.perf_counter()
    ours = RetrievalEvaluator(metrics=metrics).evaluate(queries, gallery, query_labels, gallery_labels).metrics
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = brute_force(queries, gallery, query_labels, gallery_labels)
    reference_s = time.perf_counter() - start
    report["small"] = {
        "gallery": args.small_gallery,
        "queries": args.queries,
        "evaluator_s": round(ours_s, 2),
        "numpy_bruteforce_s": round(reference_s, 2),
        "speedup": round(reference_s / ours_s, 2),
        "evaluator": ours,
        "numpy": reference,
        "max_abs_difference": max(abs(ours[name] - reference[name]) for name in metrics),
    }
    report["peak_rss_gb"] = round(peak_rss_gb(), 2)
    logger.info("50k comparison: %s", json.dumps(report["small"]))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
