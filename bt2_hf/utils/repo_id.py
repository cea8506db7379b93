"""Is this string a Hub repo id? (Card metadata such as ``base_model`` and ``datasets`` may hold only those.)"""

from __future__ import annotations

import os
import re
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


# A Hub user or organisation name: letters, digits, "-", "_", "."; no leading/trailing "-" or ".", no "--" or "..".
_NAMESPACE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


def validate_hub_namespace(value: str) -> str:
    """Return ``value`` when it can be the namespace of a Hub repo id (a user or organisation name), else refuse it.

    Args:
        value (`str`): the namespace, e.g. ``"my-org"`` (without ``/`` or a repo name).

    Returns:
        `str`: ``value`` unchanged.

    Raises:
        `ValueError`: naming the value and the characters a namespace may hold (``"bad name/../x"`` is refused).

    Example:

    ```python
    >>> validate_hub_namespace("my-org")
    'my-org'
    ```
    """
    if not isinstance(value, str) or not _NAMESPACE.match(value) or "--" in value or ".." in value:
        raise ValueError(
            f"{value!r} is not a Hub namespace: use a user or organisation name of letters, digits, '-', '_' and '.' "
            "(no '/', no spaces, no '--' or '..', not starting or ending with '-' or '.'), e.g. my-org."
        )
    return value
