"""Per-query calibration of the backfill model's cosines onto the gallery encoder's scale (the ``calibrated`` rule).

During a backfill a re-embedded item has two vectors: the encoder's (kept until the backfill is finalised) and the
new model's. A new query therefore has two cosines with it: against the encoder's vector through its compatible
prefix (the encoder space), and against the new vector (the new space). Over the same query–item pairs the two
spaces disagree on scale (new/new cosines run higher), which is why one sort of both cosines ranks re-embedded items
too high. For each query, :func:`standardise_queries` measures the mean and spread of its cosines with a sample of
re-embedded items in each space and maps new-space cosines affinely onto the encoder space's mean and spread; the
map needs no labels. A global monotone map (quantiles of the best cosines) and a global affine map were compared on
the demo's models and rejected (``benchmarks/README.md``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

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
