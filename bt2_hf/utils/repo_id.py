"""Is this string a Hub repo id? (Card metadata such as ``base_model`` and ``datasets`` may hold only those.)"""

from __future__ import annotations

import os
from typing import Any


def hub_id_or_none(value: Any) -> str | None:
    """``value`` when it is a Hub repo id (``name`` or ``namespace/name``, ``hf-hub:`` prefix removed) and not an
    existing local path; otherwise ``None``. Card metadata may hold only repo ids."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or not value or os.path.exists(value):
        return None
    candidate = value.removeprefix("hf-hub:")
    if candidate.startswith((".", "/", "~")) or "\\" in candidate:
        return None
    try:
        validate_repo_id(candidate)
    except HFValidationError:
        return None
    return candidate
