"""One compatibility contract, at the model layer: what a ``config.json`` says about older models, and who may search
which gallery.

- :mod:`~bt2_hf.compatibility.schema`: the ``compatible_with`` entry schema (``measured`` / ``inherited`` /
  ``declared``), :func:`validate_compatibility_metadata`, :func:`trained_against` (what training records).
- :mod:`~bt2_hf.compatibility.criterion`: the criterion ``M(new/old) > M(old/old)`` with its margin,
  :func:`load_evaluation_results` (the one results schema: ``PairReport.to_dict()``).
- :mod:`~bt2_hf.compatibility.lineage`: :func:`declare_compatibility` (the entry writer ``bt2 verify`` uses) and
  the lineage closure.
- :mod:`~bt2_hf.compatibility.admission`: :func:`admit_query_model`, the one gallery admission rule, and the
  gallery owner's :class:`AdmissionPolicy`.
- :mod:`~bt2_hf.compatibility.resolve`: model-to-gallery resolution (:func:`resolve_query_model`,
  :func:`load_gallery_manifest`, :func:`query_model_fingerprint`); it loads models lazily.

Measuring a pair (embedding held-out data, running the evaluator) is :func:`bt2_hf.verify.verify_compatibility`,
below the retrieval layer. Everything here but :mod:`.resolve` needs only the standard library.
"""

from __future__ import annotations

from .admission import (
    Admission,
    AdmissionPolicy,
    admit_query_model,
    admit_to_gallery,
    check_measured,
    compatible_prefix,
    gate_entry,
    is_measured_compatible,
    judge_metrics,
    verify_command,
)
from .criterion import (
    DEFAULT_CRITERION_METRICS,
    canonical_metric,
    criterion_outcome,
    load_evaluation_results,
    ordered_pairs,
)
from .lineage import declare_compatibility, lineage
from .resolve import (
    LegacyGalleryError,
    is_legacy_manifest,
    legacy_gallery_message,
    load_gallery_manifest,
    query_model_fingerprint,
    resolve_query_model,
)
from .schema import (
    CRITERION_RULE,
    DATASET_KEYS,
    PAIR_ORDER,
    CompatibilityMetadataError,
    IncompatibleModelsError,
    entry_content_hash,
    entry_status,
    is_fingerprint,
    judged_metrics,
    same_fingerprint,
    seal_entry,
    trained_against,
    validate_compatibility_metadata,
)

__all__ = [
    "CRITERION_RULE",
    "DATASET_KEYS",
    "DEFAULT_CRITERION_METRICS",
    "PAIR_ORDER",
    "Admission",
    "AdmissionPolicy",
    "CompatibilityMetadataError",
    "IncompatibleModelsError",
    "LegacyGalleryError",
    "admit_query_model",
    "admit_to_gallery",
    "check_measured",
    "canonical_metric",
    "compatible_prefix",
    "criterion_outcome",
    "declare_compatibility",
    "entry_content_hash",
    "entry_status",
    "gate_entry",
    "is_fingerprint",
    "is_legacy_manifest",
    "is_measured_compatible",
    "judge_metrics",
    "judged_metrics",
    "legacy_gallery_message",
    "lineage",
    "load_evaluation_results",
    "load_gallery_manifest",
    "ordered_pairs",
    "query_model_fingerprint",
    "resolve_query_model",
    "same_fingerprint",
    "seal_entry",
    "trained_against",
    "validate_compatibility_metadata",
    "verify_command",
]
