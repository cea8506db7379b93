"""Hub support: model cards, push and pull, and the choice of a query model for a gallery.

- the compatibility metadata rules live in :mod:`bt2_hf.compatibility` (re-exported here for convenience).
- :mod:`~bt2_hf.hub.card`: :func:`render_model_card`, :func:`create_or_update_model_card`, :func:`merge_model_card`.
- :mod:`~bt2_hf.hub.push`: :func:`push_to_hub`.
- :func:`resolve_query_model`, :func:`load_gallery_manifest`: re-exported from :mod:`bt2_hf.compatibility.resolve`.

Pulling is ``BT2Model.from_pretrained(repo_id, revision=..., token=..., cache_dir=...)`` or
``AutoModel.from_pretrained`` after ``import bt2_hf``.
"""

from __future__ import annotations

from ..compatibility import (
    CompatibilityMetadataError,
    criterion_outcome,
    declare_compatibility,
    is_fingerprint,
    lineage,
    load_evaluation_results,
    load_gallery_manifest,
    resolve_query_model,
    validate_compatibility_metadata,
)
from .card import create_or_update_model_card, merge_model_card, pipeline_tag_for, render_model_card
from .push import HubUnreachableError, push_to_hub

__all__ = [
    "CompatibilityMetadataError",
    "HubUnreachableError",
    "create_or_update_model_card",
    "criterion_outcome",
    "declare_compatibility",
    "is_fingerprint",
    "lineage",
    "load_evaluation_results",
    "load_gallery_manifest",
    "merge_model_card",
    "pipeline_tag_for",
    "push_to_hub",
    "render_model_card",
    "resolve_query_model",
    "validate_compatibility_metadata",
]
