"""Partial backfilling: the gallery re-embedded by the new model a fraction β at a time (FastFill's protocol).

An order ``π`` ranks the gallery items; at fraction β the first ``⌊βN⌋`` of them carry the new model's embedding and
the rest still the old one. Queries come from the new model. The mixed gallery is searched as one ranked list:
re-embedded items are compared at full width and old items at the old model's prefix, each re-normalised, so all
scores are comparable cosines (:func:`bt2_hf.retrieval.protocol.mixed_gallery`). The curve ``M(β)`` and its area
``M̃ = ∫_0^1 M(β) dβ`` (trapezoid rule) summarise how quickly an update pays off while backfilling.

At β = 0 the curve is new/old, at β = 1 it is new/new.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .compatibility import _as_model
from .evaluator import DEFAULT_METRICS, RetrievalEvaluator
from .protocol import as_embedding_array, l2_normalize, mixed_gallery

logger = logging.getLogger(__name__)

BACKFILL_ORDERS = ("random", "priority", "centroid-distance")


class _ArrayVectors:
    """An in-memory gallery matrix seen as a vector store (what :func:`priority_order` reads)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors
        self.dimension = vectors.shape[1]

    def __len__(self) -> int:
        return len(self.vectors)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors[rows]

    def iter_vectors(self, chunk: int = 65536):
        for start in range(0, len(self.vectors), chunk):
            rows = np.arange(start, min(start + chunk, len(self.vectors)))
            yield rows, self.vectors[rows]


def priority_order(store, seed: int = 0, num_clusters: int | None = None) -> np.ndarray:
    """Rows ordered least confidently placed first: lowest cosine to the nearest of k-means centres of the gallery.

    No labels are needed (production galleries have none). Items far from every dense region of the old space are
    the likeliest to be retrieved wrongly, so they gain most from the new model's embedding.

    Args:
        store: a gallery store (``len``, ``dimension``, ``vectors_at``, ``iter_vectors``: read a chunk at a time) or
            an ``(N, d)`` matrix.
        seed (`int`, *optional*, defaults to 0): seed of the k-means sample and initialisation.
        num_clusters (`int`, *optional*): defaults to about ``sqrt(N)`` (at most 1,024).
    """
    from .knn import import_faiss

    if not hasattr(store, "iter_vectors"):
        store = _ArrayVectors(as_embedding_array(store, "gallery"))
    faiss = import_faiss()
    count, dimension = len(store), store.dimension
    num_clusters = num_clusters or max(1, min(1024, int(math.sqrt(count)), count // 39 or 1))
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(count, size=min(count, 256 * num_clusters), replace=False))
    sample = store.vectors_at(sample_rows)
    kmeans = faiss.Kmeans(dimension, num_clusters, niter=10, seed=seed, spherical=True, verbose=False)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    centres = faiss.IndexFlatIP(dimension)
    centres.add(kmeans.centroids)
    confidence = np.empty(count, dtype=np.float32)
    for rows, vectors in store.iter_vectors():
        scores, _ = centres.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        confidence[rows] = scores[:, 0]
    return np.argsort(confidence, kind="stable")


def backfill_order(
    old_gallery, gallery_labels=None, strategy: str | np.ndarray = "random", seed: int = 0
) -> np.ndarray:
    """The order in which gallery items are re-embedded (first = re-embedded first): the one order function of the
    library (in-place gallery backfills and the evaluation's backfill curves both use it).

    Args:
        old_gallery (`np.ndarray` of shape `(N, d_old)`, or a gallery store): the gallery in the old model's space;
            a store (``galleries/``) is read a chunk at a time.
        gallery_labels (`array-like` of shape `(N,)`, *optional*): needed by ``"centroid-distance"``.
        strategy (`str` or `np.ndarray`, *optional*, defaults to `"random"`):
            - ``"random"``: a uniformly random permutation (seeded).
            - ``"priority"``: label-free; items farthest from every k-means centre of the old space first
              (:func:`priority_order`).
            - ``"centroid-distance"``: items whose old embedding is farthest (lowest cosine) from their class
              centroid first, i.e. the least confidently placed items, which are the likeliest to be retrieved
              wrongly by new queries.
            - an explicit permutation of ``0..N-1``.
        seed (`int`, *optional*, defaults to `0`): seed of the random order (and of the k-means).
    """
    num_items = len(old_gallery)
    if not isinstance(strategy, str):
        order = np.asarray(strategy, dtype=np.int64)
        if order.shape != (num_items,) or not np.array_equal(np.sort(order), np.arange(num_items)):
            raise ValueError(f"An explicit backfill order must be a permutation of 0..{num_items - 1}.")
        return order
    if strategy == "random":
        return np.random.default_rng(seed).permutation(num_items)
    if strategy == "priority":
        return priority_order(old_gallery, seed)
    if strategy == "centroid-distance":
        if gallery_labels is None:
            raise ValueError("The 'centroid-distance' order needs gallery labels (the class of each gallery item).")
        old_gallery = as_embedding_array(old_gallery, "old_gallery")
        labels = np.asarray(gallery_labels)
        _, codes = np.unique(labels, return_inverse=True)
        codes = codes.reshape(-1)
        normalized = l2_normalize(old_gallery)
        centroids = np.zeros((codes.max() + 1, normalized.shape[1]), dtype=np.float64)
        np.add.at(centroids, codes, normalized)
        centroids = l2_normalize(centroids.astype(np.float32))
        confidence = np.einsum("nd,nd->n", normalized, centroids[codes])
        return np.argsort(confidence, kind="stable")  # least confident (farthest from the centroid) first
    raise ValueError(f"Unknown backfill order {strategy!r}; choose one of {BACKFILL_ORDERS} or pass a permutation.")


@dataclass
class BackfillCurve:
    """The metric as a function of the backfilled fraction.

    Args:
        betas (`np.ndarray`): the fractions, ascending, from 0 to 1.
        values (`dict[str, np.ndarray]`): per metric, ``M(β)`` for each β.
        area (`dict[str, float]`): per metric, the trapezoid area under the curve over β ∈ [0, 1].
        order (`str`): the name of the order used.
    """

    betas: np.ndarray
    values: dict[str, np.ndarray]
    area: dict[str, float]
    order: str

    def to_dict(self) -> dict:
        return {
            "order": self.order,
            "betas": self.betas.tolist(),
            "values": {name: values.tolist() for name, values in self.values.items()},
            "area": self.area,
        }


def backfill_curve(
    old,
    new,
    query_labels,
    gallery_labels=None,
    *,
    betas: Sequence[float] | None = None,
    order: str | np.ndarray = "random",
    seed: int = 0,
    metrics: Sequence[str] = DEFAULT_METRICS,
    evaluator: RetrievalEvaluator | None = None,
) -> BackfillCurve:
    """Evaluate new queries against a gallery backfilled in fraction β, for each β.

    Args:
        old (`ModelEmbeddings` or `np.ndarray`): the old model's embeddings (its gallery is what is backfilled).
        new (`ModelEmbeddings` or `np.ndarray`): the new model's embeddings of the same items (queries and gallery).
        query_labels (`array-like`): class labels of the queries.
        gallery_labels (`array-like`, *optional*): class labels of a separate gallery.
        betas (`Sequence[float]`, *optional*): fractions in [0, 1] including both ends; defaults to 0, 0.1, …, 1.
        order (`str` or `np.ndarray`, *optional*, defaults to `"random"`): see :func:`backfill_order`.
        seed (`int`, *optional*, defaults to `0`): seed of the random order.
        metrics (`Sequence[str]`, *optional*): metric names; ignored when an ``evaluator`` is given.
        evaluator (`RetrievalEvaluator`, *optional*): to choose the backend.
    """
    evaluator = evaluator or RetrievalEvaluator(metrics=metrics)
    old, new = _as_model(old, "old"), _as_model(new, "new")
    if (old.gallery is None) != (new.gallery is None):
        raise ValueError("old and new must both have a separate gallery or both use the query set as gallery.")
    betas = np.linspace(0.0, 1.0, 11) if betas is None else np.asarray(sorted(betas), dtype=np.float64)
    if betas[0] != 0.0 or betas[-1] != 1.0 or (betas < 0).any() or (betas > 1).any():
        raise ValueError("betas must lie in [0, 1] and include both 0 and 1 (the area is taken over [0, 1]).")
    old_gallery, new_gallery = old.gallery_or_query, new.gallery_or_query
    num_items = len(old_gallery)
    labels_for_order = query_labels if gallery_labels is None else gallery_labels
    permutation = backfill_order(old_gallery, labels_for_order, order, seed)
    order_name = order if isinstance(order, str) else "custom"
    values = {name: np.empty(len(betas)) for name in evaluator.metric_names}
    for position, beta in enumerate(betas):
        use_new = np.zeros(num_items, dtype=bool)
        use_new[permutation[: int(np.floor(beta * num_items))]] = True
        parts = mixed_gallery(old_gallery, new_gallery, use_new)
        result = evaluator.evaluate(new.query, parts, query_labels, gallery_labels, same_items=old.gallery is None)
        for name in evaluator.metric_names:
            values[name][position] = result.metrics[name]
        logger.info("backfill %s β=%.2f: %s", order_name, beta, result.metrics)
    area = {name: float(np.trapezoid(curve, betas)) for name, curve in values.items()}
    return BackfillCurve(betas, values, area, order_name)
