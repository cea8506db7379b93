"""A monotone map from the backfill model's cosines to the gallery encoder's, fitted on the gallery's own items.

During a backfill a re-embedded item has two vectors: the encoder's (kept until the backfill is finalised) and the
new model's. A new query therefore has two cosines with it: against the encoder's vector through its compatible
prefix (the encoder space), and against the new vector (the new space). Over the same query–item pairs the two
spaces disagree on scale (new/new cosines of close items run higher), which is why one sort of both cosines ranks
re-embedded items too high. This module fits, without labels, the monotone map ``g`` that puts new-space cosines on
the encoder space's scale:

1. a sample of re-embedded items serves as queries (their new vectors are what the new model embeds them to);
2. each ranks the other re-embedded items in both spaces and keeps its ``depth`` best cosines in each;
3. ``g`` matches the quantiles of the two pooled sets of best cosines (knot ``i``: the ``i``-th quantile of the
   new-space cosines ↦ the ``i``-th quantile of the encoder-space cosines), linear between knots and of slope 1
   beyond them, so that ``g`` is strictly increasing everywhere and never ties two different cosines.

Both spaces are measured on the same pairs, so the map reflects scale, not which items were re-embedded first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

DEFAULT_CALIBRATION_QUERIES = 1000
DEFAULT_CALIBRATION_REFERENCES = 20_000
DEFAULT_CALIBRATION_DEPTH = 10
DEFAULT_KNOTS = 64


@dataclass(frozen=True)
class ScoreMap:
    """A strictly increasing piecewise-linear map of new-space cosines onto the encoder space's scale.

    Args:
        new_knots (`np.ndarray`): increasing new-space cosines.
        old_knots (`np.ndarray`): the encoder-space cosine each knot maps to (increasing).
        pairs (`int`): how many query–item cosines of each space the knots were fitted on.
    """

    new_knots: np.ndarray
    old_knots: np.ndarray
    pairs: int = 0

    def __call__(self, scores) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        mapped = np.interp(scores, self.new_knots, self.old_knots)
        # Beyond the knots, slope 1: order is kept (np.interp alone would flatten the ends into ties).
        below, above = scores < self.new_knots[0], scores > self.new_knots[-1]
        mapped[below] = self.old_knots[0] + (scores[below] - self.new_knots[0])
        mapped[above] = self.old_knots[-1] + (scores[above] - self.new_knots[-1])
        return mapped

    @classmethod
    def identity(cls) -> ScoreMap:
        return cls(np.array([-1.0, 1.0]), np.array([-1.0, 1.0]), 0)

    def to_dict(self) -> dict:
        return {"new_knots": [round(float(v), 6) for v in self.new_knots],
                "old_knots": [round(float(v), 6) for v in self.old_knots], "pairs": int(self.pairs)}  # fmt: skip


def _unit(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def _top_scores(scores: np.ndarray, depth: int) -> np.ndarray:
    if depth >= scores.shape[1]:
        return scores
    return np.partition(scores, scores.shape[1] - depth, axis=1)[:, -depth:]


def fit_score_map(
    new_vectors: np.ndarray,
    old_vectors: np.ndarray,
    prefix_dim: int,
    *,
    new_prefix_dim: int | None = None,
    queries: int = DEFAULT_CALIBRATION_QUERIES,
    references: int = DEFAULT_CALIBRATION_REFERENCES,
    depth: int = DEFAULT_CALIBRATION_DEPTH,
    knots: int = DEFAULT_KNOTS,
    seed: int = 0,
) -> ScoreMap:
    """Fit the map from new-space to encoder-space cosines on re-embedded items (see the module docstring).

    Args:
        new_vectors (`np.ndarray` of shape `(m, d_new)`): the new model's vectors of the re-embedded items.
        old_vectors (`np.ndarray` of shape `(m, d_old)`): the encoder's vectors of the same items, same rows.
        prefix_dim (`int`): the query prefix compared with the encoder's vectors (``d_old``).
        new_prefix_dim (`int`, *optional*): the query prefix compared with the new vectors (default: all of them).
        queries (`int`, *optional*, defaults to 1000): re-embedded items sampled as queries.
        references (`int`, *optional*, defaults to 20000): re-embedded items sampled as what they rank.
        depth (`int`, *optional*, defaults to 10): best cosines kept per query and space.
        knots (`int`, *optional*, defaults to 64): quantiles matched.
        seed (`int`, *optional*, defaults to 0): seed of the samples.

    Returns:
        `ScoreMap`: the identity when fewer than two items are re-embedded.
    """
    new_vectors, old_vectors = np.asarray(new_vectors), np.asarray(old_vectors)
    if len(new_vectors) != len(old_vectors):
        raise ValueError(
            f"{len(new_vectors)} new vectors but {len(old_vectors)} encoder vectors: pass the same items."
        )
    count = len(new_vectors)
    if count < 2:
        return ScoreMap.identity()
    rng = np.random.default_rng(seed)
    reference_rows = np.sort(rng.choice(count, size=min(count, references), replace=False))
    query_rows = np.sort(rng.choice(count, size=min(count, queries), replace=False))
    new_prefix_dim = new_prefix_dim or new_vectors.shape[1]
    query_new = _unit(new_vectors[query_rows, :new_prefix_dim])
    query_old = _unit(new_vectors[query_rows, :prefix_dim])
    reference_new = _unit(new_vectors[reference_rows, :new_prefix_dim])
    reference_old = _unit(old_vectors[reference_rows])
    depth = max(1, min(depth, len(reference_rows) - 1))
    pooled_new, pooled_old = [], []
    for start in range(0, len(query_rows), 256):
        block = slice(start, start + 256)
        new_scores = query_new[block] @ reference_new.T
        old_scores = query_old[block] @ reference_old.T
        # A query never ranks itself (the same item, not a neighbour).
        own = query_rows[block][:, None] == reference_rows[None, :]
        new_scores[own], old_scores[own] = -np.inf, -np.inf
        pooled_new.append(_top_scores(new_scores, depth).ravel())
        pooled_old.append(_top_scores(old_scores, depth).ravel())
    pooled_new, pooled_old = np.concatenate(pooled_new), np.concatenate(pooled_old)
    keep = np.isfinite(pooled_new) & np.isfinite(pooled_old)
    pooled_new, pooled_old = pooled_new[keep], pooled_old[keep]
    if len(pooled_new) < 2:
        return ScoreMap.identity()
    levels = np.linspace(0.0, 1.0, knots)
    new_knots, old_knots = np.quantile(pooled_new, levels), np.quantile(pooled_old, levels)
    new_knots, first = np.unique(new_knots, return_index=True)  # strictly increasing abscissae
    # Equal encoder-space knots would tie distinct cosines: a vanishing rise keeps the map strictly increasing.
    old_knots = np.maximum.accumulate(old_knots[first]) + 1e-7 * np.arange(len(new_knots))
    if len(new_knots) < 2:
        return ScoreMap.identity()
    return ScoreMap(new_knots, old_knots, int(len(pooled_new)))


DEFAULT_SAMPLE = 1000


def calibration_sample(backfilled_rows: np.ndarray, size: int = DEFAULT_SAMPLE, seed: int = 0) -> np.ndarray:
    """The re-embedded rows that per-query statistics are taken over: up to ``size`` of them, seeded, sorted."""
    backfilled_rows = np.sort(np.asarray(backfilled_rows, dtype=np.int64))
    if len(backfilled_rows) <= size:
        return backfilled_rows
    return np.sort(np.random.default_rng(seed).choice(backfilled_rows, size=size, replace=False))


@dataclass(frozen=True)
class QueryStandardiser:
    """Per query, the affine map that gives new-space cosines the encoder space's mean and spread.

    Both are measured on the same sample of re-embedded items (each has a vector in each space), so for each query
    ``(s − μ_new) / σ_new · σ_old + μ_old`` turns a new/new cosine into the encoder-space cosine as many standard
    deviations above that query's typical score. A better new space separates a query's true neighbours by more
    deviations, and that survives the map; the constant offset between the scales does not.

    Args:
        old_mean, old_sd, new_mean, new_sd (`np.ndarray` of shape `(n,)`): per-query statistics.
    """

    old_mean: np.ndarray
    old_sd: np.ndarray
    new_mean: np.ndarray
    new_sd: np.ndarray

    def new_to_encoder(self, scores: np.ndarray, query_rows: np.ndarray | None = None) -> np.ndarray:
        """Map ``scores`` (one row per query of ``query_rows``, default: all) onto the encoder space's scale."""
        rows = slice(None) if query_rows is None else np.asarray(query_rows)
        scale = (self.old_sd[rows] / self.new_sd[rows])[:, None]
        return (np.asarray(scores, dtype=np.float64) - self.new_mean[rows][:, None]) * scale + self.old_mean[rows][
            :, None
        ]


def standardise_queries(
    prefix_queries: np.ndarray,
    new_queries: np.ndarray,
    sample_old: np.ndarray,
    sample_new: np.ndarray,
    exclude: np.ndarray | None = None,
) -> QueryStandardiser:
    """:class:`QueryStandardiser` of unit queries (prefix and new width) over a sample's vectors in each space.

    Args:
        prefix_queries (`np.ndarray` of shape `(n, d_old)`), new_queries (`np.ndarray` of shape `(n, d_new)`): unit.
        sample_old (`np.ndarray` of shape `(m, d_old)`), sample_new (`np.ndarray` of shape `(m, d_new)`): unit
            vectors of the same ``m`` re-embedded items in each space.
        exclude (`np.ndarray` of `bool`, shape `(n, m)`, *optional*): pairs left out (a query's own item).
    """
    old_scores = prefix_queries @ sample_old.T
    new_scores = new_queries @ sample_new.T
    if exclude is not None and exclude.any():
        old_scores, new_scores = np.where(exclude, np.nan, old_scores), np.where(exclude, np.nan, new_scores)
    with warnings.catch_warnings():  # a query whose every pair is left out: NaN, handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        old_mean, old_sd = np.nanmean(old_scores, axis=1), np.nanstd(old_scores, axis=1)
        new_mean, new_sd = np.nanmean(new_scores, axis=1), np.nanstd(new_scores, axis=1)
    # Too few items to measure a spread (or none): the identity map, the naive comparison.
    degenerate = ~(np.isfinite(old_sd) & np.isfinite(new_sd) & (old_sd > 1e-6) & (new_sd > 1e-6))
    old_mean, new_mean = np.where(degenerate, 0.0, old_mean), np.where(degenerate, 0.0, new_mean)
    old_sd, new_sd = np.where(degenerate, 1.0, old_sd), np.where(degenerate, 1.0, new_sd)
    return QueryStandardiser(old_mean, old_sd, new_mean, new_sd)
