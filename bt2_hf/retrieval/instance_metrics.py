"""Instance-level retrieval metrics: Recall@K and mAP from scores (or embeddings) and a boolean relevance matrix.

Instance-level means relevance is given per (query, gallery item) pair, e.g. a caption and the images it describes
(:func:`bt2_hf.experiments.scenes.scene_relevance`), instead of derived from class labels.

**Ranking and ties.** Each query ranks the whole gallery by descending score; items with equal scores are ordered by
ascending gallery index (a stable sort). Every metric is computed exactly on that one ranking, so results do not
depend on the hardware or the sort implementation. (This differs from scikit-learn's ``average_precision_score``,
which averages over tied groups; :func:`bt2_hf.retrieval.metrics.average_precision_with_ties` does that.)

- ``recall@K``: the fraction of queries with at least one relevant item among the first ``K`` (the text → image
  Recall@K of CLIP-style papers; with one relevant item per query it is CMC top-K).
- ``map``: the mean over queries of the average precision over *all* relevant items of the full ranking,
  ``AP = (1/R) Σ_{relevant items j} (relevant items ranked at or before j) / rank(j)``.

With ``cutoffs`` (the information-retrieval metrics of a retrieval set with qrels, e.g. ``cutoffs=(10,)``):

- ``recall_of_relevant@K``: the fraction of a query's relevant items ranked in its first ``K`` (BEIR's and
  trec_eval's Recall@K; with one relevant item per query it equals ``recall@K`` above), averaged over queries;
- ``mrr@K``: the mean of ``1 / rank`` of each query's first relevant item, 0 when it is ranked after ``K``;
- ``ndcg@K``: ``DCG@K / IDCG@K`` with ``DCG@K = Σ_{rank r ≤ K} gain(r) / log2(r + 1)`` (linear gains: the qrels'
  graded scores given as ``gains``, else 1 for a relevant item), ``IDCG@K`` the same sum over the relevant items'
  gains sorted in decreasing order (trec_eval's ``ndcg_cut``).

**Queries with no relevant item** have no defined recall or AP. By default (``no_relevant="exclude"``) they are left
out of every mean and counted in ``num_without_relevant``; ``no_relevant="error"`` raises instead.

Scores are computed and ranked in chunks of queries, so a 10k × 10k evaluation never holds more than a chunk of the
score matrix (plus the boolean relevance matrix, which may itself be given as a per-chunk function).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .protocol import align_widths, as_embedding_array

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)
# Elements of a query chunk's score block; about 40 bytes of working memory each (scores, order, ranks, sums).
_CHUNK_ELEMENTS = 1 << 21

Relevance = np.ndarray | Callable[[np.ndarray], np.ndarray]


@dataclass
class InstanceRetrievalResult:
    """Instance-level metrics of one (query set, gallery) pair.

    Args:
        recall (`dict[int, float]`): Recall@K as fractions in [0, 1], over the evaluated queries.
        mean_average_precision (`float`): mAP over the evaluated queries, in [0, 1].
        num_queries (`int`): all queries.
        num_evaluated (`int`): queries with at least one relevant item (the denominator of every mean).
        num_without_relevant (`int`): queries left out because nothing in the gallery is relevant to them.
        first_relevant_rank (`np.ndarray` of `int`, shape `(num_queries,)`): 1-based rank of each query's best ranked
            relevant item, 0 for a query without one (Recall@K for any K is ``mean(1 <= rank <= K)``).
        average_precision (`np.ndarray` of `float`, shape `(num_queries,)`): AP per query, NaN without a relevant item.
        recall_of_relevant (`dict[int, float]`): with ``cutoffs``: the mean fraction of each query's relevant items
            ranked in its first K.
        mrr (`dict[int, float]`): with ``cutoffs``: MRR@K.
        ndcg (`dict[int, float]`): with ``cutoffs``: nDCG@K.
    """

    recall: dict[int, float]
    mean_average_precision: float
    num_queries: int
    num_evaluated: int
    num_without_relevant: int
    first_relevant_rank: np.ndarray = field(repr=False)
    average_precision: np.ndarray = field(repr=False)
    recall_of_relevant: dict[int, float] = field(default_factory=dict)
    mrr: dict[int, float] = field(default_factory=dict)
    ndcg: dict[int, float] = field(default_factory=dict)

    def to_dict(self, percent: bool = False) -> dict:
        """JSON-able summary: ``recall@K`` and ``map`` (fractions, or percent with ``percent=True``), the ``cutoffs``
        metrics when measured (``recall_of_relevant@K``, ``mrr@K``, ``ndcg@K``) and the counts."""
        scale = 100.0 if percent else 1.0
        out = {f"recall@{k}": scale * value for k, value in sorted(self.recall.items())}
        out["map"] = scale * self.mean_average_precision
        for name, values in (("recall_of_relevant", self.recall_of_relevant), ("mrr", self.mrr), ("ndcg", self.ndcg)):
            out.update({f"{name}@{k}": scale * value for k, value in sorted(values.items())})
        out.update(
            num_queries=self.num_queries,
            num_evaluated=self.num_evaluated,
            num_without_relevant=self.num_without_relevant,
        )
        return out


def _relevance_block(relevance: Relevance, rows: np.ndarray, num_gallery: int) -> np.ndarray:
    block = relevance(rows) if callable(relevance) else relevance[rows]
    block = np.asarray(block)
    if block.shape != (len(rows), num_gallery):
        raise ValueError(
            f"The relevance of {len(rows)} queries must have shape {(len(rows), num_gallery)} (queries × gallery); "
            f"got {block.shape}."
        )
    if block.dtype != bool:
        raise ValueError(
            f"Relevance must be boolean (True = relevant); got dtype {block.dtype}. Pass `relevance > 0`."
        )
    return block


def rank_block(scores: np.ndarray, relevant: np.ndarray, excluded: np.ndarray | None = None):
    """Rank one block of queries and return the 1-based rank of the first relevant item and the AP per query.

    The ranking sorts by descending score, ties by ascending gallery index. ``excluded`` items (e.g. the query's own
    item under leave-one-out) are removed from the ranking: they occupy no rank and are never relevant.

    Args:
        scores (`np.ndarray` of shape `(n, N)`): finite or infinite scores; NaN is refused.
        relevant (`np.ndarray` of `bool`, shape `(n, N)`).
        excluded (`np.ndarray` of `bool`, shape `(n, N)`, *optional*).

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray]`: first relevant rank (0 if none), AP (NaN if none), and the
        number of relevant items per query.
    """
    ranked = _rank(scores, relevant, excluded)
    return ranked.first_rank, ranked.average_precision, ranked.num_relevant


@dataclass
class _RankedBlock:
    first_rank: np.ndarray
    average_precision: np.ndarray
    num_relevant: np.ndarray
    order: np.ndarray
    ranked_relevant: np.ndarray
    ranks: np.ndarray


def _rank(scores: np.ndarray, relevant: np.ndarray, excluded: np.ndarray | None) -> _RankedBlock:
    if np.isnan(scores).any():
        raise ValueError("Scores contain NaN; check the embeddings (a NaN cannot be ranked).")
    # A stable ascending sort of the negated scores is a descending sort with ties kept in gallery order.
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked_relevant = np.take_along_axis(relevant, order, axis=1)
    if excluded is None:
        ranks = np.broadcast_to(np.arange(1, scores.shape[1] + 1, dtype=np.int64), scores.shape)
    else:
        ranked_excluded = np.take_along_axis(excluded, order, axis=1)
        ranked_relevant = ranked_relevant & ~ranked_excluded
        ranks = np.cumsum(~ranked_excluded, axis=1, dtype=np.int64)
    num_relevant = ranked_relevant.sum(axis=1)
    hits_so_far = np.cumsum(ranked_relevant, axis=1, dtype=np.int64)
    precision_sum = np.where(ranked_relevant, hits_so_far / np.maximum(ranks, 1), 0.0).sum(axis=1)
    first = np.argmax(ranked_relevant, axis=1)
    first_rank = np.where(num_relevant > 0, ranks[np.arange(len(first)), first], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        average_precision = np.where(num_relevant > 0, precision_sum / num_relevant, np.nan)
    return _RankedBlock(first_rank, average_precision, num_relevant, order, ranked_relevant, ranks)


def _cutoff_block(ranked: _RankedBlock, gains: np.ndarray, cutoffs: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per query and cut-off K: the number of relevant items ranked in the first K, and nDCG@K (NaN without any)."""
    ranked_gains = np.where(ranked.ranked_relevant, np.take_along_axis(gains, ranked.order, axis=1), 0.0)
    discount = 1.0 / np.log2(ranked.ranks + 1.0)
    # the ideal ranking: the relevant items' gains in decreasing order, at ranks 1, 2, …
    ideal = -np.sort(-np.where(ranked.ranked_relevant, ranked_gains, 0.0), axis=1)
    ideal_discount = 1.0 / np.log2(np.arange(2, ideal.shape[1] + 2, dtype=np.float64))
    hits, ndcg = [], []
    for k in cutoffs:
        within = ranked.ranks <= k
        hits.append((ranked.ranked_relevant & within).sum(axis=1))
        dcg = np.where(within, ranked_gains * discount, 0.0).sum(axis=1)
        ideal_dcg = (ideal[:, :k] * ideal_discount[:k]).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ndcg.append(np.where(ideal_dcg > 0, dcg / ideal_dcg, np.nan))
    return np.stack(hits, axis=1), np.stack(ndcg, axis=1)


def _gains_block(gains, relevant_block: np.ndarray, rows: np.ndarray) -> np.ndarray:
    if gains is None:
        return relevant_block.astype(np.float64)
    block = np.asarray(gains(rows) if callable(gains) else gains[rows], dtype=np.float64)
    if block.shape != relevant_block.shape:
        raise ValueError(f"gains of {len(rows)} queries must have shape {relevant_block.shape}; got {block.shape}.")
    if not np.isfinite(block).all() or (block < 0).any():
        raise ValueError("gains must be finite and non-negative (the qrels' graded relevance scores).")
    return block


def instance_retrieval_metrics(
    scores: np.ndarray | None = None,
    relevance: Relevance | None = None,
    *,
    query_embeddings=None,
    gallery_embeddings=None,
    ks: Sequence[int] = DEFAULT_KS,
    leave_one_out: bool = False,
    no_relevant: str = "exclude",
    renormalize: bool = True,
    chunk_size: int | None = None,
    cutoffs: Sequence[int] = (),
    gains: Relevance | None = None,
) -> InstanceRetrievalResult:
    """Recall@K and mAP of every query against the whole gallery, exact under the stable tie rule.

    Give either ``scores`` or ``query_embeddings`` + ``gallery_embeddings``; with embeddings the score is the
    protocol's cosine (:func:`bt2_hf.retrieval.protocol.align_widths`: the wider side is cut to the narrower width's
    prefix, then both are re-normalised), computed one chunk of queries at a time in float32.

    Args:
        scores (`np.ndarray` of shape `(num_queries, num_gallery)`, *optional*): similarities, higher is better.
        relevance (`np.ndarray` of `bool` or `Callable`): the relevance matrix, shape `(num_queries, num_gallery)`,
            or a function of an array of query rows returning their rows of it (to keep a huge matrix out of memory).
        query_embeddings, gallery_embeddings (`np.ndarray` or `torch.Tensor`, *optional*): instead of ``scores``.
        ks (`Sequence[int]`, *optional*, defaults to `(1, 5, 10)`): the Recall@K cut-offs.
        leave_one_out (`bool`, *optional*, defaults to `False`): query ``i`` and gallery item ``i`` are the same item
            (needs as many queries as gallery items); it is removed from query ``i``'s ranking.
        no_relevant (`str`, *optional*, defaults to `"exclude"`): what to do with a query that has no relevant item:
            ``"exclude"`` leaves it out of the means (counted in ``num_without_relevant``, logged), ``"error"`` raises.
        renormalize (`bool`, *optional*, defaults to `True`): re-normalise the embeddings' common prefix (``False``
            reproduces the BT² research code's un-normalised prefixes).
        chunk_size (`int`, *optional*): queries per chunk; by default about two million scores per chunk.
        cutoffs (`Sequence[int]`, *optional*): also measure ``recall_of_relevant@K``, ``mrr@K`` and ``ndcg@K`` at
            these cut-offs (a retrieval set's metrics, e.g. ``(10,)``).
        gains (`np.ndarray` or `Callable`, *optional*): graded relevance for nDCG, non-negative, the shape of
            ``relevance`` (or a function of query rows); only relevant items' gains count. Default: 1 per relevant item.

    Returns:
        [`InstanceRetrievalResult`].

    Raises:
        `ValueError`: inconsistent shapes, NaN scores, non-boolean relevance, no query with a relevant item, or (with
        ``no_relevant="error"``) any query without one.
    """
    if relevance is None:
        raise ValueError("Pass `relevance`: a boolean (num_queries, num_gallery) matrix or a function of query rows.")
    if no_relevant not in ("exclude", "error"):
        raise ValueError(f"no_relevant must be 'exclude' or 'error'; got {no_relevant!r}.")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"Recall cut-offs must be positive integers; got {ks}.")
    cutoffs = sorted({int(k) for k in cutoffs})
    if cutoffs and cutoffs[0] < 1:
        raise ValueError(f"cutoffs must be positive integers; got {cutoffs}.")
    if scores is not None:
        if query_embeddings is not None or gallery_embeddings is not None:
            raise ValueError("Pass either `scores` or `query_embeddings` + `gallery_embeddings`, not both.")
        scores = np.asarray(scores)
        if scores.ndim != 2 or 0 in scores.shape:
            raise ValueError(
                f"scores must be a non-empty (num_queries, num_gallery) matrix; got shape {scores.shape}."
            )
        num_queries, num_gallery = scores.shape

        def score_block(rows):
            return scores[rows]

    else:
        if query_embeddings is None or gallery_embeddings is None:
            raise ValueError("Pass `scores`, or both `query_embeddings` and `gallery_embeddings`.")
        queries, gallery = align_widths(
            as_embedding_array(query_embeddings, "query_embeddings"),
            as_embedding_array(gallery_embeddings, "gallery_embeddings"),
            renormalize=renormalize,
        )
        num_queries, num_gallery = queries.shape[0], gallery.shape[0]
        gallery_t = np.ascontiguousarray(gallery.T)

        def score_block(rows):
            return queries[rows] @ gallery_t

    if not callable(relevance):
        relevance = np.asarray(relevance)
        if relevance.shape != (num_queries, num_gallery):
            raise ValueError(
                f"relevance has shape {relevance.shape} but there are {num_queries} queries and {num_gallery} "
                "gallery items; pass one row per query and one column per gallery item."
            )
    if leave_one_out and num_queries != num_gallery:
        raise ValueError(
            f"leave_one_out needs query i and gallery item i to be the same item; got {num_queries} queries and "
            f"{num_gallery} gallery items."
        )
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // num_gallery)

    first_rank = np.zeros(num_queries, dtype=np.int64)
    average_precision = np.full(num_queries, np.nan)
    num_relevant = np.zeros(num_queries, dtype=np.int64)
    hits_at = np.zeros((num_queries, len(cutoffs)), dtype=np.int64)
    ndcg_at = np.full((num_queries, len(cutoffs)), np.nan)
    for start in range(0, num_queries, chunk_size):
        rows = np.arange(start, min(start + chunk_size, num_queries))
        excluded = None
        if leave_one_out:
            excluded = np.zeros((len(rows), num_gallery), dtype=bool)
            excluded[np.arange(len(rows)), rows] = True
        block_scores = np.asarray(score_block(rows))
        block_relevant = _relevance_block(relevance, rows, num_gallery)
        ranked = _rank(block_scores, block_relevant, excluded)
        first_rank[rows], average_precision[rows], num_relevant[rows] = (
            ranked.first_rank,
            ranked.average_precision,
            ranked.num_relevant,
        )
        if cutoffs:
            hits_at[rows], ndcg_at[rows] = _cutoff_block(ranked, _gains_block(gains, block_relevant, rows), cutoffs)

    evaluated = num_relevant > 0
    num_without = int((~evaluated).sum())
    if num_without and no_relevant == "error":
        examples = np.flatnonzero(~evaluated)[:5].tolist()
        raise ValueError(
            f"{num_without} of {num_queries} queries have no relevant gallery item (e.g. queries {examples}); fix "
            "the relevance or pass no_relevant='exclude' to leave them out of the means."
        )
    if not evaluated.any():
        raise ValueError(f"None of the {num_queries} queries has a relevant gallery item; check the relevance matrix.")
    if num_without:
        logger.info("%d of %d queries have no relevant gallery item; left out of the means.", num_without, num_queries)
    recall = {k: float(np.mean(first_rank[evaluated] <= k)) for k in ks}
    ranks, counts = first_rank[evaluated], num_relevant[evaluated]
    recall_of_relevant = {k: float(np.mean(hits_at[evaluated, i] / counts)) for i, k in enumerate(cutoffs)}
    mrr = {k: float(np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0))) for k in cutoffs}
    # a query whose relevant items all have gain 0 has no ideal DCG: its nDCG is 0 (nothing to gain)
    ndcg = {k: float(np.mean(np.nan_to_num(ndcg_at[evaluated, i], nan=0.0))) for i, k in enumerate(cutoffs)}
    return InstanceRetrievalResult(
        recall=recall,
        mean_average_precision=float(np.mean(average_precision[evaluated])),
        num_queries=num_queries,
        num_evaluated=int(evaluated.sum()),
        num_without_relevant=num_without,
        first_relevant_rank=first_rank,
        average_precision=average_precision,
        recall_of_relevant=recall_of_relevant,
        mrr=mrr,
        ndcg=ndcg,
    )


def instance_compatibility_matrix(
    embeddings: Mapping[str, object],
    pairs: Iterable[tuple[str, str]] | None = None,
    relevance_fn: Callable[[str, str], Relevance] | None = None,
    *,
    leave_one_out: Iterable[tuple[str, str]] = (),
    ks: Sequence[int] = DEFAULT_KS,
    no_relevant: str = "exclude",
    renormalize: bool = True,
    chunk_size: int | None = None,
) -> dict[str, dict[str, InstanceRetrievalResult]]:
    """Instance-level metrics for every (query space, gallery space) pair of named embedding spaces.

    For example the spaces ``old_image``, ``new_image`` and ``new_text``: ``("new_text", "old_image")`` searches the
    old image gallery with new text queries. Each pair is scored with the protocol's cosine at the narrower width
    (the query's prefix at the gallery's width when the query is wider), re-normalised.

    Args:
        embeddings (`Mapping[str, np.ndarray]`): the vectors of each space, one row per item.
        pairs (`Iterable[tuple[str, str]]`, *optional*): (query space, gallery space) pairs; by default every ordered
            pair of different spaces.
        relevance_fn (`Callable[[str, str], np.ndarray | Callable]`): the relevance of a pair of spaces: a boolean
            (num_queries, num_gallery) matrix, or a function of query rows (see :func:`instance_retrieval_metrics`).
        leave_one_out (`Iterable[tuple[str, str]]`, *optional*): pairs whose query ``i`` and gallery item ``i`` are the
            same item (e.g. ``("old_image", "old_image")``), which is then removed from its own ranking.
        ks, no_relevant, renormalize, chunk_size: as in :func:`instance_retrieval_metrics`.

    Returns:
        `dict[str, dict[str, InstanceRetrievalResult]]`: ``matrix[query_space][gallery_space]``; turn it into JSON
        with :func:`compatibility_matrix_to_dict`.
    """
    if relevance_fn is None:
        raise ValueError("Pass relevance_fn(query_space, gallery_space) returning the pair's relevance.")
    names = list(embeddings)
    if pairs is None:
        pairs = [(query, gallery) for query in names for gallery in names if query != gallery]
    pairs = [tuple(pair) for pair in pairs]
    unknown = sorted({name for pair in pairs for name in pair} - set(names))
    if unknown:
        raise ValueError(f"Pairs name spaces {unknown} that have no embeddings; known spaces: {names}.")
    leave_one_out = {tuple(pair) for pair in leave_one_out}
    matrix: dict[str, dict[str, InstanceRetrievalResult]] = {}
    for query, gallery in pairs:
        matrix.setdefault(query, {})[gallery] = instance_retrieval_metrics(
            relevance=relevance_fn(query, gallery),
            query_embeddings=embeddings[query],
            gallery_embeddings=embeddings[gallery],
            ks=ks,
            leave_one_out=(query, gallery) in leave_one_out,
            no_relevant=no_relevant,
            renormalize=renormalize,
            chunk_size=chunk_size,
        )
    return matrix


def compatibility_matrix_to_dict(matrix: Mapping[str, Mapping[str, InstanceRetrievalResult]], percent=False) -> dict:
    """``{query_space: {gallery_space: {"recall@1": ..., "map": ..., counts}}}`` for results.json."""
    return {
        query: {gallery: result.to_dict(percent=percent) for gallery, result in row.items()}
        for query, row in matrix.items()
    }
