"""Top-K retrieval metrics of the text upgrade (Recall@K, MRR@K, nDCG@K) and its backfill curve under the slot rule.

Everything is computed from each query's first K gallery rows, exactly (brute force, chunked; ties go to the lowest
gallery row, as in :mod:`bt2_hf.retrieval.instance_metrics`), with binary relevance from qrels (a list of relevant
gallery rows per query):

- ``recall@K``: the fraction of a query's relevant documents among its first K (BEIR's Recall@K);
- ``mrr@K``: ``1 / rank`` of the first relevant document, 0 beyond K;
- ``ndcg@K``: ``Σ_{r ≤ K, relevant} 1 / log2(r + 1)`` over the ideal ``Σ_{r ≤ min(K, #relevant)} 1 / log2(r + 1)``.

A partly backfilled gallery is ranked with the galleries' slot rule (:func:`bt2_hf.galleries.mixed.fill_slots`): the
old-space ranking (the query mapped into the old space against the old vectors) decides the positions, and the
positions held by re-embedded documents are filled by the re-embedded documents ranked by their new/new score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..galleries.mixed import fill_slots
from ..retrieval.protocol import align_widths, as_embedding_array

METRIC_NAMES = ("recall", "mrr", "ndcg")


def top_k_rows(queries, gallery, k: int, chunk: int = 512, allowed: np.ndarray | None = None) -> np.ndarray:
    """Each query's ``k`` best gallery rows by cosine (protocol widths), best first, ties to the lowest row.

    Args:
        queries (`np.ndarray` of shape `(n, d_q)`), gallery (`np.ndarray` of shape `(N, d_g)`): the embeddings;
            the wider side is cut to the narrower width and both are re-normalised.
        k (`int`): how many rows.
        allowed (`np.ndarray` of `bool`, shape `(N,)`, *optional*): rank only these gallery rows (the rest are
            never returned; a row of -1 pads when fewer than ``k`` are allowed).

    Returns:
        `np.ndarray` of int64, shape `(n, k)`.
    """
    queries, gallery = align_widths(as_embedding_array(queries, "queries"), as_embedding_array(gallery, "gallery"))
    num_gallery = len(gallery)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    available = num_gallery if allowed is None else int(np.count_nonzero(allowed))
    depth = min(k, available)
    if depth == 0:
        return out
    gallery_t = np.ascontiguousarray(gallery.T)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ gallery_t
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        # a stable sort of the negated scores: descending score, ties by ascending row
        order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        out[start : start + chunk, :depth] = order
    return out


def metrics_at_k(rows: np.ndarray, relevant: Sequence[Sequence[int]], k: int) -> dict[str, float]:
    """``recall@k``, ``mrr@k`` and ``ndcg@k`` (fractions) of ranked ``rows`` against ``relevant`` (qrels as rows).

    Args:
        rows (`np.ndarray` of shape `(n, ≥k)`): gallery rows, best first (-1 = no item).
        relevant (`Sequence[Sequence[int]]`): the relevant gallery rows of each query (at least one each).
    """
    if len(rows) != len(relevant):
        raise ValueError(f"{len(rows)} ranked queries but qrels for {len(relevant)}.")
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    recall = np.zeros(len(rows))
    reciprocal = np.zeros(len(rows))
    ndcg = np.zeros(len(rows))
    for index, (ranked, targets) in enumerate(zip(rows[:, :k], relevant)):
        targets = set(int(t) for t in targets)
        if not targets:
            raise ValueError(f"Query {index} has no relevant document; every query needs one.")
        hits = np.fromiter((int(row) in targets for row in ranked), dtype=bool, count=len(ranked))
        recall[index] = hits.sum() / len(targets)
        if hits.any():
            reciprocal[index] = 1.0 / (int(np.argmax(hits)) + 1)
        ndcg[index] = (hits * discount[: len(hits)]).sum() / discount[: min(k, len(targets))].sum()
    return {f"recall@{k}": float(recall.mean()), f"mrr@{k}": float(reciprocal.mean()), f"ndcg@{k}": float(ndcg.mean())}


def retrieval_metrics(queries, gallery, relevant: Sequence[Sequence[int]], k: int = 10) -> dict[str, float]:
    """:func:`metrics_at_k` of the exact cosine ranking of ``gallery`` for ``queries``."""
    return metrics_at_k(top_k_rows(queries, gallery, k), relevant, k)


def slot_rule_rows(
    old_space_queries, old_gallery, new_queries, new_gallery, use_new: np.ndarray, k: int, chunk: int = 512
) -> np.ndarray:
    """The first ``k`` rows of a gallery whose ``use_new`` documents are re-embedded, under the slot rule.

    Args:
        old_space_queries (`np.ndarray` of shape `(n, d_old)`): the queries in the old space (an adapter's output,
            or a compatible model's prefix).
        old_gallery (`np.ndarray` of shape `(N, d_old)`): every document's old vector.
        new_queries (`np.ndarray` of shape `(n, d_new)`), new_gallery (`np.ndarray` of shape `(N, d_new)`): the new
            model's embeddings (only the ``use_new`` rows of ``new_gallery`` are read).
        use_new (`np.ndarray` of `bool`, shape `(N,)`): which documents are re-embedded.
    """
    use_new = np.asarray(use_new, dtype=bool)
    rows = top_k_rows(old_space_queries, old_gallery, k, chunk)
    if not use_new.any():
        return rows
    backfill_rows = top_k_rows(new_queries, new_gallery, k, chunk, allowed=use_new)
    filled, _ = fill_slots(rows, use_new[rows], backfill_rows, np.zeros(backfill_rows.shape, np.float32))
    return filled


def backfill_curve(
    old_space_queries,
    old_gallery,
    new_queries,
    new_gallery,
    relevant: Sequence[Sequence[int]],
    *,
    k: int = 10,
    betas: Sequence[float] = tuple(np.linspace(0, 1, 11)),
    seed: int = 0,
) -> dict:
    """The metrics at each backfilled fraction β (a seeded random order of the documents), under the slot rule.

    Returns:
        `dict`: ``{"betas": [...], "order": "random", "seed": seed, "<metric>@k": [...], "area": {metric: …}}``;
        β = 0 is the old-space search, β = 1 is new/new.
    """
    num_documents = len(old_gallery)
    order = np.random.default_rng(seed).permutation(num_documents)
    curve: dict = {"betas": [float(b) for b in betas], "order": "random", "seed": seed}
    for beta in betas:
        use_new = np.zeros(num_documents, dtype=bool)
        use_new[order[: int(np.floor(beta * num_documents))]] = True
        rows = slot_rule_rows(old_space_queries, old_gallery, new_queries, new_gallery, use_new, k)
        for name, value in metrics_at_k(rows, relevant, k).items():
            curve.setdefault(name, []).append(value)
    curve["area"] = {name: float(np.trapezoid(curve[f"{name}@{k}"], curve["betas"])) for name in METRIC_NAMES}
    return curve


__all__ = ["METRIC_NAMES", "backfill_curve", "metrics_at_k", "retrieval_metrics", "slot_rule_rows", "top_k_rows"]
