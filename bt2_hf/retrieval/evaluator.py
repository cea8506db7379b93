"""One streaming evaluator for every retrieval question (DESIGN §3.2).

Query and gallery are given separately. Relevance is class-level (same label) or explicit (a list of relevant gallery
items per query, e.g. a caption's image(s) for text→image). When query and gallery are the same items, each query is
left out of its own gallery. Widths are aligned by the prefix rule (:mod:`bt2_hf.retrieval.protocol`).

Cost: top-k metrics and mAP@R only need the top ``max(k, R)`` neighbours, found by a k-NN backend in query chunks.
Full-ranking mAP needs every score of a query; it is computed exactly (scikit-learn's tie grouping) in query chunks
whose size is chosen so that a chunk holds at most ``map_chunk_elements`` scores, so memory never grows as ``N x N``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .knn import KNNBackend, get_backend
from .metrics import (
    average_precision_at_r,
    average_precision_shared_relevance,
    average_precision_with_ties,
    cmc_hits,
    parse_metric_name,
)
from .protocol import GalleryPart, as_embedding_array, gallery_parts, truncate

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("top1", "top5", "top10", "map", "map@r")


@dataclass
class RetrievalResult:
    """What one evaluation returns.

    Args:
        metrics (`dict[str, float]`): each metric averaged over the evaluated queries, as a fraction in ``[0, 1]``.
        per_query (`dict[str, np.ndarray]`): one value per query (NaN for skipped queries); ``top<k>`` are booleans.
        num_queries (`int`): queries given.
        num_skipped (`int`): queries with no relevant gallery item, left out of the averages.
        evaluated (`np.ndarray` of `bool`, *optional*): which queries entered the averages.
    """

    metrics: dict[str, float]
    per_query: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    num_queries: int = 0
    num_skipped: int = 0
    evaluated: np.ndarray | None = field(default=None, repr=False)

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-query arrays)."""
        return {"metrics": dict(self.metrics), "num_queries": self.num_queries, "num_skipped": self.num_skipped}


class _Relevance:
    """Answers "is gallery row g relevant to query q" for labels or explicit relevance lists, without N x N memory."""

    def __init__(self, num_queries, num_gallery, query_labels, gallery_labels, query_relevant, gallery_ids):
        self.num_gallery = num_gallery
        if query_relevant is not None:
            if query_labels is not None:
                raise ValueError("Give either labels or query_relevant, not both.")
            if len(query_relevant) != num_queries:
                raise ValueError(f"query_relevant has {len(query_relevant)} entries for {num_queries} queries.")
            row_of_id = None
            if gallery_ids is not None:
                if len(gallery_ids) != num_gallery:
                    raise ValueError(f"gallery_ids has {len(gallery_ids)} entries for {num_gallery} gallery items.")
                row_of_id = {item_id: row for row, item_id in enumerate(gallery_ids)}
            keys = []
            for query, relevant in enumerate(query_relevant):
                for item in relevant:
                    row = row_of_id.get(item, -1) if row_of_id is not None else int(item)
                    if row_of_id is None and not 0 <= row < num_gallery:
                        raise ValueError(
                            f"query_relevant[{query}] names gallery row {item}, outside 0..{num_gallery - 1}."
                        )
                    if row >= 0:  # an id that is not in this gallery simply has no row
                        keys.append(query * num_gallery + row)
            self.keys = np.unique(np.asarray(keys, dtype=np.int64))
            self.counts = np.bincount(self.keys // num_gallery, minlength=num_queries)
            self.mode = "lists"
            return
        if query_labels is None:
            raise ValueError("Relevance is needed: pass query_labels (and gallery_labels), or query_relevant lists.")
        query_labels = np.asarray(query_labels)
        gallery_labels = query_labels if gallery_labels is None else np.asarray(gallery_labels)
        if query_labels.shape != (num_queries,) or gallery_labels.shape != (num_gallery,):
            raise ValueError(
                f"Expected one label per item: query_labels {query_labels.shape} for {num_queries} queries, "
                f"gallery_labels {gallery_labels.shape} for {num_gallery} gallery items."
            )
        # Factorise once (labels may be strings); a query label absent from the gallery gets code -1.
        classes, gallery_codes = np.unique(gallery_labels, return_inverse=True)
        position = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
        self.query_codes = np.where(classes[position] == query_labels, position, -1)
        self.gallery_codes = gallery_codes.reshape(-1)
        class_sizes = np.bincount(self.gallery_codes, minlength=len(classes))
        self.counts = np.where(self.query_codes >= 0, class_sizes[np.maximum(self.query_codes, 0)], 0)
        self.mode = "labels"

    def of_neighbours(self, query_rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Relevance of ranked neighbours ``indices`` (n, K) of ``query_rows`` (n,); index -1 is never relevant."""
        safe = np.maximum(indices, 0)
        if self.mode == "labels":
            relevant = self.gallery_codes[safe] == self.query_codes[query_rows][:, None]
        else:
            relevant = self._in_keys(query_rows[:, None] * self.num_gallery + safe)
        return relevant & (indices >= 0)

    def dense(self, query_rows: np.ndarray) -> np.ndarray:
        """Relevance of every gallery item for ``query_rows``: (n, N) booleans."""
        if self.mode == "labels":
            return self.gallery_codes[None, :] == self.query_codes[query_rows][:, None]
        relevant = np.zeros((len(query_rows), self.num_gallery), dtype=bool)
        lo = np.searchsorted(self.keys, query_rows * self.num_gallery)
        hi = np.searchsorted(self.keys, (query_rows + 1) * self.num_gallery)
        for row, (start, stop) in enumerate(zip(lo, hi)):
            relevant[row, self.keys[start:stop] % self.num_gallery] = True
        return relevant

    def count(self, exclude: np.ndarray | None) -> np.ndarray:
        """Relevant gallery items per query, not counting the left-out item."""
        counts = self.counts.astype(np.int64)
        if exclude is not None:
            rows = np.flatnonzero(exclude >= 0)
            counts[rows] -= self.of_neighbours(rows, exclude[rows][:, None])[:, 0]
        return counts

    def _in_keys(self, keys: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0:
            return np.zeros(keys.shape, dtype=bool)
        position = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        return self.keys[position] == keys


class RetrievalEvaluator:
    """Evaluate retrieval of a query set against a gallery under the bt2_hf protocol.

    Args:
        metrics (`Sequence[str]`, *optional*, defaults to `("top1", "top5", "top10", "map", "map@r")`): any of
            ``top<k>`` (CMC), ``recall@<k>`` (text→image, same definition with a caption's images as relevant),
            ``map`` (full ranking, exact with ties as scikit-learn) and ``map@r``.
        backend (`str` or `KNNBackend`, *optional*, defaults to `"faiss"`): k-NN backend for the top-k metrics:
            ``faiss`` (exact flat), ``faiss-ivf`` / ``faiss-hnsw`` (approximate), ``torch`` (exact, chunked, GPU
            when present).
        renormalize (`bool`, *optional*, defaults to `True`): re-normalise after prefix truncation. `False` is the
            BT² research code's protocol (un-normalised prefixes), kept to reproduce its numbers.
        chunk_size (`int`, *optional*, defaults to `4096`): queries per search block.
        map_chunk_elements (`int`, *optional*, defaults to `2**24`): scores held at once by the full-ranking mAP.
        show_progress (`bool`, *optional*, defaults to `False`): tqdm bars over query chunks.

    >>> import numpy as np
    >>> from bt2_hf.retrieval import RetrievalEvaluator
    >>> embeddings = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    >>> result = RetrievalEvaluator(metrics=["top1", "map"]).evaluate(embeddings, query_labels=[0, 0, 1, 1])
    >>> result.metrics
    {'top1': 1.0, 'map': 1.0}
    """

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        backend: str | KNNBackend | None = "faiss",
        renormalize: bool = True,
        chunk_size: int = 4096,
        map_chunk_elements: int = 2**24,
        show_progress: bool = False,
    ):
        if isinstance(metrics, str):
            metrics = [name for name in metrics.split(",") if name.strip()]
        self.metric_names = [name.strip() for name in metrics]
        self.parsed = {name: parse_metric_name(name) for name in self.metric_names}
        self.backend = get_backend(backend)
        self.renormalize = renormalize
        self.chunk_size = chunk_size
        self.map_chunk_elements = map_chunk_elements
        self.show_progress = show_progress

    def evaluate(
        self,
        query_embeddings,
        gallery_embeddings=None,
        query_labels=None,
        gallery_labels=None,
        *,
        query_relevant: Sequence[Sequence] | None = None,
        gallery_ids: Sequence | None = None,
        same_items: bool | None = None,
    ) -> RetrievalResult:
        """Evaluate one query set against one gallery.

        Args:
            query_embeddings (`np.ndarray` or `torch.Tensor` of shape `(n, d_q)`): the query vectors.
            gallery_embeddings (`np.ndarray`, `torch.Tensor` or `list[GalleryPart]`, *optional*): the gallery, of
                any width (the prefix rule aligns widths); a list of parts is a mixed gallery searched as one
                ranking. Defaults to the queries themselves (leave-one-out).
            query_labels (`array-like` of shape `(n,)`, *optional*): class labels of the queries.
            gallery_labels (`array-like` of shape `(N,)`, *optional*): class labels of the gallery; defaults to
                ``query_labels`` (same items).
            query_relevant (`Sequence[Sequence]`, *optional*): instead of labels, the relevant gallery items of each
                query: gallery ids when ``gallery_ids`` is given, else gallery row numbers.
            gallery_ids (`Sequence`, *optional*): ids of the gallery rows, for ``query_relevant``.
            same_items (`bool`, *optional*): whether query row ``i`` and gallery row ``i`` are the same item, so that
                it is left out of its own ranking. Defaults to `True` when no gallery is given, else `False`.
        """
        queries = as_embedding_array(query_embeddings, "query_embeddings")
        parts = gallery_parts(queries if gallery_embeddings is None else gallery_embeddings)
        num_queries, num_gallery = queries.shape[0], sum(len(part.positions) for part in parts)
        if same_items is None:
            same_items = gallery_embeddings is None
        exclude = None
        if same_items:
            if num_queries != num_gallery:
                raise ValueError(
                    f"same_items=True needs as many queries as gallery items ({num_queries} vs {num_gallery}); "
                    "pass same_items=False when the query set is not the gallery."
                )
            exclude = np.arange(num_queries, dtype=np.int64)
        relevance = _Relevance(num_queries, num_gallery, query_labels, gallery_labels, query_relevant, gallery_ids)
        num_relevant = relevance.count(exclude)
        evaluated = num_relevant > 0
        if not evaluated.all():
            logger.warning(
                "%d of %d queries have no relevant gallery item and are left out of the averages.",
                int((~evaluated).sum()),
                num_queries,
            )

        cutoffs = [k for kind, k in self.parsed.values() if kind in {"cmc", "recall"}]
        needs_map_at_r = any(kind == "map@r" for kind, _ in self.parsed.values())
        depth = max(cutoffs + ([int(num_relevant.max(initial=0))] if needs_map_at_r else []) + [0])
        depth = min(depth, num_gallery)

        per_query: dict[str, np.ndarray] = {}
        if depth > 0:
            indices = self.search(queries, parts, depth, exclude)
            relevant_topk = relevance.of_neighbours(np.arange(num_queries), indices)
            for name, (kind, k) in self.parsed.items():
                if kind in {"cmc", "recall"}:
                    per_query[name] = cmc_hits(relevant_topk, k)
                elif kind == "map@r":
                    per_query[name] = average_precision_at_r(relevant_topk, num_relevant)
        if any(kind == "map" for kind, _ in self.parsed.values()):
            full_ap = self._full_average_precision(queries, parts, relevance, num_relevant, exclude)
            for name, (kind, _) in self.parsed.items():
                if kind == "map":
                    per_query[name] = full_ap

        metrics = {}
        for name in self.metric_names:
            values = per_query[name][evaluated].astype(np.float64)
            metrics[name] = float(values.mean()) if len(values) else float("nan")
        return RetrievalResult(metrics, per_query, num_queries, int((~evaluated).sum()), evaluated)

    # -- the two streaming passes -------------------------------------------------------------------------------------

    def _aligned_parts(self, queries: np.ndarray, parts: list[GalleryPart]):
        """Yield (aligned queries, aligned part embeddings, part) with each part compared at its own common width."""
        aligned_queries: dict[int, np.ndarray] = {}
        for part in parts:
            dim = min(queries.shape[1], part.embeddings.shape[1])
            if dim not in aligned_queries:
                aligned_queries[dim] = truncate(queries, dim, self.renormalize)
            yield aligned_queries[dim], truncate(part.embeddings, dim, self.renormalize), part

    def _chunks(self, total: int, size: int, description: str):
        starts = range(0, total, size)
        if self.show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=description, total=(total + size - 1) // size)
        return starts

    def search(self, queries: np.ndarray, parts: list[GalleryPart], k: int, exclude: np.ndarray | None) -> np.ndarray:
        """Top-``k`` global gallery rows per query over all parts (ties: ascending gallery row); -1 pads."""
        num_gallery = sum(len(part.positions) for part in parts)
        prepared = []
        for aligned_queries, aligned_gallery, part in self._aligned_parts(queries, parts):
            local_of_global = np.full(num_gallery, -1, dtype=np.int64)
            local_of_global[part.positions] = np.arange(len(part.positions))
            prepared.append((aligned_queries, self.backend.prepare(aligned_gallery), part, local_of_global))
        indices_out = np.empty((queries.shape[0], k), dtype=np.int64)
        for start in self._chunks(queries.shape[0], self.chunk_size, "k-NN search"):
            stop = min(start + self.chunk_size, queries.shape[0])
            all_scores, all_indices = [], []
            for aligned_queries, prepared_gallery, part, local_of_global in prepared:
                local_exclude = None
                if exclude is not None:
                    local_exclude = np.where(exclude[start:stop] >= 0, local_of_global[exclude[start:stop]], -1)
                scores, local = self.backend.search(aligned_queries[start:stop], prepared_gallery, k, local_exclude)
                all_scores.append(scores)
                all_indices.append(np.where(local >= 0, part.positions[np.maximum(local, 0)], -1))
            scores = np.concatenate(all_scores, axis=1)
            indices = np.concatenate(all_indices, axis=1)
            if len(prepared) > 1:  # merge the parts' rankings into one list, same tie rule
                sort_index = np.where(indices < 0, np.iinfo(np.int64).max, indices)
                order = np.lexsort((sort_index, -scores), axis=-1)
                indices = np.take_along_axis(indices, order, axis=1)
            indices_out[start:stop] = indices[:, :k]
        return indices_out

    def _full_average_precision(self, queries, parts, relevance, num_relevant, exclude) -> np.ndarray:
        import torch

        num_gallery = sum(len(part.positions) for part in parts)
        aligned = [
            (torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(np.ascontiguousarray(g)), part)
            for q, g, part in self._aligned_parts(queries, parts)
        ]
        # One part holding every gallery row in order (the usual case) needs no scatter into the score matrix.
        whole = len(aligned) == 1 and np.array_equal(aligned[0][2].positions, np.arange(num_gallery))
        rows_per_chunk = max(1, min(self.chunk_size, self.map_chunk_elements // num_gallery))
        average_precision = np.full(queries.shape[0], np.nan)
        by_class = _ClassColumns(relevance) if relevance.mode == "labels" else None
        num_workers = max(1, torch.get_num_threads())
        workers = ThreadPoolExecutor(max_workers=num_workers) if by_class else None
        try:
            for start in self._chunks(queries.shape[0], rows_per_chunk, "full-ranking mAP"):
                stop = min(start + rows_per_chunk, queries.shape[0])
                rows = np.arange(start, stop)
                # (chunk, N) float32, bounded by the chunk size; torch's matmul is multi-threaded
                if whole:
                    scores = aligned[0][0][start:stop] @ aligned[0][1].T
                else:
                    scores = torch.empty((len(rows), num_gallery), dtype=torch.float32)
                    for aligned_queries, aligned_gallery, part in aligned:
                        scores[:, torch.from_numpy(part.positions)] = (
                            aligned_queries[start:stop] @ aligned_gallery.T
                        ).float()
                if exclude is not None:
                    has = np.flatnonzero(exclude[rows] >= 0)
                    scores[torch.from_numpy(has), torch.from_numpy(exclude[rows][has])] = -np.inf
                if by_class is None:
                    relevant = relevance.dense(rows)
                    if exclude is not None:
                        relevant[has, exclude[rows][has]] = False
                    average_precision[rows] = average_precision_with_ties(scores.numpy(), relevant, num_relevant[rows])
                    continue
                # Label relevance: the rows of one class share their relevant columns; classes run on the workers.
                jobs = []
                for code, class_rows in by_class.groups(rows):
                    for part_rows in np.array_split(class_rows, num_workers):
                        if len(part_rows):
                            jobs.append((part_rows, workers.submit(
                                average_precision_shared_relevance, scores[torch.from_numpy(part_rows - start)],
                                *by_class.columns(code), num_relevant[part_rows],
                            )))  # fmt: skip
                for part_rows, job in jobs:
                    average_precision[part_rows] = job.result()
        finally:
            if workers is not None:
                workers.shutdown()
        return average_precision


class _ClassColumns:
    """For label relevance: the query rows of each class, and the gallery columns in and out of that class."""

    def __init__(self, relevance: _Relevance):
        self.relevance = relevance
        self._columns: dict[int, tuple] = {}

    def groups(self, rows: np.ndarray):
        """(class code, its rows) for the rows whose label is in the gallery (the others have no relevant item)."""
        codes = self.relevance.query_codes[rows]
        for code in np.unique(codes):
            if code >= 0:
                yield int(code), rows[codes == code]

    def columns(self, code: int) -> tuple:
        import torch

        if code not in self._columns:
            member = self.relevance.gallery_codes == code
            self._columns[code] = (torch.from_numpy(np.flatnonzero(member)), torch.from_numpy(np.flatnonzero(~member)))
        return self._columns[code]


def evaluate_retrieval(
    query_embeddings,
    gallery_embeddings=None,
    query_labels=None,
    gallery_labels=None,
    *,
    same_items: bool | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    backend: str | KNNBackend | None = "faiss",
    renormalize: bool = True,
    query_relevant: Sequence[Sequence] | None = None,
    gallery_ids: Sequence | None = None,
    chunk_size: int = 4096,
    show_progress: bool = False,
) -> RetrievalResult:
    """Functional form of :class:`RetrievalEvaluator` (same arguments); returns a :class:`RetrievalResult`.

    >>> import numpy as np
    >>> from bt2_hf.retrieval import evaluate_retrieval
    >>> new = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=np.float32)  # 3-d new model
    >>> old = new[:, :2]  # a 2-d old gallery of the same items
    >>> evaluate_retrieval(new, old, [0, 0, 1, 1], same_items=True, metrics=["top1"]).metrics
    {'top1': 1.0}
    """
    evaluator = RetrievalEvaluator(
        metrics=metrics, backend=backend, renormalize=renormalize, chunk_size=chunk_size, show_progress=show_progress
    )
    return evaluator.evaluate(
        query_embeddings,
        gallery_embeddings,
        query_labels,
        gallery_labels,
        query_relevant=query_relevant,
        gallery_ids=gallery_ids,
        same_items=same_items,
    )
