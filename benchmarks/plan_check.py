"""Check ``bt2 plan``'s predictions against a measured gallery: memory and query latency, predicted vs measured.

    python benchmarks/plan_check.py                                   # truth: 200k × 128; calibration: 50k
    python benchmarks/plan_check.py --count 1000000                   # the 1M benchmark's size (1.5 min on CPU)

The prediction is what ``bt2 plan`` computes: memory from the gallery format, latency from a calibration on a small
synthetic gallery (``--calibration-size``) scaled by each index's cost model. The truth is a
:class:`~bt2_hf.galleries.FaissGallery` of ``--count`` vectors from ``gallery_scale.py``'s mixture of Gaussians,
built and searched through the library: index bytes (``faiss.serialize_index``), file sizes on disk, and seconds
per query of flat search and of ``search_encoder_space`` on IVF-PQ (the galleries' defaults: nprobe 16, 1,000
re-ranked). Latencies are the best of ``--repeats`` passes, as in the calibration, both ways the calibration
searches: the queries in one batch, and one query per call (as a service searches). Goal: within 20 %.

The queries stay one batch of a few hundred: from ``queries × d ≥ 128,000`` faiss's flat search switches to a matrix
product (10× less per query), which the served path (one query, or a micro-batch) never takes.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def best_of(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def average(before, after):
    """The mean of two calibrations of the same settings, term by term and rung by rung."""
    terms = {name: (getattr(before, name) + getattr(after, name)) / 2
             for name in ("flat_s", "quantizer_s", "probe_s", "code_s", "rerank_s", "overhead_s")}  # fmt: skip
    ladders = {name: [[size, (a + b) / 2] for (size, a), (_, b) in zip(getattr(before, name), getattr(after, name))]
               for name in ("flat_scan", "rerank_scan")}  # fmt: skip
    return replace(before, **terms, **ladders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--calibration-size", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir")
    parser.add_argument("--output", help="JSON file for the figures")
    args = parser.parse_args()

    import faiss
    from gallery_scale import mixture

    from bt2_hf.galleries import FaissGallery
    from bt2_hf.galleries.plan import CALIBRATION_MODES, calibrate_searches, index_memory, predict_latency

    def calibrate():
        started = time.perf_counter()
        measured = calibrate_searches(args.dim, count=args.calibration_size, queries=args.queries,
                                      repeats=args.repeats)  # fmt: skip
        print(f"calibration ({args.calibration_size:,} × {args.dim}, {args.queries} queries, both modes): "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        return measured

    points = mixture(args.count + args.queries, args.dim, args.clusters, seed=0)
    vectors, queries = points[: args.count], points[args.count :]
    encoder = {"fingerprint": "sha256:" + "0" * 64, "name_or_path": "bench/old", "embedding_dim": args.dim}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bt2-plan-check-"))
    if not args.workdir:  # its galleries take gigabytes at 1M: removed at exit, also after an error
        atexit.register(shutil.rmtree, workdir, True)
    rows = []

    def compare(what: str, predicted: float, measured: float, unit: str) -> None:
        ratio = predicted / measured if measured else float("nan")
        rows.append({"what": what, "predicted": predicted, "measured": measured, "unit": unit,
                     "ratio": round(ratio, 3)})  # fmt: skip
        print(
            f"{what:<56} predicted {predicted:10.4f} {unit:<4} measured {measured:10.4f} {unit:<4} ratio {ratio:.3f}"
        )

    truth = {}
    for index_type in ("flat", "ivfpq"):
        started = time.perf_counter()
        gallery = FaissGallery.build(workdir / index_type, vectors, encoder=encoder, index_type=index_type,
                                     overwrite=True)  # fmt: skip
        print(f"built {index_type} ({args.count:,} × {args.dim}) in {time.perf_counter() - started:.1f} s")
        truth[index_type] = gallery
    # The machine is shared: the calibration is measured before and after the truth, and the two averaged, so that a
    # change of load in between biases the comparison less.
    before = calibrate()
    measured_s = {}
    for index_type, gallery in truth.items():
        gallery.search_encoder_space(queries[:10], 10)  # warm the page cache and the threads
        measured_s["batched", index_type] = best_of(lambda g=gallery: g.search_encoder_space(queries, 10),
                                                    args.repeats) / len(queries)  # fmt: skip
        # One query per call, as a service searches (flat: the first queries only, each scans the whole gallery).
        alone = [queries[i : i + 1] for i in range(len(queries) if index_type == "ivfpq" else min(30, len(queries)))]
        measured_s["one_at_a_time", index_type] = best_of(
            lambda g=gallery, a=alone: [g.search_encoder_space(q, 10) for q in a], args.repeats) / len(alone)  # fmt: skip
    after = calibrate()
    calibrations = {mode: average(before[mode], after[mode]) for mode in CALIBRATION_MODES}
    for index_type, gallery in truth.items():
        memory = index_memory(args.count, args.dim, index_type)
        mib = 2.0**20
        compare(f"{index_type}: index in RAM", memory["parts"]["index.faiss"]["bytes"] / mib,
                faiss.serialize_index(gallery.index).size / mib, "MiB")  # fmt: skip
        sizes = gallery.manifest["file_sizes"]
        predicted_disk = sum(memory["parts"][name]["bytes"] for name in ("index.faiss", "ids.npy"))
        predicted_disk += memory["parts"]["vectors.npy (memory-mapped re-ranking vectors)"]["bytes"]
        compare(f"{index_type}: index.faiss + ids.npy + vectors.npy", predicted_disk / mib,
                sum(sizes[name] for name in ("index.faiss", "ids.npy", "vectors.npy")) / mib, "MiB")  # fmt: skip
        for mode, calibration in calibrations.items():
            predicted = predict_latency(calibration, args.count, args.dim, index_type)
            compare(f"{index_type}: search per query, {mode.replace('_', ' ')}", 1000 * predicted["seconds_per_query"],
                    1000 * measured_s[mode, index_type], "ms")  # fmt: skip
            ladder = calibration.flat_scan if index_type == "flat" else calibration.rerank_scan
            print(f"  {'flat scan' if index_type == 'flat' else 're-ranking'} ladder (ns per float): "
                  + ", ".join(f"{size * 4 / mib:.0f} MiB {1e9 * cost:.3f}" for size, cost in ladder))  # fmt: skip
            if index_type == "ivfpq":
                print("  predicted terms (ms): " + ", ".join(f"{k} {1000 * v:.3f}"
                                                             for k, v in predicted["terms"].items()))  # fmt: skip
    figures = {"count": args.count, "dim": args.dim, "queries": args.queries, "threads": faiss.omp_get_max_threads(),
               "calibration": {mode: c.to_dict() for mode, c in calibrations.items()},
               "calibration_before": {mode: c.to_dict() for mode, c in before.items()},
               "calibration_after": {mode: c.to_dict() for mode, c in after.items()}, "rows": rows}  # fmt: skip
    within = all(abs(row["ratio"] - 1) <= 0.2 for row in rows)
    print(f"all within 20 %: {within}")
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
