"""One compatibility contract, at the model layer: what a ``config.json`` says about older models, and who may search
which gallery.

- :mod:`~bt2_hf.compatibility.schema`: the ``compatible_with`` entry schema (``measured`` / ``inherited`` /
  ``declared``), :func:`validate_compatibility_metadata`, :func:`trained_against` (what training records).
- :mod:`~bt2_hf.compatibility.criterion`: the criterion ``M(new/old) > M(old/old)`` with its margin,
  :func:`load_evaluation_results` (the one results schema: ``PairReport.to_dict()``).
- :mod:`~bt2_hf.compatibility.lineage`: :func:`declare_compatibility` (the entry writer ``bt2 verify`` uses) and
  the lineage closure.
- :mod:`~bt2_hf.compatibility.admission`: :func:`admit_query_model`, the one gallery admission rule.

Measuring a pair (embedding held-out data, running the evaluator) is :func:`bt2_hf.verify.verify_compatibility`,
below the retrieval layer. Everything here needs only the standard library.
"""

from __future__ import annotations

from .admission import (
    Admission,
    AdmissionPolicy,
    admit_query_model,
    admit_to_gallery,
    check_measured,
    compatible_prefix,
    is_measured_compatible,
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
    "admit_query_model",
    "admit_to_gallery",
    "check_measured",
    "canonical_metric",
    "compatible_prefix",
    "criterion_outcome",
    "declare_compatibility",
    "entry_content_hash",
    "entry_status",
    "is_fingerprint",
    "is_measured_compatible",
    "judged_metrics",
    "lineage",
    "load_evaluation_results",
    "ordered_pairs",
    "same_fingerprint",
    "seal_entry",
    "trained_against",
    "validate_compatibility_metadata",
    "verify_command",
]
