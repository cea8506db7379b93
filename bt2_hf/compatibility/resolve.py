"""Model-to-gallery resolution: which model may query a gallery, checked with the admission rule beside it.

- :func:`query_model_fingerprint`: the fingerprint a loaded model may claim (its verified one, never its config's word).
- :func:`load_gallery_manifest`: a gallery's encoder, policy and admission log, from a gallery directory, its manifest,
  or the old model itself.
- :func:`resolve_query_model`: load the first candidate the gallery admits (:func:`~.admission.admit_to_gallery`).

The models are imported lazily: this module is read by galleries and the Hub helpers, below ``modeling``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..fingerprint import short_fingerprint
from .admission import AdmissionPolicy, admit_to_gallery
from .schema import IncompatibleModelsError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
GALLERY_KIND = "bt2-gallery"
# A bare manifest dict may spell the encoder's keys either way.
_FINGERPRINT_KEYS = ("fingerprint", "encoder_fingerprint")
_DIM_KEYS = ("embedding_dim", "dimension")
_NAME_KEYS = ("name_or_path", "encoder_name_or_path", "encoder_name")


class LegacyGalleryError(IncompatibleModelsError):
    """A gallery written in the format of bt2_hf's former ``GalleryIndex``: ``bt2 gallery upgrade`` converts it."""


def legacy_gallery_message(location: Any) -> str:
    """The refusal of a gallery in the former ``GalleryIndex`` format, naming the one-time upgrade command."""
    return (
        f"{location} is a gallery in the former bt2_hf index format (one index.faiss, ids in the manifest), which "
        f"this bt2_hf no longer opens. Convert it once, in place, with:\n    bt2 gallery upgrade {location}"
    )


def is_legacy_manifest(manifest: Mapping[str, Any]) -> bool:
    """Whether a manifest was written by the former ``GalleryIndex`` (``encoder_fingerprint`` and ``index_sha256``)."""
    return manifest.get("kind") is None and "encoder_fingerprint" in manifest and "index_sha256" in manifest


def query_model_fingerprint(model) -> str | None:
    """The fingerprint a query or gallery model may claim: the verified one of the weights it holds now.

    A :class:`~bt2_hf.BT2Model` changed in memory since it was loaded or saved (or never saved) has none, so its
    ``config.fingerprint`` is not trusted; other models (duck-typed encoders) are taken at their config's word.

    Raises:
        `FingerprintMismatchError`: the model's weights are not those its ``config.fingerprint`` names.
    """
    recorded = getattr(model.config, "fingerprint", None)
    if not hasattr(model, "verified_fingerprint"):
        return recorded
    verified = model.verified_fingerprint()
    if recorded and verified != recorded:
        from ..fingerprint import FingerprintMismatchError

        raise FingerprintMismatchError(
            f"The model {getattr(model.config, 'name_or_path', '') or '<unnamed>'} is not the checkpoint its "
            f"config.fingerprint {short_fingerprint(recorded)} names: its weights or processor were changed in memory "
            "since it was loaded or saved (or it was loaded with verify_fingerprint=False). Save it with "
            "save_pretrained (a new fingerprint) and use the saved model, or reload the original."
        )
    return verified


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
    """Identify a gallery's encoder as ``{"fingerprint", "embedding_dim", "name_or_path", "revision", "encoder",
    "policy", "admissions", "location"}``.

    Args:
        gallery (`dict`, `FaissGallery`, `str` or `os.PathLike`): a gallery (an object with a ``manifest``: a
            :class:`~bt2_hf.galleries.FaissGallery` or Milvus gallery), its directory or ``manifest.json``, a bare
            manifest dict (``fingerprint``, ``embedding_dim``, ``name_or_path``), or the old model itself (a
            checkpoint directory or a Hub repo id), whose ``config.json`` gives its fingerprint and width.
        revision (`str`, *optional*): the old model's revision when ``gallery`` is a Hub id.
        token (`str` or `bool`, *optional*): Hub token.
        cache_dir (`str` or `os.PathLike`, *optional*): Hub cache directory.
        local_files_only (`bool`, *optional*, defaults to `False`): never reach the network.

    Raises:
        `LegacyGalleryError`: the gallery is in the former ``GalleryIndex`` format (the message names
        ``bt2 gallery upgrade``).
    """
    manifest = getattr(gallery, "manifest", None)
    location = getattr(gallery, "directory", None) or getattr(gallery, "uri", None)
    if manifest is None and isinstance(gallery, Mapping):
        manifest = gallery
    if manifest is None and isinstance(gallery, (str, os.PathLike)):
        path = Path(gallery)
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            path = path / MANIFEST_NAME
        if path.is_file() and path.suffix == ".json" and path.name != "config.json":
            location = path.parent
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"The gallery manifest {path} is not valid JSON ({error}).") from None
    if manifest is not None:
        if is_legacy_manifest(manifest):
            raise LegacyGalleryError(legacy_gallery_message(location or "GALLERY_DIR"))
        if manifest.get("kind") == GALLERY_KIND:
            encoder = dict(manifest.get("encoder") or {})
            fingerprint, dim, name = encoder.get("fingerprint"), manifest.get("dimension"), encoder.get("name_or_path")
        else:
            fingerprint, dim, name = (
                _first(manifest, _FINGERPRINT_KEYS),
                _first(manifest, _DIM_KEYS),
                _first(manifest, _NAME_KEYS),
            )
            encoder = {"fingerprint": fingerprint, "name_or_path": name}
        if fingerprint is None or dim is None:
            raise ValueError(
                "The gallery manifest must give its encoder's fingerprint and width; it has keys "
                f"{sorted(manifest)}. Build the gallery with bt2_hf (`bt2 index build`) so that it records its encoder."
            )
        return {
            "fingerprint": fingerprint,
            "embedding_dim": int(dim),
            "name_or_path": name,
            "revision": manifest.get("revision"),
            "encoder": encoder,
            "policy": AdmissionPolicy.from_dict(manifest.get("policy")),
            "admissions": list(manifest.get("admissions") or []),
            "location": str(location) if location else None,
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
        "encoder": {
            "fingerprint": config.fingerprint,
            "name_or_path": str(gallery),
            "compatible_with": list(config.compatible_with or []),
        },  # fmt: skip
        "policy": AdmissionPolicy(),
        "admissions": [],
        "location": None,
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
    (:func:`bt2_hf.compatibility.admit_to_gallery`: the gallery's encoder itself, the gallery's own measurement
    (``bt2 gallery admit``), or a measured, passing compatibility entry re-judged with the gallery's policy); the
    first admitted one is loaded with ``BT2Model.from_pretrained``
    (which verifies the weights' fingerprint) and checked again.

    Args:
        gallery_manifest_or_old_model_id (`dict`, `FaissGallery`, `str` or `os.PathLike`): the gallery's manifest
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
    >>> from bt2_hf.compatibility import resolve_query_model
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
        return admit_to_gallery(config, gallery["encoder"], dim, allow_unmeasured=allow_unmeasured,
                                policy=gallery["policy"], admissions=gallery["admissions"],
                                gallery_location=gallery["location"])  # fmt: skip

    if not candidates:
        raise ValueError("Give at least one candidate query model (a Hub id, a directory or a loaded BT2Model).")
    reasons = []
    for candidate in candidates:
        source, candidate_revision, label = _candidate_spec(candidate, revision)
        if not isinstance(source, str):  # an already loaded model: what it holds now, not its config's word
            try:
                query_model_fingerprint(source)
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
