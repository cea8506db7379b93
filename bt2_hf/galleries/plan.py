"""The cost of an upgrade before it starts: what BT² avoids, how long a backfill takes, index memory, query latency.

Four estimates, each from stated inputs and a stated model (``bt2 plan`` prints them, with ``--json`` as JSON):

- **Re-embedding avoided.** Without a compatible model, an upgrade re-embeds the whole gallery before the new model
  serves a single query: ``N / throughput`` seconds of the GPU, priced per hour. A BT² model searches the old gallery
  at once, so this is what it saves (a backfill, when run at all, spends the same GPU time at its own pace).
- **Backfill schedule.** At a rate (items/s, or a daily budget turned into GPU seconds at the given throughput), the
  backfilled fraction β grows linearly: ``β(t) = min(1, rate·t / N)``.
- **Index memory**, from the gallery format of :mod:`bt2_hf.galleries.faiss_store`: the faiss index held in RAM
  (flat: ``N·d`` float32; IVF-PQ: ``N·pq_m`` code bytes + ``N`` 8-byte list ids + ``nlist·d`` float32 centroids +
  ``256·d`` float32 codebooks), the ids loaded in RAM, and on disk the memory-mapped ``vectors.npy`` that IVF-PQ
  re-ranks from (plus, during a backfill, the new model's ``N·d_new`` row table and the in-memory flat index over the
  re-embedded rows that the mixed search builds, and past its exact limit the IVF index over them: the rows again,
  their ids and the lists' centroids).
- **Query latency**, per query, searched one at a time (as a service searches) and in batches: a short measured
  calibration of the same faiss search at a smaller size, scaled by the cost model of each index. Flat search scans
  every vector (time ∝ ``N·d``); IVF-PQ compares the query with ``nlist`` centroids (∝ ``nlist·d``), builds a distance
  table per probed list (∝ ``nprobe·d``), scans the codes of ``nprobe`` lists (∝ ``nprobe/nlist·N·pq_m``) and re-ranks
  ``rerank`` candidates exactly (∝ ``rerank·d``). Each term's constant is measured. The flat scan's and the
  re-ranking's cost per float is measured on tables that double up to 256 MiB and read at the gallery's size: both
  cost 1.5-3× more once the vectors leave the CPU's caches.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BT2InputError
from .backfill_search import EXACT_SCAN_LIMIT, list_count

ITEM_TYPES = ("image", "text")
PLAN_INDEX_TYPES = ("flat", "ivfpq")
FLOAT32 = 4
ID_BYTES = 8  # int64 ids (ids.npy) and faiss's list ids (idx_t)
NPY_HEADER = 128
PQ_CENTROIDS = 256  # 8-bit sub-quantizers, the galleries' default
SECONDS_PER_DAY = 86_400.0
# The calibration's ladders (flat scan, re-ranking) grow their tables to this size: past the CPU caches of common
# servers.
FLAT_LADDER_BYTES = 256 << 20
# How the calibration's queries are searched: in one call, or one call per query (a service's searches).
CALIBRATION_MODES = ("batched", "one_at_a_time")


class PlanInputError(BT2InputError):
    """A planning input is missing, out of range or inconsistent."""


def _positive(name: str, value, allow_zero: bool = False) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PlanInputError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise PlanInputError(f"{name} must be a finite number {bound}, got {value!r}.")
    return value


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PlanInputError(f"{name} must be a whole number ≥ 1, got {value!r}.")
    return int(value)


# -- re-embedding and backfill ----------------------------------------------------------------------------------------


def reembedding_cost(count: int, items_per_second: float, gpu_price_per_hour: float, speedup: float = 1.0) -> dict:
    """GPU time and price of embedding ``count`` items at ``items_per_second × speedup``.

    Args:
        count (`int`): items to embed (the gallery size).
        items_per_second (`float`): the model's measured embedding throughput on the measured device.
        gpu_price_per_hour (`float`): price of one GPU hour (any currency; 0 for a machine already paid for).
        speedup (`float`, *optional*, defaults to 1): the priced GPU's throughput over the measured device's.

    Returns:
        `dict`: ``items_per_second`` (on the priced GPU), ``seconds``, ``gpu_hours``, ``cost``.

    >>> reembedding_cost(3_600_000, 500.0, 2.0, speedup=2.0)["cost"]
    2.0
    """
    count = _count("gallery size", count)
    rate = _positive("embedding throughput (items/s)", items_per_second) * _positive("GPU speed-up", speedup)
    price = _positive("GPU price per hour", gpu_price_per_hour, allow_zero=True)
    seconds = count / rate
    return {"items_per_second": rate, "seconds": seconds, "gpu_hours": seconds / 3600.0,
            "cost": seconds / 3600.0 * price}  # fmt: skip


def backfill_schedule(
    count: int,
    *,
    rate: float | None = None,
    budget_per_day: float | None = None,
    items_per_second: float | None = None,
    gpu_price_per_hour: float | None = None,
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0),
    days: int = 7,
) -> dict:
    """How the backfilled fraction grows at a steady rate, given as items/s or as a budget per day.

    Args:
        count (`int`): the gallery size.
        rate (`float`, *optional*): items re-embedded per second, around the clock.
        budget_per_day (`float`, *optional*): money per day; buys ``budget / price`` GPU hours a day at
            ``items_per_second`` (the throughput on the priced GPU).
        items_per_second (`float`, *optional*): needed with ``budget_per_day``.
        gpu_price_per_hour (`float`, *optional*): needed with ``budget_per_day``.
        fractions (`tuple[float]`): the fractions whose dates are listed.
        days (`int`): how many days of ``β(day)`` are listed (at most until 100 %).

    Returns:
        `dict`: ``items_per_day``, ``days_to_full``, ``at_fraction`` (β → days), ``by_day`` (day → β).
    """
    count = _count("gallery size", count)
    if (rate is None) == (budget_per_day is None):
        raise PlanInputError("Give the backfill rate either as items per second or as a budget per day (one of them).")
    if rate is not None:
        per_day = _positive("backfill rate (items/s)", rate) * SECONDS_PER_DAY
        basis = {"rate_items_per_second": float(rate)}
    else:
        budget = _positive("budget per day", budget_per_day)
        price = _positive("GPU price per hour", gpu_price_per_hour)
        speed = _positive("embedding throughput (items/s)", items_per_second)
        gpu_hours = min(24.0, budget / price)  # one GPU: a budget beyond 24 h a day buys nothing more
        per_day = gpu_hours * 3600.0 * speed
        basis = {"budget_per_day": budget, "gpu_hours_per_day": gpu_hours}
    days_to_full = count / per_day
    listed = [day for day in range(1, max(1, int(days)) + 1)]
    by_day = {day: min(1.0, day * per_day / count) for day in listed if (day - 1) < days_to_full}
    return dict(basis, items_per_day=per_day, days_to_full=days_to_full,
                at_fraction={f: f * days_to_full for f in fractions}, by_day=by_day)  # fmt: skip


# -- memory -----------------------------------------------------------------------------------------------------------


def default_pq_m(dimension: int) -> int:
    """The galleries' default number of sub-quantizers: the first of d/8, d/4, d/2, d that divides ``dimension``."""
    return next(m for m in (dimension // 8, dimension // 4, dimension // 2, dimension) if m and dimension % m == 0)


def default_nlist(count: int) -> int:
    """The galleries' default number of IVF lists: √N (at least 39 vectors a list)."""
    return max(1, min(int(math.sqrt(count)), count // 39))


def index_memory(
    count: int,
    dimension: int,
    index_type: str = "ivfpq",
    *,
    dtype_bytes: int = FLOAT32,
    pq_m: int | None = None,
    nlist: int | None = None,
    id_bytes: int = ID_BYTES,
    new_dimension: int | None = None,
    backfilled: float = 0.0,
) -> dict:
    """Bytes of a gallery in the faiss format, by part, in RAM and on disk.

    Args:
        count (`int`), dimension (`int`): the gallery's ``N`` and ``d``.
        index_type (`str`): ``"flat"`` or ``"ivfpq"``.
        dtype_bytes (`int`, *optional*, defaults to 4): bytes per value of ``vectors.npy`` (2 for float16).
        pq_m (`int`, *optional*): code bytes per vector (default: :func:`default_pq_m`).
        nlist (`int`, *optional*): IVF lists (default: :func:`default_nlist`).
        id_bytes (`int`, *optional*, defaults to 8): bytes per id in ``ids.npy`` (int64 ids).
        new_dimension (`int`, *optional*): the new model's width, to count a backfill's files.
        backfilled (`float`, *optional*, defaults to 0): the backfilled fraction (the in-memory index over it).

    Returns:
        `dict`: ``ram`` and ``disk`` totals, and ``parts`` (name → bytes and where it lives).
    """
    count, dimension = _count("gallery size", count), _count("embedding width", dimension)
    if index_type not in PLAN_INDEX_TYPES:
        raise PlanInputError(f"index type must be one of {PLAN_INDEX_TYPES}, got {index_type!r}.")
    parts: dict[str, dict] = {}

    def part(name: str, size: float, where: str) -> None:
        parts[name] = {"bytes": int(size), "where": where}

    if index_type == "flat":
        part("index (float32 vectors)", count * dimension * FLOAT32, "ram")
        part("index.faiss", count * dimension * FLOAT32, "disk")
    else:
        pq_m = pq_m or default_pq_m(dimension)
        nlist = nlist or default_nlist(count)
        if dimension % pq_m:
            raise PlanInputError(f"pq_m = {pq_m} must divide the width {dimension}.")
        in_ram = {
            "PQ codes": count * pq_m,
            "list ids": count * ID_BYTES,
            "coarse centroids": nlist * dimension * FLOAT32,
            "PQ codebooks": PQ_CENTROIDS * dimension * FLOAT32,
        }
        for name, size in in_ram.items():
            part(name, size, "ram")
        part("index.faiss", sum(in_ram.values()), "disk")
    part("ids", count * id_bytes, "ram")
    part("ids.npy", count * id_bytes + NPY_HEADER, "disk")
    # Memory-mapped: IVF-PQ re-ranks its candidates from it (pages it touches stay cached while RAM allows).
    part("vectors.npy (memory-mapped re-ranking vectors)", count * dimension * dtype_bytes + NPY_HEADER, "disk")
    if new_dimension:
        new_dimension = _count("new embedding width", new_dimension)
        fraction = _positive("backfilled fraction", backfilled, allow_zero=True)
        if fraction > 1:
            raise PlanInputError(f"backfilled fraction must lie in [0, 1], got {backfilled!r}.")
        part(
            "backfill/vectors.npy (new rows, memory-mapped)", count * new_dimension * dtype_bytes + NPY_HEADER, "disk"
        )
        part("backfill/order.npy", count * ID_BYTES + NPY_HEADER, "disk")
        part("backfill order (loaded)", count * ID_BYTES, "ram")
        done = int(math.floor(fraction * count))
        part("re-embedded rows' flat index", done * (new_dimension * FLOAT32 + ID_BYTES), "ram")
        if done > EXACT_SCAN_LIMIT:  # trained when the limit is crossed, its lists sized for the whole gallery
            lists = list_count(count, EXACT_SCAN_LIMIT + 1)
            part("re-embedded rows' IVF index", done * (new_dimension * FLOAT32 + ID_BYTES)
                 + lists * new_dimension * FLOAT32, "ram")  # fmt: skip
    totals = {where: sum(p["bytes"] for p in parts.values() if p["where"] == where) for where in ("ram", "disk")}
    return {"index_type": index_type, "count": count, "dimension": dimension, **totals, "parts": parts,
            **({"pq_m": pq_m, "nlist": nlist} if index_type == "ivfpq" else {})}  # fmt: skip


# -- latency ----------------------------------------------------------------------------------------------------------


@dataclass
class SearchCalibration:
    """Measured seconds per query of each cost term, at a calibration size, for :func:`predict_latency`.

    Args:
        count (`int`), dimension (`int`): the calibration gallery.
        queries (`int`): queries per measurement (searched as ``mode`` says).
        threads (`int`): faiss's OpenMP threads during the measurement.
        flat_s (`float`): flat search, seconds per query (scans ``count·dimension``).
        flat_scan (`list` of `[floats, seconds]` pairs): flat search's seconds per query per scanned float, measured
            on flat indexes of growing size (``floats`` = vectors × width), smallest first. Empty: ``flat_s`` scaled.
        rerank_scan (`list` of `[floats, seconds]` pairs): re-ranking's seconds per query per re-ranked float, read
            from tables of growing size; scales ``rerank_s`` to the gallery's size. Empty: no scaling.
        mode (`str`): how the queries were searched: ``"batched"`` (one call) or ``"one_at_a_time"`` (a call each).
        overhead_s (`float`): the gallery's whole IVF-PQ search beyond the sum of its timed parts, seconds per query
            (bookkeeping per call, and re-ranking after the list scan); added as is, independent of the size.
        quantizer_s (`float`): IVF-PQ coarse quantizer (``nlist`` centroids), seconds per query.
        probe_s (`float`): IVF-PQ, per probed list (its distance table, ∝ ``d``), seconds per query.
        code_s (`float`): IVF-PQ, per scanned code of ``pq_m`` bytes, seconds per query.
        rerank_s (`float`): exact re-ranking of ``rerank`` candidates from the memory map and sorting them (the
            gallery's whole search minus the index's), seconds per query.
        nlist (`int`), nprobe (`int`), pq_m (`int`), rerank (`int`): the calibration index's settings.
    """

    count: int
    dimension: int
    queries: int
    threads: int
    flat_s: float
    quantizer_s: float
    probe_s: float
    code_s: float
    rerank_s: float
    nlist: int
    nprobe: int
    pq_m: int
    rerank: int
    flat_scan: list[list[float]] = field(default_factory=list)
    rerank_scan: list[list[float]] = field(default_factory=list)
    mode: str = "batched"
    overhead_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _best_of(function, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def _mixture_points(centres: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` unit vectors scattered around random ``centres`` (clustered like real embeddings)."""
    dimension = centres.shape[1]
    points = centres[rng.integers(0, len(centres), count)]
    points += 0.35 / math.sqrt(dimension) * rng.normal(size=points.shape).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def ladder_sizes(count: int, dimension: int, max_bytes: int) -> list[int]:
    """Gallery sizes from ``count`` vectors, doubling while within ``max_bytes`` of float32 vectors, then the top."""
    sizes = [count]
    while sizes[-1] * 2 * dimension * FLOAT32 <= max_bytes:
        sizes.append(sizes[-1] * 2)
    top = max_bytes // (dimension * FLOAT32)
    if top > sizes[-1] * 1.25:
        sizes.append(top)
    return sizes


def scan_ladders(
    centres: np.ndarray,
    count: int,
    queries: np.ndarray,
    folder,
    *,
    rerank: int = 1000,
    repeats: int = 3,
    max_bytes: int = FLAT_LADDER_BYTES,
    rng: np.random.Generator | None = None,
    modes: tuple[str, ...] = ("batched",),
) -> tuple[dict[str, list[list[float]]], dict[str, list[list[float]]]]:
    """The two searches whose cost per float depends on the gallery's size, timed as it doubles from ``count``
    vectors up to ``max_bytes`` (:func:`ladder_sizes`): ``({mode: flat}, {mode: rerank})``, each ``[[floats,
    seconds], ...]`` (``floats`` = vectors × width, smallest first); ``modes`` as in :func:`calibrate_searches`.

    - flat: one ``faiss.IndexFlatIP`` grown to each size, seconds per query per scanned float. Each size is searched
      with fewer queries as it grows (at least 8): faiss scans the index once per query in such batches, so the cost
      per query does not depend on their number.
    - rerank: IVF-PQ's exact re-ranking (:func:`~bt2_hf.galleries.faiss_store.rerank_rows`) of ``rerank`` random
      rows per query from a memory-mapped ``.npy`` table of that many vectors (a gallery's ``vectors.npy``), seconds
      per query per re-ranked float: the rows are read at random, from the caches in a small table, from memory in
      a big one.
    """
    from ..retrieval.knn import import_faiss
    from .faiss_store import rerank_rows

    faiss = import_faiss()
    rng = rng or np.random.default_rng(0)
    dimension = centres.shape[1]
    sizes = ladder_sizes(count, dimension, max_bytes)
    table = np.lib.format.open_memmap(Path(folder) / "ladder.npy", mode="w+", dtype=np.float32,
                                      shape=(sizes[-1], dimension))  # fmt: skip
    index = faiss.IndexFlatIP(dimension)
    flat, reranked = {mode: [] for mode in modes}, {mode: [] for mode in modes}
    for size in sizes:
        while index.ntotal < size:  # grown in chunks: the points are written once, to the table and to the index
            start = index.ntotal
            stop = min(size, start + (1 << 18))
            table[start:stop] = _mixture_points(centres, stop - start, rng)
            index.add(np.ascontiguousarray(table[start:stop]))
        floats = float(size * dimension)
        batch = np.ascontiguousarray(queries[: max(8, min(len(queries), len(queries) * count // (2 * size)))])
        candidates = min(rerank, size)
        rows = rng.integers(0, size, (len(queries), candidates))
        for mode in modes:
            seconds = _timed(lambda q: index.search(q, 10), (batch,), repeats, mode)
            flat[mode].append([floats, seconds / len(batch) / floats])
            seconds = _timed(lambda q, r: rerank_rows(table, q, r, 10), (queries, rows), repeats, mode)
            reranked[mode].append([floats, seconds / len(queries) / (candidates * dimension)])
    return flat, reranked


def _timed(function, arrays: tuple, repeats: int, mode: str) -> float:
    """Best of ``repeats`` seconds of ``function(*arrays)`` (``"batched"``: one call), or of one call per row of the
    arrays (``"one_at_a_time"``: how a service searches)."""
    if mode == "batched":
        return _best_of(lambda: function(*arrays), repeats)
    if mode != "one_at_a_time":
        raise PlanInputError(f"mode must be one of {CALIBRATION_MODES}, got {mode!r}.")
    rows = [tuple(np.ascontiguousarray(array[i : i + 1]) for array in arrays) for i in range(len(arrays[0]))]
    return _best_of(lambda: [function(*row) for row in rows], repeats)


def growth(ladder: list[list[float]], floats: float, base_floats: float) -> float:
    """How much the ladder's cost per float at ``floats`` exceeds its cost at ``base_floats``."""
    return seconds_per_float(ladder, floats) / seconds_per_float(ladder, base_floats)


def seconds_per_float(ladder: list[list[float]], floats: float) -> float:
    """The ladder's cost per float at ``floats`` (vectors × width): interpolated linearly in log-size between its
    rungs, the end rung's outside them (past the top the scan is bound by memory bandwidth, as at the top)."""
    if floats <= ladder[0][0]:
        return ladder[0][1]
    for (low_size, low_cost), (high_size, high_cost) in zip(ladder, ladder[1:]):
        if floats <= high_size:
            share = math.log(floats / low_size) / math.log(high_size / low_size)
            return low_cost + share * (high_cost - low_cost)
    return ladder[-1][1]


def calibrate_search(dimension: int, **kwargs) -> SearchCalibration:
    """:func:`calibrate_searches` of the queries in one batch (its ``"batched"`` calibration)."""
    return calibrate_searches(dimension, modes=("batched",), **kwargs)["batched"]


def calibrate_searches(
    dimension: int,
    *,
    count: int = 50_000,
    queries: int = 300,
    nprobe: int = 16,
    rerank: int = 1000,
    pq_m: int | None = None,
    repeats: int = 3,
    seed: int = 0,
    workdir=None,
    ladder_bytes: int = FLAT_LADDER_BYTES,
    modes: tuple[str, ...] = CALIBRATION_MODES,
) -> dict[str, SearchCalibration]:
    """Time flat and IVF-PQ search on a synthetic gallery of ``count`` unit vectors, one cost term at a time:
    ``{mode: SearchCalibration}``.

    The gallery is a :class:`~bt2_hf.galleries.FaissGallery` (the format and search code the plan is about), built
    from a mixture of Gaussians (clustered like real embeddings) in a temporary directory; each term is the best of
    ``repeats`` runs over ``queries`` queries, in each of ``modes``: ``"batched"`` (one call for all of them) and
    ``"one_at_a_time"`` (a call per query, as a service searches: per query, the batch's calls cost less). Flat
    search and re-ranking are also timed on galleries that double in size up to ``ladder_bytes``
    (:func:`scan_ladders`): their cost per float rises once the vectors they read leave the CPU's caches.
    """
    import tempfile

    from ..retrieval.knn import import_faiss
    from .faiss_store import FaissGallery

    faiss = import_faiss()
    count, dimension = _count("calibration size", count), _count("embedding width", dimension)
    ladder_bytes = _count("ladder size in bytes (--calibration_max_mib)", ladder_bytes)
    for mode in modes:
        if mode not in CALIBRATION_MODES:
            raise PlanInputError(f"mode must be one of {CALIBRATION_MODES}, got {mode!r}.")
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, count // 1000), dimension)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = _mixture_points(centres, count + queries, rng)
    vectors, query_vectors = points[:count], np.ascontiguousarray(points[count:])
    encoder = {"fingerprint": "sha256:" + "0" * 64, "name_or_path": "calibration", "embedding_dim": dimension}
    pq_m = pq_m or default_pq_m(dimension)
    calibrations = {}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="bt2-plan-") as folder:
        gallery = FaissGallery.build(Path(folder) / "ivfpq", vectors, encoder=encoder, index_type="ivfpq",
                                     pq_m=pq_m, nprobe=nprobe, rerank=rerank)  # fmt: skip
        flat_scans, rerank_scans = scan_ladders(centres, count, query_vectors, folder, rerank=rerank, repeats=repeats,
                                               max_bytes=ladder_bytes, rng=rng, modes=modes)  # fmt: skip
        ivf = faiss.extract_index_ivf(gallery.index)
        ivf.nprobe = nprobe
        # The list scan at two fillings of the same trained index: a quarter, then all of the vectors. The
        # difference is the cost per scanned code; what is left is per probed list (its lookup table: ∝ d).
        quarter = faiss.clone_index(gallery.index)
        quarter.reset()
        quarter.add(vectors[: count // 4])
        faiss.extract_index_ivf(quarter).nprobe = nprobe
        candidates = min(count, rerank)
        _, candidate_rows = gallery.index.search(query_vectors, candidates)
        for mode in modes:
            terms = _ivf_terms(gallery, quarter, query_vectors, candidate_rows, nprobe, repeats, mode)
            calibrations[mode] = SearchCalibration(
                count=count, dimension=dimension, queries=queries, threads=faiss.omp_get_max_threads(),
                flat_s=flat_scans[mode][0][1] * count * dimension, nlist=ivf.nlist, nprobe=nprobe, pq_m=pq_m,
                rerank=candidates, flat_scan=flat_scans[mode], rerank_scan=rerank_scans[mode], mode=mode,
                **{name: seconds / queries for name, seconds in terms.items()},
            )  # fmt: skip
    return calibrations


def _ivf_terms(gallery, quarter, queries: np.ndarray, candidate_rows: np.ndarray, nprobe: int, repeats: int,
               mode: str) -> dict[str, float]:  # fmt: skip
    """IVF-PQ's cost terms on the calibration gallery (seconds for all ``queries``, searched as ``mode`` says)."""
    from ..retrieval.knn import import_faiss

    ivf = import_faiss().extract_index_ivf(gallery.index)
    count, candidates = len(gallery), candidate_rows.shape[1]
    quantizer_s = _timed(lambda q: ivf.quantizer.search(q, nprobe), (queries,), repeats, mode)
    quarter_s = _timed(lambda q: quarter.search(q, candidates), (queries,), repeats, mode) - quantizer_s
    index_s = _timed(lambda q: gallery.index.search(q, candidates), (queries,), repeats, mode) - quantizer_s
    codes_quarter, codes_full = nprobe / ivf.nlist * (count // 4), nprobe / ivf.nlist * count
    per_code = max(0.0, (index_s - quarter_s) / (codes_full - codes_quarter))
    per_probe = max(0.0, index_s - per_code * codes_full) / nprobe
    # Re-ranking as the galleries run it (candidates read from the memory map, scored, sorted), timed on its own: as
    # the whole search minus the index's, it was noise under load, and at times nothing.
    rerank_s = _timed(lambda q, r: gallery.rerank(q, r, 10), (queries, candidate_rows), repeats, mode)
    # What the gallery's whole search costs beyond its parts: the call's own bookkeeping, and the re-ranking's reads
    # after the list scan has taken the caches. Per call, so it matters one query at a time (0.1 ms in 0.6 at 1M).
    whole_s = _timed(lambda q: gallery.search_encoder_space(q, 10), (queries,), repeats, mode)
    overhead_s = max(0.0, whole_s - (quantizer_s + index_s + rerank_s))
    return {"quantizer_s": quantizer_s, "probe_s": per_probe, "code_s": per_code, "rerank_s": rerank_s,
            "overhead_s": overhead_s}  # fmt: skip


def predict_latency(
    calibration: SearchCalibration,
    count: int,
    dimension: int,
    index_type: str = "ivfpq",
    *,
    nprobe: int | None = None,
    nlist: int | None = None,
    pq_m: int | None = None,
    rerank: int | None = None,
) -> dict:
    """Seconds per query (searched as the calibration's were: batched, or one at a time) at ``count × dimension``, by
    the stated cost model.

    flat: ``N·d`` times the calibration's cost per float at that size (:func:`seconds_per_float`; without a
    ladder, ``flat_s · (N·d) / (N_c·d_c)``). IVF-PQ: ``quantizer_s · (nlist·d)/(nlist_c·d_c)`` +
    ``probe_s · nprobe · d/d_c`` + ``code_s · (nprobe/nlist·N) · pq_m/pq_m_c`` + ``rerank_s · (rerank·d)/(rerank_c·d_c)``
    + ``overhead_s``. The list scan is a distance table per probed list, then every code of the probed lists; the
    re-ranking term is scaled by its ladder's :func:`growth` from ``N_c·d_c`` to ``N·d`` (random reads from a bigger
    table miss the caches); the overhead (per call) is added as measured.
    """
    count, dimension = _count("gallery size", count), _count("embedding width", dimension)
    c = calibration
    if index_type == "flat":
        if c.flat_scan:
            seconds = seconds_per_float(c.flat_scan, count * dimension) * count * dimension
        else:
            seconds = c.flat_s * (count * dimension) / (c.count * c.dimension)
        return {"index_type": "flat", "seconds_per_query": seconds, "terms": {"scan": seconds}}
    if index_type != "ivfpq":
        raise PlanInputError(f"index type must be one of {PLAN_INDEX_TYPES}, got {index_type!r}.")
    nlist = nlist or default_nlist(count)
    nprobe = min(nlist, nprobe or c.nprobe)
    pq_m = pq_m or default_pq_m(dimension)
    rerank = min(count, rerank or c.rerank)
    rerank_growth = growth(c.rerank_scan, count * dimension, c.count * c.dimension) if c.rerank_scan else 1.0
    terms = {
        "quantizer": c.quantizer_s * (nlist * dimension) / (c.nlist * c.dimension),
        "tables": c.probe_s * nprobe * dimension / c.dimension,
        "codes": c.code_s * (nprobe / nlist * count) * pq_m / c.pq_m,
        "rerank": c.rerank_s * (rerank * dimension) / (c.rerank * c.dimension) * rerank_growth,
        "overhead": c.overhead_s,
    }
    return {"index_type": "ivfpq", "seconds_per_query": sum(terms.values()), "terms": terms,
            "nlist": nlist, "nprobe": nprobe, "pq_m": pq_m, "rerank": rerank}  # fmt: skip


# -- embedding throughput ---------------------------------------------------------------------------------------------


def calibrate_embedding(model, *, items: int = 256, batch_size: int = 64, device=None, seed: int = 0) -> dict:
    """Items per second of ``model`` on synthetic inputs of its own kind (noise images of its input size, or
    sentences of random words), after one warm-up batch: a short stand-in for ``bt2 embed``'s logged throughput."""
    from .embed import encode_items

    items = _count("calibration items", items)
    rng = np.random.default_rng(seed)
    if model.modality == "text":
        words = ["gallery", "model", "upgrade", "vector", "query", "item", "search", "basis", "space", "shirt"]
        inputs = [" ".join(rng.choice(words, size=16)) for _ in range(items)]
    else:
        from PIL import Image

        height, width = model.processor.image_size
        channels = getattr(model.processor, "num_channels", 3)
        shape = (height, width, 3) if channels == 3 else (height, width)
        inputs = [Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)) for _ in range(items)]
    encode_items(model, inputs[: min(batch_size, items)], batch_size, device)  # warm-up: allocations, kernels
    started = time.perf_counter()
    encode_items(model, inputs, batch_size, device)
    seconds = time.perf_counter() - started
    return {"items": items, "batch_size": batch_size, "seconds": seconds, "items_per_second": items / seconds,
            "modality": model.modality, "device": str(model.device)}  # fmt: skip


def read_throughput(embedding_directory) -> float:
    """The ``items_per_second`` that ``bt2 embed`` recorded in an embedding directory's manifest."""
    from .shards import EmbeddingDirectory

    rate = EmbeddingDirectory(embedding_directory).manifest.get("items_per_second")
    if not rate:
        raise PlanInputError(f"{embedding_directory}: its manifest records no items_per_second (written by an older "
                             "bt2 embed?); give the throughput as a number or calibrate the model.")  # fmt: skip
    return float(rate)


# -- the whole plan ---------------------------------------------------------------------------------------------------


def make_plan(
    count: int,
    *,
    item_type: str,
    old_dim: int,
    new_dim: int,
    new_items_per_second: float,
    gpu_price_per_hour: float,
    speedup: float = 1.0,
    old_items_per_second: float | None = None,
    backfill_rate: float | None = None,
    budget_per_day: float | None = None,
    dtype_bytes: int = FLOAT32,
    calibration: SearchCalibration | None = None,
    nprobe: int | None = None,
    rerank: int | None = None,
    days: int = 7,
) -> dict:
    """Every estimate of the module for one upgrade, as one JSON-ready dict (see the module docstring)."""
    if item_type not in ITEM_TYPES:
        raise PlanInputError(f"item type must be one of {ITEM_TYPES}, got {item_type!r}.")
    count = _count("gallery size", count)
    old_dim, new_dim = _count("old embedding width", old_dim), _count("new embedding width", new_dim)
    if new_dim < old_dim:
        raise PlanInputError(
            f"The new model's width ({new_dim}) is below the old one's ({old_dim}): a BT² model keeps the old width as "
            "its compatible prefix and adds dimensions; pass --new_dim as the new model's full width."
        )
    avoided = reembedding_cost(count, new_items_per_second, gpu_price_per_hour, speedup)
    plan: dict = {
        "inputs": {"count": count, "item_type": item_type, "old_dim": old_dim, "new_dim": new_dim,
                   "new_items_per_second": float(new_items_per_second), "old_items_per_second": old_items_per_second,
                   "gpu_price_per_hour": float(gpu_price_per_hour), "speedup": float(speedup)},
        "reembedding_avoided": avoided,
    }  # fmt: skip
    if backfill_rate is not None or budget_per_day is not None:
        plan["backfill"] = backfill_schedule(count, rate=backfill_rate, budget_per_day=budget_per_day,
                                             items_per_second=avoided["items_per_second"],
                                             gpu_price_per_hour=gpu_price_per_hour, days=days)  # fmt: skip
        plan["backfill"]["cost_to_full"] = avoided["cost"]
    plan["memory"] = {
        "old_gallery": {kind: index_memory(count, old_dim, kind, dtype_bytes=dtype_bytes)
                        for kind in PLAN_INDEX_TYPES},
        "during_backfill_at_full": {kind: index_memory(count, old_dim, kind, dtype_bytes=dtype_bytes,
                                                       new_dimension=new_dim, backfilled=1.0)
                                    for kind in PLAN_INDEX_TYPES},
        "new_gallery": {kind: index_memory(count, new_dim, kind, dtype_bytes=dtype_bytes) for kind in PLAN_INDEX_TYPES},
    }  # fmt: skip
    if calibration is not None:
        plan["latency"] = latency_estimates(calibration, count, old_dim, new_dim, nprobe=nprobe, rerank=rerank)
    return plan


def latency_estimates(
    calibration: SearchCalibration | dict[str, SearchCalibration],
    count: int,
    old_dim: int,
    new_dim: int,
    *,
    nprobe: int | None = None,
    rerank: int | None = None,
) -> dict:
    """:func:`predict_latency` of the old and the new gallery, flat and IVF-PQ, with the calibration it scaled.

    Given :func:`calibrate_searches`' ``{mode: calibration}``, the batched estimates, with the one-at-a-time ones
    (the latency of a served query) under ``"one_at_a_time"`` when that mode was measured.
    """
    if isinstance(calibration, dict):
        latency = latency_estimates(calibration["batched"], count, old_dim, new_dim, nprobe=nprobe, rerank=rerank)
        if "one_at_a_time" in calibration:
            latency["one_at_a_time"] = latency_estimates(calibration["one_at_a_time"], count, old_dim, new_dim,
                                                         nprobe=nprobe, rerank=rerank)  # fmt: skip
        return latency
    return {
        "calibration": calibration.to_dict(),
        **{stage: {kind: predict_latency(calibration, count, dim, kind, nprobe=nprobe, rerank=rerank)
                   for kind in PLAN_INDEX_TYPES} for stage, dim in (("old_gallery", old_dim), ("new_gallery", new_dim))},
    }  # fmt: skip
