"""The compatibility rule: may a query model search a gallery, and with which embedding prefix?

A gallery is identified by the fingerprint (and width) of the encoder that wrote it. A query model may search it
when it *is* that encoder, or when its ``compatible_with`` metadata lists that fingerprint; the entry's
``embedding_dim`` is then the prefix of the query embedding to compare (DESIGN §3.1, §3.3). Everything else is refused.
"""

from __future__ import annotations

from typing import Any

from .fingerprint import FINGERPRINT_PREFIX, short_fingerprint


class IncompatibleModelsError(ValueError):
    """Raised when two models (or a model and a gallery) were never made compatible."""


def _describe(name: str | None, fingerprint: str | None) -> str:
    return f"{name or '<unnamed model>'} (fingerprint {short_fingerprint(fingerprint)})"


def same_fingerprint(a: str | None, b: str | None) -> bool:
    """Whether two fingerprints name the same weights; ``"sha256:<hex>"`` and a bare ``"<hex>"`` compare equal."""
    if not a or not b:
        return False
    return a.removeprefix(FINGERPRINT_PREFIX).lower() == b.removeprefix(FINGERPRINT_PREFIX).lower()


def _lineage_summary(query_config: Any) -> str:
    entries = getattr(query_config, "compatible_with", None) or []
    if not entries:
        return "Its compatible_with lineage is empty."
    listed = ", ".join(
        f"{_describe(e.get('name_or_path'), e.get('fingerprint'))} at {e.get('embedding_dim')} dims" for e in entries
    )
    return f"Its compatible_with lineage lists: {listed}."


def compatible_prefix(
    query_config: Any,
    gallery_fingerprint: str | None,
    gallery_dim: int,
    gallery_name: str | None = None,
) -> int:
    """The number of leading query-embedding dimensions to compare with a gallery, or an error.

    Args:
        query_config (`BT2Config`): the query model's config (``fingerprint``, ``embedding_dim``, ``compatible_with``).
        gallery_fingerprint (`str`): fingerprint of the encoder that embedded the gallery.
        gallery_dim (`int`): width of the gallery embeddings.
        gallery_name (`str`, *optional*): the gallery encoder's name, for error messages.

    Returns:
        `int`: the prefix length (equal to ``gallery_dim``).

    Raises:
        `IncompatibleModelsError`: the query model is neither the gallery's encoder nor declares it in
        ``compatible_with``, or the declared width disagrees with the gallery's.
    """
    query_name = getattr(query_config, "name_or_path", None) or getattr(query_config, "_name_or_path", None)
    query = _describe(query_name, getattr(query_config, "fingerprint", None))
    gallery = _describe(gallery_name, gallery_fingerprint)
    if not gallery_fingerprint:
        raise IncompatibleModelsError(
            f"The gallery encoded by {gallery} has no fingerprint, so {query} cannot be checked against it. "
            "Rebuild the gallery with a bt2_hf model saved by `save_pretrained` (which records its fingerprint)."
        )
    if same_fingerprint(getattr(query_config, "fingerprint", None), gallery_fingerprint):
        if query_config.embedding_dim != gallery_dim:
            raise IncompatibleModelsError(
                f"{query} matches the gallery's encoder but the gallery holds {gallery_dim}-d vectors while the model "
                f"embeds {query_config.embedding_dim}-d; the gallery files are inconsistent: rebuild the gallery."
            )
        return int(gallery_dim)
    for entry in getattr(query_config, "compatible_with", None) or []:
        if same_fingerprint(entry.get("fingerprint"), gallery_fingerprint):
            prefix = int(entry["embedding_dim"])
            if prefix != gallery_dim:
                raise IncompatibleModelsError(
                    f"{query} declares compatibility with {gallery} at {prefix} dims, but the gallery holds "
                    f"{gallery_dim}-d vectors. The metadata or the gallery is wrong: re-evaluate the pair and fix "
                    "`compatible_with`, or rebuild the gallery with the declared model."
                )
            if prefix > query_config.embedding_dim:
                raise IncompatibleModelsError(
                    f"{query} ({query_config.embedding_dim}-d) cannot use a {prefix}-d prefix for {gallery}: its "
                    "`compatible_with` metadata is wrong. Re-declare the pair with bt2_hf.hub.declare_compatibility."
                )
            return prefix
    raise IncompatibleModelsError(
        f"{query} is not compatible with the gallery encoded by {gallery}: the gallery's fingerprint is not in the "
        f"query model's `compatible_with` lineage. {_lineage_summary(query_config)} Use the gallery's own encoder (or "
        "a model trained to be backward compatible with it, e.g. with BT², and declared with "
        "bt2_hf.hub.declare_compatibility), or re-embed (backfill) the gallery with the new model."
    )
