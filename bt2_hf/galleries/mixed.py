"""Search a gallery, partly backfilled or not, ranking old and re-embedded items on one comparable score.

Why not compare scores directly: a new/new cosine and a new/old cosine are not on one scale. New/new cosines of
matching items are typically higher, so re-embedded items outrank the old items that new→old retrieval ranked
first; when the backfill starts with the hardest (least typical) items, those are the ones pushed to the top, and
top-1 falls well below not backfilling at all (70.6 → 48.6 at 10 % in the demo).

The rule used here ("slot-preserving re-ranking"):

1. every item is scored in the gallery encoder's space: the query's compatible prefix against the encoder's vector,
   which the gallery keeps for every item until the backfill is finalised; this ranking is exactly new→old;
2. among the top ``depth`` candidates, the *positions* held by re-embedded items are kept, and the re-embedded
   candidates are re-ordered among those positions by their full new/new score.

An old item never moves, so a re-embedded item can only take a position that new→old retrieval already gave to a
re-embedded item. At β = 0 this is new→old exactly; at β = 1 it is new/new re-ranking of new→old's top ``depth``
(new/new itself once ``depth`` covers new/new's top-1, and exactly after :func:`bt2_hf.galleries.finalize_backfill`).
In between, top-1 changes only for the queries whose new→old top-1 was re-embedded, and then to the best new/new
match among the candidates, which includes that item: the curve moves from new→old towards new/new without the
scale mismatch ever deciding between an old and a new item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..compatibility import IncompatibleModelsError, admit_query_model, compatible_prefix

RULES = ("slots", "naive")
DEFAULT_DEPTH = 100


@dataclass
class GallerySearchResult:
    """Neighbours of each query, best first.

    Args:
        ids (`list[list]`): item ids.
        scores (`np.ndarray` of shape `(n, k)`): the comparable score of each position (the encoder-space cosine that
            earned it); non-increasing along a row.
        rows (`np.ndarray` of shape `(n, k)`): gallery rows.
        backfilled (`np.ndarray` of `bool`, shape `(n, k)`): the hit carries the backfill model's embedding.
        new_scores (`np.ndarray` of shape `(n, k)`): full new/new cosine of backfilled hits, NaN for the others.
        prefix_dim (`int`): the query prefix compared with the encoder's vectors.
        admission (`dict`, *optional*): why the query model was admitted to the encoder's gallery
            (:meth:`bt2_hf.compatibility.Admission.to_dict`; records an ``allow_unmeasured`` override); ``None`` when
            the check was skipped.
    """

    ids: list[list]
    scores: np.ndarray
    rows: np.ndarray
    backfilled: np.ndarray
    new_scores: np.ndarray
    prefix_dim: int
    admission: dict | None = None


def _unit(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def slot_rerank(rows: np.ndarray, backfilled: np.ndarray, new_scores: np.ndarray) -> np.ndarray:
    """Re-order, in every row, the re-embedded candidates among the positions they hold, by new/new score.

    Args:
        rows (`np.ndarray` of shape `(n, depth)`): candidates in encoder-space order.
        backfilled (`np.ndarray` of `bool`, same shape): which candidates are re-embedded.
        new_scores (`np.ndarray`, same shape): their new/new scores (ignored elsewhere).

    Returns:
        `np.ndarray`: the re-ordered rows; positions of old items are unchanged.

    >>> import numpy as np
    >>> slot_rerank(np.array([[7, 8, 9, 10]]), np.array([[True, False, True, True]]), np.array([[0.1, 0, 0.9, 0.5]]))
    array([[ 9,  8, 10,  7]])
    """
    return np.take_along_axis(rows, slot_order(backfilled, new_scores), 1)


def slot_order(backfilled: np.ndarray, new_scores: np.ndarray) -> np.ndarray:
    """The permutation of :func:`slot_rerank`: ``result[i, j]`` is the candidate index placed at position ``j``."""
    key = np.where(backfilled, -np.asarray(new_scores, dtype=np.float64), np.inf)
    by_new_score = np.argsort(key, axis=1, kind="stable")  # re-embedded first (best new/new first), then the rest
    positions = np.argsort(~backfilled, axis=1, kind="stable")  # re-embedded positions first, ascending, then the rest
    permutation = np.empty_like(by_new_score)
    np.put_along_axis(permutation, positions, by_new_score, 1)
    return permutation


def search_gallery(
    store,
    queries,
    k: int = 10,
    query_config=None,
    *,
    check_compatibility: bool = True,
    depth: int | None = None,
    rule: str = "slots",
    allow_unmeasured: bool = False,
    **search_params,
) -> GallerySearchResult:
    """Search a gallery (faiss or Milvus) with query embeddings, applying the prefix and compatibility rules.

    Args:
        store (`FaissGallery` or `MilvusGallery`): the gallery.
        queries (`np.ndarray` or `torch.Tensor` of shape `(n, d_q)`): query embeddings of the query model.
        k (`int`, *optional*, defaults to `10`): neighbours per query.
        query_config (`BT2Config`): the query model's config (``fingerprint``, ``embedding_dim``, ``compatible_with``).
        check_compatibility (`bool`, *optional*, defaults to `True`): `False` compares the first ``d`` dims unchecked.
        depth (`int`, *optional*): candidates re-ranked during a backfill (default: 100, at least ``k``).
        rule (`str`, *optional*, defaults to `"slots"`): ``"slots"`` (see the module docstring) or ``"naive"``
            (re-embedded candidates scored by new/new, old ones by new/old, one sort: shown for comparison only).
        allow_unmeasured (`bool`, *optional*, defaults to `False`): admit a query model whose compatibility with the
            gallery's encoder is declared but not measured (`bt2 verify` measures it).
        search_params: ``nprobe``, ``ef_search``, ``rerank`` for this search.

    Raises:
        `IncompatibleModelsError`: the query model is not compatible with the gallery's encoder.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    queries = np.asarray(getattr(queries, "numpy", lambda: queries)(), dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"Query embeddings must be 2-d (n, d), got shape {queries.shape}.")
    encoder = store.encoder
    if check_compatibility:
        if query_config is None:
            raise ValueError(
                "Pass query_config=model.config so that the query model can be checked against the gallery."
            )
        admission = admit_query_model(query_config, encoder["fingerprint"], store.dimension,
                                      encoder.get("name_or_path"), allow_unmeasured=allow_unmeasured)  # fmt: skip
        prefix = admission.prefix_dim
    else:
        admission, prefix = None, store.dimension
    if queries.shape[1] < prefix:
        raise ValueError(f"Query embeddings are {queries.shape[1]}-d, narrower than the gallery's {prefix}-d prefix.")
    state = store.backfill_state
    new_prefix = None
    if state and state["done"] > 0 and query_config is not None:
        try:
            new_prefix = compatible_prefix(query_config, state["model"]["fingerprint"], state["dimension"],
                                           state["model"].get("name_or_path"), allow_unmeasured=allow_unmeasured)  # fmt: skip
        except IncompatibleModelsError:
            new_prefix = None  # e.g. the old model itself: it searches the encoder's vectors only
    depth = max(k, depth or DEFAULT_DEPTH) if new_prefix else k
    scores, rows = store.search_encoder_space(_unit(queries[:, :prefix]), depth, **search_params)
    backfilled = np.zeros(rows.shape, dtype=bool)
    new_scores = np.full(rows.shape, np.nan, dtype=np.float32)
    if new_prefix:
        valid = rows >= 0
        backfilled[valid] = store.backfilled(rows[valid])
        if backfilled.any():
            new_queries = _unit(queries[:, :new_prefix])
            query_of = np.broadcast_to(np.arange(len(rows))[:, None], rows.shape)[backfilled]
            vectors = store.backfill_vectors(rows[backfilled])
            new_scores[backfilled] = np.einsum("nd,nd->n", vectors, new_queries[query_of])
            if rule == "slots":
                # Rows, flags and new scores move together; the slot scores stay where they are.
                order = slot_order(backfilled, new_scores)
                rows, backfilled = np.take_along_axis(rows, order, 1), np.take_along_axis(backfilled, order, 1)
                new_scores = np.take_along_axis(new_scores, order, 1)
            else:
                combined = np.where(backfilled, new_scores, scores)
                order = np.argsort(-combined, axis=1, kind="stable")
                rows, backfilled = np.take_along_axis(rows, order, 1), np.take_along_axis(backfilled, order, 1)
                new_scores, scores = np.take_along_axis(new_scores, order, 1), np.take_along_axis(combined, order, 1)
    rows, scores, backfilled, new_scores = rows[:, :k], scores[:, :k], backfilled[:, :k], new_scores[:, :k]
    ids = [store.ids_of(row[row >= 0]) for row in rows]
    return GallerySearchResult(ids, scores, rows, backfilled, new_scores, prefix,
                               admission.to_dict() if admission else None)  # fmt: skip


def top1_under_rule(
    old_gallery: np.ndarray,
    new_gallery: np.ndarray,
    queries: np.ndarray,
    prefix_dim: int,
    use_new: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray | None = None,
    *,
    rule: str = "slots",
    depth: int = DEFAULT_DEPTH,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy (%) of new queries over a gallery whose ``use_new`` items are re-embedded, under a rule.

    Exact (brute force), for evaluation: ``old_gallery`` (N, d_old), ``new_gallery`` (N, d_new), ``queries``
    (n, d_new) of the new model; ``gallery_labels=None`` means the queries are the gallery items (leave-one-out).
    ``rule="naive"`` is :mod:`bt2_hf.retrieval.backfill`'s scoring (one sort of new/new and new/old cosines).
    """
    old_gallery, new_gallery, queries = _unit(old_gallery), _unit(new_gallery), np.asarray(queries, np.float32)
    same_items = gallery_labels is None
    gallery_labels = np.asarray(query_labels if same_items else gallery_labels)
    query_labels = np.asarray(query_labels)
    prefix_queries, full_queries = _unit(queries[:, :prefix_dim]), _unit(queries)
    correct = 0
    for start in range(0, len(queries), chunk):
        stop = min(len(queries), start + chunk)
        old_scores = prefix_queries[start:stop] @ old_gallery.T
        new_scores = full_queries[start:stop] @ new_gallery.T
        if same_items:
            old_scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
            new_scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        if rule == "naive":
            best = np.argmax(np.where(use_new[None, :], new_scores, old_scores), axis=1)
        else:
            top = np.argpartition(-old_scores, min(depth, old_scores.shape[1] - 1), axis=1)[:, :depth]
            top = np.take_along_axis(
                top, np.argsort(-np.take_along_axis(old_scores, top, 1), axis=1, kind="stable"), 1
            )
            flags = use_new[top]
            reranked = slot_rerank(top, flags, np.take_along_axis(new_scores, top, 1))
            best = reranked[:, 0]
        correct += int((gallery_labels[best] == query_labels[start:stop]).sum())
    return 100.0 * correct / len(queries)


def mixed_backfill_curve(
    old_embeddings: np.ndarray,
    new_embeddings: np.ndarray,
    labels: np.ndarray,
    prefix_dim: int,
    *,
    betas: Sequence[float] | None = None,
    order: str | np.ndarray = "random",
    seed: int = 0,
    rule: str = "slots",
    depth: int = DEFAULT_DEPTH,
) -> dict:
    """Top-1 against the backfilled fraction β for one order and rule (queries = gallery items, leave-one-out).

    Returns:
        `dict`: ``{"order", "rule", "betas", "top1", "area"}``.
    """
    from ..retrieval.backfill import backfill_order

    betas = np.linspace(0.0, 1.0, 11) if betas is None else np.asarray(betas, dtype=np.float64)
    permutation = backfill_order(old_embeddings, labels, order, seed)
    values = []
    for beta in betas:
        use_new = np.zeros(len(old_embeddings), dtype=bool)
        use_new[permutation[: int(np.floor(beta * len(old_embeddings)))]] = True
        values.append(top1_under_rule(old_embeddings, new_embeddings, new_embeddings, prefix_dim, use_new, labels,
                                      rule=rule, depth=depth))  # fmt: skip
    return {"order": order if isinstance(order, str) else "custom", "rule": rule, "betas": betas.tolist(),
            "top1": values, "area": float(np.trapezoid(values, betas))}  # fmt: skip
