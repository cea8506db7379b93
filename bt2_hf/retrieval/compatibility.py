"""Compatibility between model versions, measured with the one evaluator (field.md §4).

- A pair (old, new), optionally with an independently trained new model: old/old, new/old, new/new (and indep/indep)
  in one call, the empirical criterion ``M(new→old) > M(old→old)`` per metric, the update gain, the compatibility tax
  and the negative / positive flip rates of top-1 between old→old and new→old.
- T versions: the matrix ``C[i][j] = M(query model i, gallery model j)`` for ``j <= i`` with AC and AA.

Notation: "new/old" means queries embedded by ``new`` searched in a gallery embedded by ``old``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .evaluator import DEFAULT_METRICS, RetrievalEvaluator, RetrievalResult
from .metrics import flip_rates

logger = logging.getLogger(__name__)


@dataclass
class ModelEmbeddings:
    """One model's embeddings of the query set and of the gallery.

    Args:
        query (`np.ndarray` of shape `(n, d)`): the query items embedded by this model.
        gallery (`np.ndarray` of shape `(N, d)`, *optional*): the gallery items embedded by this model. `None` means
            the gallery is the query set itself (each query is then left out of its own ranking).
        name (`str`, *optional*): a label for tables and plots.
    """

    query: np.ndarray
    gallery: np.ndarray | None = None
    name: str | None = None

    @property
    def gallery_or_query(self) -> np.ndarray:
        return self.query if self.gallery is None else self.gallery


def _as_model(embeddings, name: str) -> ModelEmbeddings:
    if isinstance(embeddings, ModelEmbeddings):
        if embeddings.name is None:
            embeddings.name = name
        return embeddings
    return ModelEmbeddings(query=embeddings, name=name)


def update_gain_or_reason(new_old: float, old_old: float, independent: float) -> tuple[float | None, str | None]:
    """The BCT update gain ``[M(new,old) − M(old,old)] / [M(indep,indep) − M(old,old)]``, or ``None`` and why it is
    undefined.

    The gain measures how much of the independent model's improvement over the old one reaches the old gallery. When
    the independent model is no better than the old one there is no improvement to share, and the ratio (with a zero
    or negative denominator) means nothing. The one definition: :func:`compare_models` and the experiments use it.

    >>> update_gain_or_reason(0.60, 0.50, 0.70)
    (0.5, None)
    """
    if independent <= old_old:
        return None, (
            f"n/a: the independent new model is no better than the old one ({100 * independent:.2f} ≤ "
            f"{100 * old_old:.2f}), so there is no improvement to carry over"
        )
    return float((new_old - old_old) / (independent - old_old)), None


def update_gain(new_old: float, old_old: float, independent: float) -> float:
    """BCT update gain (see :func:`update_gain_or_reason`), NaN where it is undefined."""
    gain, _ = update_gain_or_reason(new_old, old_old, independent)
    return float("nan") if gain is None else gain


@dataclass
class PairReport:
    """The compatibility of one update, old → new.

    Args:
        results (`dict[str, RetrievalResult]`): keyed ``"old/old"``, ``"new/old"``, ``"new/new"`` and, when an
            independent model is given, ``"indep/indep"`` (query model / gallery model).
        criterion (`dict[str, bool]`): per metric, the empirical criterion ``M(new/old) > M(old/old)`` (strict).
        update_gain (`dict[str, float]`): per metric, needs the independent model; NaN where it is undefined (the
            independent model is no better than the old one on that metric, or on the first rank metric, whose
            undefined gain makes every other metric's undefined too: a gain would divide by noise).
        update_gain_note (`dict[str, str]`): per metric whose gain is undefined, why.
        compatibility_tax (`dict[str, float]`): per metric, ``M(indep/indep) − M(new/new)``.
        flips (`dict[str, float]`): top-1 negative / positive flip rates from old/old to new/old.
    """

    results: dict[str, RetrievalResult]
    criterion: dict[str, bool]
    update_gain: dict[str, float] = field(default_factory=dict)
    compatibility_tax: dict[str, float] = field(default_factory=dict)
    flips: dict[str, float] = field(default_factory=dict)
    update_gain_note: dict[str, str] = field(default_factory=dict)

    @property
    def compatible(self) -> bool:
        """Whether the criterion holds for every metric."""
        return all(self.criterion.values())

    def to_dict(self) -> dict:
        return {
            "results": {key: result.metrics for key, result in self.results.items()},
            "criterion": self.criterion,
            "compatible": self.compatible,
            "update_gain": {name: (None if math.isnan(gain) else gain) for name, gain in self.update_gain.items()},
            "update_gain_note": self.update_gain_note,
            "compatibility_tax": self.compatibility_tax,
            "flips": self.flips,
        }


def _evaluate(evaluator, query_model: ModelEmbeddings, gallery_model: ModelEmbeddings, labels, gallery_labels):
    same_items = gallery_model.gallery is None
    return evaluator.evaluate(
        query_model.query, gallery_model.gallery_or_query, labels, gallery_labels, same_items=same_items
    )


def compare_models(
    old,
    new,
    query_labels,
    gallery_labels=None,
    *,
    independent=None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    evaluator: RetrievalEvaluator | None = None,
    flip_metric: str | None = None,
    known_results: dict[str, RetrievalResult] | None = None,
) -> PairReport:
    """Evaluate old/old, new/old and new/new (and indep/indep) in one call and derive the compatibility numbers.

    Args:
        old (`ModelEmbeddings` or `np.ndarray`): the old model's embeddings (an array = query set = gallery).
        new (`ModelEmbeddings` or `np.ndarray`): the new model's embeddings of the same items.
        query_labels (`array-like`): class labels of the query items.
        gallery_labels (`array-like`, *optional*): class labels of the gallery items, when the gallery is separate.
        independent (`ModelEmbeddings` or `np.ndarray`, *optional*): an independently trained new model, for the
            update gain and the compatibility tax.
        metrics (`Sequence[str]`, *optional*): metric names (see :class:`RetrievalEvaluator`); ignored when an
            ``evaluator`` is given.
        evaluator (`RetrievalEvaluator`, *optional*): to choose the backend or the research protocol.
        flip_metric (`str`, *optional*): the per-query outcome used for flip rates; defaults to the first ``top<k>``
            metric (``top1`` by default).
        known_results (`dict[str, RetrievalResult]`, *optional*): results already computed with the same evaluator
            and labels, keyed like :attr:`PairReport.results` (e.g. ``"old/old"`` and ``"indep/indep"`` shared by
            several new models); those pairs are not evaluated again.

    >>> import numpy as np
    >>> from bt2_hf.retrieval.compatibility import compare_models
    >>> old = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    >>> new = np.concatenate([old, np.ones((4, 1), dtype=np.float32)], axis=1)  # old block + 1 extra dim
    >>> compare_models(old, new, [0, 0, 1, 1], metrics=["top1"]).results["new/old"].metrics
    {'top1': 1.0}
    """
    evaluator = evaluator or RetrievalEvaluator(metrics=metrics)
    old, new = _as_model(old, "old"), _as_model(new, "new")
    known = dict(known_results or {})
    pairs = {"old/old": (old, old), "new/old": (new, old), "new/new": (new, new)}
    if independent is not None:
        independent = _as_model(independent, "independent")
        pairs["indep/indep"] = (independent, independent)
    results = {
        key: known[key] if key in known else _evaluate(evaluator, query, gallery, query_labels, gallery_labels)
        for key, (query, gallery) in pairs.items()
    }
    names = evaluator.metric_names
    criterion = {name: results["new/old"].metrics[name] > results["old/old"].metrics[name] for name in names}
    gain, tax, notes = {}, {}, {}
    flip_metric = flip_metric or next((n for n in names if evaluator.parsed[n][0] in {"cmc", "recall"}), None)
    if independent is not None:
        # the first rank metric decides whether there is an upgrade at all
        for name in sorted(names, key=lambda n: n != flip_metric):
            old_old, new_old = results["old/old"].metrics[name], results["new/old"].metrics[name]
            indep = results["indep/indep"].metrics[name]
            value, note = update_gain_or_reason(new_old, old_old, indep)
            if flip_metric in notes:
                value, note = None, notes[flip_metric]
            gain[name] = float("nan") if value is None else value
            if note:
                notes[name] = note
            tax[name] = indep - results["new/new"].metrics[name]
        gain = {name: gain[name] for name in names}
    flips = {}
    if flip_metric is not None:
        before = results["old/old"].per_query[flip_metric]
        after = results["new/old"].per_query[flip_metric]
        evaluated = results["old/old"].evaluated
        flips = {"metric": flip_metric, **flip_rates(before[evaluated], after[evaluated])}
    return PairReport(results, criterion, gain, tax, flips, notes)


@dataclass
class CompatibilityMatrix:
    """``C[i][j] = M(query model i, gallery model j)`` for ``j <= i``; entries above the diagonal are NaN.

    Args:
        values (`dict[str, np.ndarray]`): one ``(T, T)`` matrix per metric.
        names (`list[str]`): the model versions, oldest first.
    """

    values: dict[str, np.ndarray]
    names: list[str]

    def average_compatibility(self, metric: str) -> float:
        """AC: the fraction of pairs ``i > j`` with ``C[i][j] > C[j][j]`` (strict; a tie is a failure)."""
        return average_compatibility(self.values[metric])

    def average_accuracy(self, metric: str) -> float:
        """AA: the mean of the lower triangle of ``C``, diagonal included."""
        return average_accuracy(self.values[metric])

    def to_dict(self) -> dict:
        return {
            "names": self.names,
            "matrix": {metric: np.where(np.isnan(m), None, m).tolist() for metric, m in self.values.items()},
            "AC": {metric: self.average_compatibility(metric) for metric in self.values},
            "AA": {metric: self.average_accuracy(metric) for metric in self.values},
        }


def average_compatibility(matrix: np.ndarray) -> float:
    """AC = (2 / (T(T−1))) Σ_{i>j} 1[C[i][j] > C[j][j]]; NaN for a single version.

    Ties count as failures (the criterion is strict), following the empirical criterion of Shen et al.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    versions = matrix.shape[0]
    if versions < 2:
        return float("nan")
    rows, cols = np.tril_indices(versions, k=-1)
    return float(np.mean(matrix[rows, cols] > matrix[cols, cols]))


def average_accuracy(matrix: np.ndarray) -> float:
    """AA = mean of ``C[i][j]`` over ``j <= i`` (the lower triangle including the diagonal)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = np.tril_indices(matrix.shape[0])
    return float(np.mean(matrix[rows, cols]))


def compatibility_matrix(
    models: Sequence,
    query_labels,
    gallery_labels=None,
    *,
    names: Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    evaluator: RetrievalEvaluator | None = None,
) -> CompatibilityMatrix:
    """Evaluate every query model ``i`` against every older-or-equal gallery model ``j <= i``.

    Args:
        models (`Sequence[ModelEmbeddings | np.ndarray]`): the versions, oldest first.
        query_labels (`array-like`): class labels of the query items.
        gallery_labels (`array-like`, *optional*): class labels of a separate gallery.
        names (`Sequence[str]`, *optional*): version names; default ``v1 .. vT``.
        metrics (`Sequence[str]`, *optional*): metric names; ignored when an ``evaluator`` is given.
        evaluator (`RetrievalEvaluator`, *optional*): to choose the backend or the protocol variant.
    """
    evaluator = evaluator or RetrievalEvaluator(metrics=metrics)
    names = list(names) if names is not None else [f"v{i + 1}" for i in range(len(models))]
    if len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models.")
    models = [_as_model(model, name) for model, name in zip(models, names)]
    versions = len(models)
    values = {name: np.full((versions, versions), np.nan) for name in evaluator.metric_names}
    for i in range(versions):
        for j in range(i + 1):
            result = _evaluate(evaluator, models[i], models[j], query_labels, gallery_labels)
            for name in evaluator.metric_names:
                values[name][i, j] = result.metrics[name]
    return CompatibilityMatrix(values, names)
