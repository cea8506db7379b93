"""Pick and load the query model for a gallery: the one whose compatibility lineage covers the gallery's encoder."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..compatibility import IncompatibleModelsError, admit_query_model
from ..fingerprint import short_fingerprint

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# Manifest keys, bt2_hf.retrieval.index's spelling first, then the generic one.
_FINGERPRINT_KEYS = ("encoder_fingerprint", "fingerprint")
_DIM_KEYS = ("dimension", "embedding_dim")
_NAME_KEYS = ("encoder_name_or_path", "name_or_path", "encoder_name")


def _first(mapping: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((mapping[k] for k in keys if mapping.get(k) is not None), None)


def load_gallery_manifest(
    gallery: Any,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """Identify a gallery's encoder as ``{"fingerprint", "embedding_dim", "name_or_path", "revision"}``.

    Args:
        gallery (`dict`, `GalleryIndex`, `str` or `os.PathLike`): a manifest dict (``fingerprint`` or
            ``encoder_fingerprint``, ``embedding_dim`` or ``dimension``, ``name_or_path`` or
            ``encoder_name_or_path``), an object with a ``manifest`` attribute (``GalleryIndex``), a manifest JSON
            file, a gallery directory holding ``manifest.json``, or the old model itself (a checkpoint directory or a
            Hub repo id), whose ``config.json`` gives its fingerprint and width.
        revision (`str`, *optional*): the old model's revision when ``gallery`` is a Hub id.
        token (`str` or `bool`, *optional*): Hub token.
        cache_dir (`str` or `os.PathLike`, *optional*): Hub cache directory.
        local_files_only (`bool`, *optional*, defaults to `False`): never reach the network.
    """
    manifest = getattr(gallery, "manifest", None)
    if manifest is None and isinstance(gallery, Mapping):
        manifest = gallery
    if manifest is None and isinstance(gallery, (str, os.PathLike)):
        path = Path(gallery)
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            path = path / MANIFEST_NAME
        if path.is_file() and path.suffix == ".json" and path.name != "config.json":
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"The gallery manifest {path} is not valid JSON ({error}).") from None
    if manifest is not None:
        fingerprint, dim = _first(manifest, _FINGERPRINT_KEYS), _first(manifest, _DIM_KEYS)
        if fingerprint is None or dim is None:
            raise ValueError(
                "The gallery manifest must give its encoder's fingerprint ('fingerprint' or 'encoder_fingerprint') and "
                f"width ('embedding_dim' or 'dimension'); it has keys {sorted(manifest)}. Rebuild the gallery with "
                "bt2_hf (GalleryIndex.from_model) so that the manifest records its encoder."
            )
        return {
            "fingerprint": fingerprint,
            "embedding_dim": int(dim),
            "name_or_path": _first(manifest, _NAME_KEYS),
            "revision": manifest.get("revision"),
        }
    from ..configuration_bt2 import BT2Config

    config = BT2Config.from_pretrained(
        str(gallery), revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only
    )
    if not config.fingerprint:
        raise ValueError(
            f"The old model {gallery} has no fingerprint in its config.json; re-save it with save_pretrained."
        )
    return {
        "fingerprint": config.fingerprint,
        "embedding_dim": config.embedding_dim,
        "name_or_path": str(gallery),
        "revision": revision,
    }


def _candidate_spec(candidate: Any, revision: str | None) -> tuple[Any, str | None, str]:
    """(model or id, revision, label) for one candidate: an id, an ``(id, revision)`` pair or a loaded model."""
    if isinstance(candidate, tuple):
        name, candidate_revision = candidate
        return str(name), candidate_revision, f"{name}@{candidate_revision}" if candidate_revision else str(name)
    if hasattr(candidate, "config") and hasattr(candidate, "state_dict"):
        return candidate, None, getattr(candidate.config, "name_or_path", None) or "<loaded model>"
    name = str(candidate)
    return name, revision, f"{name}@{revision}" if revision else name


def resolve_query_model(
    gallery_manifest_or_old_model_id: Any,
    candidates: Sequence[Any],
    *,
    revision: str | None = None,
    old_revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    allow_unmeasured: bool = False,
    **model_kwargs: Any,
) -> tuple[Any, int]:
    """Load the first candidate that may query a gallery, verified, with the embedding prefix to use.

    Each candidate's ``config.json`` is read first (cheap) and checked with the admission rule
    (:func:`bt2_hf.compatibility.admit_query_model`: the gallery's encoder itself, or a measured, passing
    compatibility entry for it or its lineage); the first admitted one is loaded with ``BT2Model.from_pretrained``
    (which verifies the weights' fingerprint) and checked again.

    Args:
        gallery_manifest_or_old_model_id (`dict`, `GalleryIndex`, `str` or `os.PathLike`): the gallery's manifest
            (or its file or directory) or the old model that embedded it (see :func:`load_gallery_manifest`).
        candidates (`Sequence`): query models to try, in order of preference (newest first): Hub ids or directories,
            ``(repo_id, revision)`` pairs, or loaded ``BT2Model``s.
        revision (`str`, *optional*): revision for candidates given as plain ids.
        old_revision (`str`, *optional*): revision of the old model when the gallery is given as its Hub id.
        token (`str` or `bool`, *optional*): Hub token.
        cache_dir (`str` or `os.PathLike`, *optional*): Hub cache directory.
        local_files_only (`bool`, *optional*, defaults to `False`): only use local files and the cache.
        allow_unmeasured (`bool`, *optional*, defaults to `False`): also admit a candidate whose relation to the
            gallery's encoder was never measured (trained against it, or declared); logged as a warning.
        model_kwargs: more arguments for ``BT2Model.from_pretrained``.

    Returns:
        `tuple[BT2Model, int]`: the loaded query model and the prefix length (``model.encode(..., prefix_dim=p)``).

    Raises:
        `bt2_hf.IncompatibleModelsError`: no candidate is admitted; the message lists every candidate with the
        reason and the ``bt2 verify`` command that would measure it.

    Example:

    ```python
    >>> from bt2_hf.hub import resolve_query_model
    >>> model, prefix = resolve_query_model("gallery/manifest.json", ["org/bt2-v3", "org/bt2-v2"])  # doctest: +SKIP
    >>> queries = model.encode(images=images, prefix_dim=prefix)  # doctest: +SKIP
    ```
    """
    from ..configuration_bt2 import BT2Config
    from ..modeling_bt2 import BT2Model

    hub_kwargs = {"token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
    gallery = load_gallery_manifest(gallery_manifest_or_old_model_id, revision=old_revision, **hub_kwargs)
    fingerprint, dim, gallery_name = gallery["fingerprint"], gallery["embedding_dim"], gallery["name_or_path"]

    def admit(config):
        return admit_query_model(config, fingerprint, dim, gallery_name, allow_unmeasured=allow_unmeasured)

    if not candidates:
        raise ValueError("Give at least one candidate query model (a Hub id, a directory or a loaded BT2Model).")
    reasons = []
    for candidate in candidates:
        source, candidate_revision, label = _candidate_spec(candidate, revision)
        if not isinstance(source, str):  # an already loaded model
            try:
                return source, admit(source.config).prefix_dim
            except IncompatibleModelsError as error:
                reasons.append(f"- {label}: {error}")
                continue
        kwargs = {"revision": candidate_revision, **hub_kwargs}
        config = BT2Config.from_pretrained(source, **kwargs)
        config.name_or_path = source  # config-only loading leaves it empty; error messages need the name
        try:
            admit(config)
        except IncompatibleModelsError as error:
            reasons.append(f"- {label}: {error}")
            continue
        model = BT2Model.from_pretrained(source, **kwargs, **model_kwargs)  # verifies the weights' fingerprint
        admission = admit(model.config)
        prefix = admission.prefix_dim
        logger.info(
            "Query model %s searches the gallery of %s (%s) with a %d-d prefix (%s).",
            label,
            gallery_name,
            short_fingerprint(fingerprint),
            prefix,
            admission.basis,
        )
        return model, prefix
    raise IncompatibleModelsError(
        f"None of the candidate query models may search the gallery embedded by {gallery_name or '<unnamed model>'} "
        f"(fingerprint {short_fingerprint(fingerprint)}, {dim}-d):\n"
        + "\n".join(reasons)
        + "\nUse the gallery's own encoder, measure a candidate with `bt2 verify` (commands above), or re-embed "
        "(backfill) the gallery with the new model."
    )
