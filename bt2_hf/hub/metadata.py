"""Moved: the compatibility metadata rules live in :mod:`bt2_hf.compatibility` (the model layer).

This module re-exports them so that ``from bt2_hf.hub.metadata import ...`` keeps working.
"""

from __future__ import annotations

from ..compatibility import (  # noqa: F401
    CRITERION_RULE,
    PAIR_ORDER,
    CompatibilityMetadataError,
    criterion_outcome,
    declare_compatibility,
    is_fingerprint,
    lineage,
    load_evaluation_results,
    validate_compatibility_metadata,
)
