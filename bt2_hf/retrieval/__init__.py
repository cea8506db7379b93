"""Retrieval evaluation: protocol, k-NN backends, metrics, compatibility, backfill curves (galleries: bt2_hf.galleries).

Everything here works on plain embedding arrays; the model-based helpers (embedding a dataset, searching a gallery
with a model) are thin wrappers. faiss is imported only when a faiss backend or an index is used.
"""

from __future__ import annotations

from .evaluator import DEFAULT_METRICS, RetrievalEvaluator, RetrievalResult, evaluate_retrieval
from .instance_metrics import (
    InstanceRetrievalResult,
    compatibility_matrix_to_dict,
    instance_compatibility_matrix,
    instance_retrieval_metrics,
)
from .knn import FaissFlatKNN, FaissHNSWKNN, FaissIVFKNN, KNNBackend, TorchChunkedKNN, get_backend
from .metrics import average_precision_at_r, average_precision_with_ties, cmc_hits, flip_rates
from .post_hoc import LinearMap, fit_least_squares_map, fit_procrustes_map
from .protocol import GalleryPart, align_widths, l2_normalize, mixed_gallery, truncate

__all__ = [
    "DEFAULT_METRICS",
    "FaissFlatKNN",
    "FaissHNSWKNN",
    "FaissIVFKNN",
    "GalleryPart",
    "InstanceRetrievalResult",
    "KNNBackend",
    "LinearMap",
    "RetrievalEvaluator",
    "RetrievalResult",
    "TorchChunkedKNN",
    "align_widths",
    "average_precision_at_r",
    "average_precision_with_ties",
    "cmc_hits",
    "compatibility_matrix_to_dict",
    "evaluate_retrieval",
    "fit_least_squares_map",
    "fit_procrustes_map",
    "flip_rates",
    "get_backend",
    "instance_compatibility_matrix",
    "instance_retrieval_metrics",
    "l2_normalize",
    "mixed_gallery",
    "truncate",
]
