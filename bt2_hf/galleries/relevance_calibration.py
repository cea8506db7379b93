"""Learned mixing of the two spaces of a backfill: each cosine mapped to the log-odds that its item is relevant.

During a backfill an item not yet re-embedded is scored by a new→old cosine (the query's compatible prefix against
the encoder's vector) and a re-embedded item by a new/new cosine. The two are not on one scale, so one sort of both
(naive scoring) ranks by an accident of scale. Here each space gets its own logistic map, fitted on labelled
query–item pairs of the upgrade (its training or validation data, never the data it is measured on): a cosine ``s``
of that space becomes ``slope · s + intercept``, the log-odds that the item is relevant to the query. Both maps end
on the scale of relevance, so one sort of the mapped scores ranks old and re-embedded items by the evidence each
space gives. The ``"calibrated"`` rule (:mod:`bt2_hf.galleries.calibration`) maps one space onto the other without
labels; these maps use labels. Measured on the demo (``benchmarks/README.md``; ``backfill_curves.py --learned``,
maps fitted on one half of a split and measured on the other):

- on random orders the area along β is 1.5–1.9 points above naive scoring's, but top-1 falls up to 3.7 points below
  new → old while 1 % or less of the gallery is re-embedded: the best of a few re-embedded items, mapped by a map
  that holds on average, outranks a query's right old item;
- on the centroid-distance order (the least typical items first) it falls 16–22 points below new → old: the
  re-embedded items are a biased sample and the maps, fitted on all items, overrate them.

So it is an evaluation rule (``rule="learned"`` of :func:`~bt2_hf.galleries.mixed.top_k_under_rule` and
:func:`~bt2_hf.galleries.mixed.top1_along_backfill`), kept to measure against, not a rule of the galleries.

The pairs: each query's ``candidates`` best items in each space (the pairs a ranking has to order, not random
pairs, which are nearly all irrelevant), labelled relevant when they share the query's label or are among its
relevant items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_CANDIDATES = 30


@dataclass(frozen=True)
class RelevanceCalibration:
    """The two logistic maps of a backfill (a cosine → the log-odds of relevance).

    Args:
        encoder_slope, encoder_intercept (`float`): the map of new→old cosines (a query's compatible prefix against
            the gallery encoder's vectors).
        new_slope, new_intercept (`float`): the map of new/new cosines (the query against re-embedded vectors).
        pairs (`int`): query–item pairs each map was fitted on.
    """

    encoder_slope: float
    encoder_intercept: float
    new_slope: float
    new_intercept: float
    pairs: int = 0

    def __post_init__(self):
        values = (self.encoder_slope, self.encoder_intercept, self.new_slope, self.new_intercept)
        if not all(np.isfinite(values)):
            raise ValueError(f"A relevance calibration needs finite slopes and intercepts, got {values}.")
        if self.encoder_slope <= 0 or self.new_slope <= 0:
            # A map that decreases would reverse a space's own ranking: the pairs did not tell relevant from not.
            raise ValueError(f"Both slopes must be positive (a higher cosine, likelier relevant), got "
                             f"{self.encoder_slope} and {self.new_slope}: fit on more, or better labelled, pairs.")  # fmt: skip

    def encoder_logits(self, scores: np.ndarray) -> np.ndarray:
        return self.encoder_slope * np.asarray(scores) + self.encoder_intercept

    def new_logits(self, scores: np.ndarray) -> np.ndarray:
        return self.new_slope * np.asarray(scores) + self.new_intercept

    def to_dict(self) -> dict:
        return {"encoder": [self.encoder_slope, self.encoder_intercept], "new": [self.new_slope, self.new_intercept],
                "pairs": self.pairs}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> RelevanceCalibration:
        try:
            (encoder_slope, encoder_intercept), (new_slope, new_intercept) = data["encoder"], data["new"]
            return cls(float(encoder_slope), float(encoder_intercept), float(new_slope), float(new_intercept),
                       int(data.get("pairs", 0)))  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"Not a relevance calibration ({{'encoder': [slope, intercept], 'new': [...]}}): "
                             f"{error}") from None  # fmt: skip


def fit_logistic(scores: np.ndarray, relevant: np.ndarray, l2: float = 1e-4, iterations: int = 100):
    """``(slope, intercept)`` of the logistic regression of ``relevant`` on ``scores`` (Newton's method, a small
    L2 penalty on both so that separable pairs still give finite values)."""
    scores, relevant = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(relevant, dtype=np.float64).ravel()
    if len(scores) != len(relevant) or not len(scores):
        raise ValueError(f"scores and relevant must be equally long and not empty, got {len(scores)} and "
                         f"{len(relevant)}.")  # fmt: skip
    if relevant.min() == relevant.max():
        raise ValueError("The pairs are all relevant or all irrelevant: a logistic map needs both.")
    features = np.stack([scores, np.ones_like(scores)], axis=1)
    weights = np.zeros(2)
    for _ in range(iterations):
        probabilities = 1.0 / (1.0 + np.exp(-(features @ weights)))
        gradient = features.T @ (probabilities - relevant) / len(scores) + l2 * weights
        hessian = (features * (probabilities * (1 - probabilities))[:, None]).T @ features / len(scores)
        step = np.linalg.solve(hessian + l2 * np.eye(2), gradient)
        weights -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(weights[0]), float(weights[1])


def _candidate_pairs(queries, gallery, is_relevant, candidates: int, leave_one_out: bool):
    scores = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T
    if leave_one_out:
        np.fill_diagonal(scores, -np.inf)
    depth = min(candidates, scores.shape[1] - (1 if leave_one_out else 0))
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    return np.take_along_axis(scores, top, 1).ravel(), is_relevant(top).ravel()


def fit_relevance_calibration(
    old_space_queries: np.ndarray,
    old_gallery: np.ndarray,
    new_queries: np.ndarray,
    new_gallery: np.ndarray,
    *,
    query_labels: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    relevant: list | None = None,
    candidates: int = DEFAULT_CANDIDATES,
) -> RelevanceCalibration:
    """Fit both maps on labelled pairs: each query's ``candidates`` best items in each space.

    Args:
        old_space_queries (`np.ndarray` of shape `(n, d_old)`): the queries in the encoder's space (compatible prefix).
        old_gallery (`np.ndarray` of shape `(N, d_old)`): the items' encoder vectors.
        new_queries (`np.ndarray` of shape `(n, d_new)`), new_gallery (`np.ndarray` of shape `(N, d_new)`): the new
            model's embeddings of the same queries and items.
        query_labels (`np.ndarray`, *optional*): class of each query; an item is relevant when its class is the
            query's. Without ``gallery_labels`` the queries are the items themselves (each left out of its own pairs).
        gallery_labels (`np.ndarray`, *optional*): class of each item.
        relevant (`list[list[int]]`, *optional*): instead of labels, each query's relevant item rows.
        candidates (`int`, *optional*, defaults to `30`): pairs per query and space.

    Returns:
        `RelevanceCalibration`. Rows are normalised here: pass raw embeddings or unit ones.
    """
    if (query_labels is None) == (relevant is None):
        raise ValueError("Give the pairs' relevance either as query_labels (and gallery_labels) or as relevant.")

    def unit(rows):
        rows = np.asarray(rows, dtype=np.float32)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    leave_one_out = relevant is None and gallery_labels is None
    if relevant is None:
        query_labels = np.asarray(query_labels)
        labels = query_labels if gallery_labels is None else np.asarray(gallery_labels)

        def is_relevant(top):
            return labels[top] == query_labels[:, None]
    else:
        sets = [set(rows) for rows in relevant]

        def is_relevant(top):
            return np.asarray([[row in wanted for row in line] for line, wanted in zip(top.tolist(), sets)])

    encoder_scores, encoder_relevant = _candidate_pairs(unit(old_space_queries), unit(old_gallery), is_relevant,
                                                        candidates, leave_one_out)  # fmt: skip
    new_scores, new_relevant = _candidate_pairs(unit(new_queries), unit(new_gallery), is_relevant, candidates,
                                                leave_one_out)  # fmt: skip
    encoder = fit_logistic(encoder_scores, encoder_relevant)
    new = fit_logistic(new_scores, new_relevant)
    return RelevanceCalibration(*encoder, *new, pairs=len(encoder_scores))
