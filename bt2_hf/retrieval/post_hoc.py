"""Post-hoc transformations into an old embedding space: the FCT / Procrustes family of baselines.

Instead of training a new model to be compatible, a learned map sends the embeddings of an independently trained new
model into the old space after the fact. Fitted on training pairs ``(x_i, y_i)`` (a new embedding and the old
embedding of the same item, e.g. a caption's text embedding and the old model's embedding of its image):

- :func:`fit_least_squares_map`: the affine map ``x ↦ x W + b`` minimising ``Σ ||x_i W + b − y_i||²`` (ridge-
  regularised for stability);
- :func:`fit_procrustes_map`: the orthogonal Procrustes map ``x ↦ x Q``, ``Q`` with orthonormal columns
  (``Qᵀ Q = I``) maximising ``Σ <x_i Q, y_i>``: a rotation (a partial isometry when the widths differ), which keeps
  the new space's geometry and only turns it towards the old one.

Both work on unit-normalised rows (the retrieval protocol's cosine), so what is fitted is a direction map. The result
is a :class:`LinearMap` whose :meth:`~LinearMap.apply` maps (and re-normalises) new embeddings. The closed forms are
:mod:`bt2_hf.adapters`' (whose modules are the adapters a query model carries); this is their numpy view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearMap:
    """An affine map ``x ↦ normalise(x W + b)`` from a new embedding space into an old one.

    Args:
        weight (`np.ndarray` of shape `(new_dim, old_dim)`): ``W``.
        bias (`np.ndarray` of shape `(old_dim,)`): ``b`` (zeros for Procrustes).
        kind (`str`): ``"least_squares"`` or ``"procrustes"``.
    """

    weight: np.ndarray
    bias: np.ndarray
    kind: str

    @property
    def input_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.weight.shape[1])

    def apply(self, embeddings, normalize: bool = True) -> np.ndarray:
        """Map ``embeddings`` (rows) into the old space; unit-norm rows unless ``normalize=False``."""
        x = _as_rows(embeddings, "embeddings", normalize=True)
        if x.shape[1] != self.input_dim:
            raise ValueError(
                f"The map was fitted on {self.input_dim}-d embeddings; got {x.shape[1]}-d ones. Map embeddings of the "
                "model the map was fitted on."
            )
        mapped = x @ self.weight + self.bias
        return _normalize(mapped) if normalize else mapped


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _as_rows(values, name: str, normalize: bool) -> np.ndarray:
    from ..adapters import checked_rows

    array = checked_rows(values, name)
    return _normalize(array) if normalize else array


def _training_pairs(new_embeddings, old_embeddings) -> tuple[np.ndarray, np.ndarray]:
    from ..adapters import paired_rows

    return paired_rows(new_embeddings, old_embeddings)


def fit_least_squares_map(new_embeddings, old_embeddings, ridge: float = 1e-3) -> LinearMap:
    """The affine least-squares map from unit-normalised new embeddings to unit-normalised old ones.

    Args:
        new_embeddings (`np.ndarray` of shape `(N, new_dim)`): the new model's embeddings of the training items.
        old_embeddings (`np.ndarray` of shape `(N, old_dim)`): the old embeddings of the same items (row ``i`` pairs
            with row ``i``).
        ridge (`float`, *optional*, defaults to 1e-3): L2 penalty on ``W`` (not on ``b``), relative to ``N``; keeps the
            solve well posed when ``N`` is small or the embeddings are low-rank.

    Returns:
        :class:`LinearMap` with ``kind="least_squares"``.
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be a number ≥ 0; got {ridge}.")
    from ..adapters import reduced_rank_regression

    x, y = _training_pairs(new_embeddings, old_embeddings)
    weight, bias = reduced_rank_regression(x, y, rank=None, ridge=ridge)
    return LinearMap(weight=weight, bias=bias, kind="least_squares")


def fit_procrustes_map(new_embeddings, old_embeddings) -> LinearMap:
    """The orthogonal Procrustes map from unit-normalised new embeddings to unit-normalised old ones.

    ``Q = U Vᵀ`` from the thin SVD ``Xᵀ Y = U Σ Vᵀ`` maximises ``trace(Qᵀ Xᵀ Y)`` over ``Q`` with orthonormal columns
    (when ``new_dim ≥ old_dim``) or rows (when ``new_dim < old_dim``). With equal widths ``Q`` is orthogonal, and
    when the old embeddings are an exact rotation of the new ones it recovers that rotation.

    Args:
        new_embeddings (`np.ndarray` of shape `(N, new_dim)`): the new model's embeddings of the training items.
        old_embeddings (`np.ndarray` of shape `(N, old_dim)`): the old embeddings of the same items.

    Returns:
        :class:`LinearMap` with ``kind="procrustes"`` and a zero bias.
    """
    from ..adapters import procrustes_rotation

    x, y = _training_pairs(new_embeddings, old_embeddings)
    return LinearMap(weight=procrustes_rotation(x, y), bias=np.zeros(y.shape[1]), kind="procrustes")
