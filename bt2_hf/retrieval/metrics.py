"""Retrieval metrics as pure functions of relevance along a ranking (no search, no model).

Each function returns one value per query; the evaluator averages over the queries that have at least one relevant
gallery item (the research protocol skips the others too). Definitions follow reference/field.md §4.
"""

from __future__ import annotations

import numpy as np


def cmc_hits(relevant_topk: np.ndarray, k: int) -> np.ndarray:
    """CMC top-k: whether a relevant item is among the first ``k`` neighbours (per query).

    This is also Recall@K as used for text→image retrieval: a query succeeds if any of its ground-truth items is in
    the top ``k``.

    Args:
        relevant_topk (`np.ndarray` of `bool`, shape `(n, K)`): relevance of the ranked neighbours, ``K >= k``
            (or ``K`` = all candidates when the gallery is smaller than ``k``).
        k (`int`): the cut-off.
    """
    return relevant_topk[:, :k].any(axis=1)


def average_precision_at_r(relevant_topk: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """mAP@R (Musgrave et al. 2020) per query: ``(1/R) Σ_{i≤R} P@i · rel_i`` with ``R`` = the query's relevant count.

    Args:
        relevant_topk (`np.ndarray` of `bool`, shape `(n, K)`): relevance of the ranked neighbours, with
            ``K >= max(num_relevant)``.
        num_relevant (`np.ndarray` of `int`, shape `(n,)`): ``R`` per query; rows with ``R = 0`` give NaN.
    """
    num_relevant = np.asarray(num_relevant)
    width = relevant_topk.shape[1]
    if len(num_relevant) and num_relevant.max(initial=0) > width:
        raise ValueError(f"mAP@R needs the top R neighbours; got {width} but a query has R={num_relevant.max()}.")
    ranks = np.arange(1, width + 1)
    within_r = ranks[None, :] <= num_relevant[:, None]
    relevant = relevant_topk & within_r
    precision = np.cumsum(relevant, axis=1) / ranks[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_relevant > 0, (precision * relevant).sum(axis=1) / num_relevant, np.nan)


def average_precision_with_ties(scores: np.ndarray, relevant: np.ndarray, num_relevant=None) -> np.ndarray:
    """Non-interpolated average precision over the full ranking, scikit-learn's way (tied scores grouped).

    Equals ``sklearn.metrics.average_precision_score(relevant[i], scores[i])`` row by row: the precision-recall curve
    has one point per distinct score, ``AP = Σ_t (R_t − R_{t−1}) · P_t``. Items scored ``-inf`` (e.g. the left-out
    query itself) form a last group that holds no relevant item and so contributes nothing.

    Args:
        scores (`np.ndarray` of shape `(n, N)`): similarities of every gallery item (higher is better).
        relevant (`np.ndarray` of `bool`, shape `(n, N)`): relevance of every gallery item.
        num_relevant (`np.ndarray`, *optional*): relevant count per query; defaults to ``relevant.sum(1)``. Rows with 0
            give NaN (scikit-learn warns and returns a meaningless value there).
    """
    import torch

    # Everything in torch: its sort, gather and scans are multi-threaded (numpy's are not), and this is the whole
    # cost of full-ranking mAP. Equal float32 inputs give the same result as scikit-learn, ties included.
    score_tensor = torch.as_tensor(np.ascontiguousarray(scores, dtype=np.float32))
    relevant_tensor = torch.as_tensor(np.ascontiguousarray(relevant, dtype=bool))
    if num_relevant is None:
        num_relevant = relevant_tensor.sum(dim=1).numpy()
    num_relevant = np.asarray(num_relevant, dtype=np.float64)
    width = score_tensor.shape[1]
    sorted_scores, order = torch.sort(score_tensor, dim=1, descending=True)
    sorted_relevant = torch.gather(relevant_tensor, 1, order)
    del order
    true_positives = torch.cumsum(sorted_relevant, dim=1, dtype=torch.int64)
    # A group of tied scores ends where the next score differs (or at the last item).
    group_end = torch.ones_like(sorted_relevant)
    torch.ne(sorted_scores[:, :-1], sorted_scores[:, 1:], out=group_end[:, :-1])
    del sorted_scores
    # True positives at the end of the previous group (cumulative counts are non-decreasing, so a running max works).
    previous_tp = torch.zeros_like(true_positives)
    previous_tp[:, 1:] = torch.cummax(torch.where(group_end, true_positives, 0), dim=1).values[:, :-1]
    ranks = torch.arange(1, width + 1, dtype=torch.float64)
    precision = true_positives.to(torch.float64) / ranks
    contribution = torch.where(group_end, (true_positives - previous_tp).to(torch.float64) * precision, 0.0)
    total = contribution.sum(dim=1).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_relevant > 0, total / num_relevant, np.nan)


def average_precision_shared_relevance(
    scores, relevant_columns, other_columns, num_relevant: np.ndarray | None = None
) -> np.ndarray:
    """:func:`average_precision_with_ties` for rows that share one set of relevant gallery columns (one class),
    without sorting the whole ranking.

    A relevant item scored ``s`` sits at precision ``#{relevant ≥ s} / #{all ≥ s}`` (tied scores are one group,
    scikit-learn's convention), so ``AP = mean over relevant items of that ratio``. Only the relevant scores are
    sorted (a class is a small share of the gallery); every other score is placed among them by binary search and
    counted. The result equals :func:`average_precision_with_ties` exactly. Items scored ``-inf`` (the left-out
    query) count nowhere.

    Args:
        scores (`torch.Tensor` of shape `(n, N)`, float32): similarities to every gallery item.
        relevant_columns (`torch.LongTensor`): the gallery columns relevant to every row.
        other_columns (`torch.LongTensor`): the remaining columns.
        num_relevant (`np.ndarray`, *optional*): relevant count per row without the left-out item; defaults to the
            finite relevant scores per row.
    """
    import torch

    relevant_sorted = torch.sort(scores.index_select(1, relevant_columns), dim=1).values  # ascending
    num_rows, width = relevant_sorted.shape
    finite = torch.isfinite(relevant_sorted)
    if num_relevant is None:
        num_relevant = finite.sum(dim=1).numpy()
    num_relevant = np.asarray(num_relevant, dtype=np.float64)
    # position p of another item = how many relevant scores are <= it: it is ranked at or above exactly the first p
    positions = torch.searchsorted(relevant_sorted, scores.index_select(1, other_columns), right=True)
    histogram = torch.zeros(num_rows, width + 1, dtype=torch.int64)
    histogram.scatter_add_(1, positions, torch.ones_like(positions))
    others_above = histogram.flip(1).cumsum(dim=1).flip(1)[:, 1:]  # others scored >= the t-th relevant score
    relevant_above = width - torch.searchsorted(relevant_sorted, relevant_sorted, right=False)
    ratio = relevant_above.to(torch.float64) / (relevant_above + others_above).to(torch.float64)
    total = torch.where(finite, ratio, 0.0).sum(dim=1).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_relevant > 0, total / num_relevant, np.nan)


def flip_rates(correct_before: np.ndarray, correct_after: np.ndarray) -> dict[str, float]:
    """Negative- and positive-flip rates between two per-query outcomes (PC-training; field.md §4).

    Args:
        correct_before (`np.ndarray` of `bool`): e.g. top-1 hits of old→old.
        correct_after (`np.ndarray` of `bool`): the same queries after the update, e.g. new→old.

    Returns:
        `dict`: ``negative_flip_rate`` (right before, wrong after), ``positive_flip_rate`` (the reverse), and their
        difference ``delta`` = PFR − NFR (the aggregate change that hides per-query regressions).
    """
    before = np.asarray(correct_before, dtype=bool)
    after = np.asarray(correct_after, dtype=bool)
    if before.shape != after.shape:
        raise ValueError(f"Flip rates compare the same queries; got {before.shape} and {after.shape} outcomes.")
    if before.size == 0:
        raise ValueError("Flip rates need at least one query.")
    negative = float(np.mean(before & ~after))
    positive = float(np.mean(~before & after))
    return {"negative_flip_rate": negative, "positive_flip_rate": positive, "delta": positive - negative}


def parse_metric_name(name: str) -> tuple[str, int | None]:
    """Parse a metric name: ``top<k>`` / ``cmc@<k>`` / ``recall@<k>`` → (kind, k); ``map``; ``map@r``.

    Returns:
        `tuple[str, int | None]`: kind in ``{"cmc", "recall", "map", "map@r"}`` and the cut-off (``None`` for mAPs).
    """
    key = name.strip().lower()
    if key in {"map", "map@all"}:
        return "map", None
    if key in {"map@r", "map_at_r"}:
        return "map@r", None
    for prefix, kind in (("top-", "cmc"), ("top", "cmc"), ("cmc@", "cmc"), ("recall@", "recall"), ("r@", "recall")):
        if key.startswith(prefix) and key[len(prefix) :].isdigit() and int(key[len(prefix) :]) > 0:
            return kind, int(key[len(prefix) :])
    raise ValueError(
        f"Unknown metric {name!r}: use top<k> (CMC, e.g. top1, top5), recall@<k> (text→image), map (full ranking) "
        "or map@r."
    )
