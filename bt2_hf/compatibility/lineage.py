"""Writing ``compatible_with`` entries and closing the lineage (v3 ← v2 ← v1 gives v3 an entry for v1)."""

from __future__ import annotations

import copy
import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .admission import is_measured_compatible
from .criterion import DEFAULT_CRITERION_METRICS, criterion_outcome, load_evaluation_results
from .schema import (
    DATASET_KEYS,
    CompatibilityMetadataError,
    IncompatibleModelsError,
    is_fingerprint,
    seal_entry,
    validate_compatibility_metadata,
)

logger = logging.getLogger(__name__)


def _bt2_version() -> str:
    from .. import __version__  # lazy: bt2_hf/__init__ imports this package

    return __version__


def _old_identity(old_model_or_config: Any) -> tuple[Any, str | None]:
    """(config, fingerprint) of the old model; a loaded model's fingerprint is recomputed from its weights."""
    if hasattr(old_model_or_config, "state_dict") and hasattr(old_model_or_config, "config"):
        from ..fingerprint import fingerprint_model

        return old_model_or_config.config, fingerprint_model(old_model_or_config)
    return old_model_or_config, getattr(old_model_or_config, "fingerprint", None)


def declare_compatibility(
    new_config: Any,
    old_model_or_config: Any,
    *,
    method: str | None = None,
    metrics: Mapping[str, Any] | str | os.PathLike | Any | None = None,
    dataset: Mapping[str, Any] | None = None,
    revision: str | None = None,
    name_or_path: str | None = None,
    criterion_metrics: str | Sequence[str] = DEFAULT_CRITERION_METRICS,
    query_fingerprint: str | None = None,
    replaced: Mapping[str, Any] | None = None,
    local_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write the ``compatible_with`` entry of ``new_config`` for an older model, and close the lineage.

    This is the writer that :func:`bt2_hf.verify.verify_compatibility` calls with what it measured; use ``bt2
    verify`` (or ``verify_compatibility``) rather than calling it with numbers of your own. With ``metrics`` and
    ``dataset`` the entry is ``"measured"`` (metrics, criterion and margin, data set, date, bt2_hf version); without
    them it is ``"declared"``, which galleries refuse unless told ``allow_unmeasured=True``.

    The entry gets the old model's name, revision and fingerprint, the prefix length (the old model's
    ``embedding_dim``, which must equal ``new_config.compatible_dim``) and the method. Then every model the old one
    lists is inherited at its own (shorter or equal) prefix, marked ``via`` the old model, with ``link_passed`` saying
    whether the old model was itself admitted to that gallery by measurement. Entries already present for the same
    fingerprint are replaced.

    Args:
        new_config (`BT2Config`): the new model's config, modified in place.
        old_model_or_config (`BT2Model` or `BT2Config`): the old model (its fingerprint is computed from the weights)
            or its config as loaded from a checkpoint (whose ``fingerprint`` was written by ``save_pretrained``).
        method (`str`, *optional*): how the new model was trained (``"bt2"``, ``"bct"`` …); defaults to
            ``new_config.training["method"]``.
        metrics (`PairReport`, `dict`, `str` or `os.PathLike`, *optional*): the measured results, in the one results
            schema (``PairReport.to_dict()``; see :func:`load_evaluation_results`).
        dataset (`dict`, *optional*): the held-out data measured on: ``{"name", "split", "size", "sha256"}``;
            required with ``metrics``.
        revision (`str`, *optional*): the old model's Hub revision; defaults to the commit the old config came from.
        name_or_path (`str`, *optional*): the old model's Hub id or path; defaults to ``old_config.name_or_path``.
        criterion_metrics (`str` or `Sequence[str]`, *optional*, defaults to ``("top1", "mAP")``): judged metrics.
        query_fingerprint (`str`, *optional*): the fingerprint of the new model that was measured (its verified
            one); defaults to ``new_config.fingerprint``. A measured entry records it and its own content hash
            (``entry_sha256``), so admission refuses it in another model's config or once edited.
        replaced (`dict`, *optional*): the earlier measurement this one deliberately replaces (``bt2 verify
            --replace``), recorded in the entry.
        local_path (`str` or `os.PathLike`, *optional*): the local checkpoint of the old model that was measured, when
            ``name_or_path`` names a Hub repo it is yet to be pushed to; cards and refusals then name the local copy,
            so the commands they print run before the push.

    Returns:
        `dict`: the direct entry that was written.

    Raises:
        `bt2_hf.IncompatibleModelsError`: the old model's width differs from the new model's compatible prefix.
        `CompatibilityMetadataError`: the old model has no valid fingerprint, metrics come without their data set,
        or the result is invalid.
    """
    old_config, old_fingerprint, old_name = _checked_old_model(new_config, old_model_or_config, name_or_path)
    old_dim = int(old_config.embedding_dim)
    method = method or (getattr(new_config, "training", None) or {}).get("method")
    if not method:
        raise CompatibilityMetadataError(
            "Say how the new model was trained: method='bt2' (or 'bct', …), or set new_config.training['method']."
        )
    new_name = getattr(new_config, "name_or_path", None) or "the new model"
    if getattr(new_config, "fingerprint", None) == old_fingerprint:
        # The new model was initialised from the old checkpoint and still carries its fingerprint; it is stale (the
        # weights changed in training) and save_pretrained recomputes it.
        logger.warning(
            "%s carries the old model's fingerprint; dropping it (save_pretrained recomputes it).", new_name
        )
        new_config.fingerprint = None
    entry: dict[str, Any] = {
        "name_or_path": str(old_name),
        "revision": revision or getattr(old_config, "_commit_hash", None),
        "fingerprint": old_fingerprint,
        "embedding_dim": old_dim,
        "method": method,
        "status": "declared",
    }
    if local_path is not None and str(local_path) != str(old_name):
        entry["local_path"] = str(local_path)
    if metrics is not None:
        _add_measurement(entry, new_config, metrics, dataset, criterion_metrics, query_fingerprint, replaced)
    entries = [e for e in new_config.compatible_with if e.get("fingerprint") != old_fingerprint]
    entries.append(entry)
    entries = _close_lineage(entries, new_config, old_config, old_fingerprint, old_name)
    previous = new_config.compatible_with
    new_config.compatible_with = entries
    try:
        validate_compatibility_metadata(new_config)
    except CompatibilityMetadataError:
        new_config.compatible_with = previous
        raise
    logger.info(
        "Entry %s → %s (%s) at a %d-d prefix set in the config in memory (%d entries in its lineage).",
        new_name, old_name, entry["status"], old_dim, len(entries),
    )  # fmt: skip
    return entry


def _checked_old_model(new_config: Any, old_model_or_config: Any, name_or_path: str | None) -> tuple[Any, str, str]:
    """The old model's config, fingerprint and name, checked: it has both, and its width is the new model's prefix."""
    old_config, old_fingerprint = _old_identity(old_model_or_config)
    old_name = name_or_path or getattr(old_config, "name_or_path", None) or getattr(old_config, "_name_or_path", None)
    new_name = getattr(new_config, "name_or_path", None) or "the new model"
    if not old_name:
        raise CompatibilityMetadataError(
            "The old model has no name or path; pass name_or_path='org/old-model' (its Hub id)."
        )
    if not is_fingerprint(old_fingerprint):
        raise CompatibilityMetadataError(
            f"The old model {old_name!r} has no valid fingerprint ({old_fingerprint!r}). Pass the loaded model, or "
            "save it with save_pretrained and pass the config loaded from that checkpoint."
        )
    old_dim = int(old_config.embedding_dim)
    compatible_dim = int(getattr(new_config, "compatible_dim", None) or new_config.embedding_dim)
    if old_dim != compatible_dim:
        raise IncompatibleModelsError(
            f"{new_name} cannot be compatible with {old_name!r}: the old model embeds {old_dim}-d vectors but the new "
            f"model's compatible prefix is {compatible_dim}-d (embedding_dim={new_config.embedding_dim}). Train the "
            f"new model against this old model (BT²: old_embedding_dim={old_dim}) or verify it against the old model "
            "it was trained with."
        )
    return old_config, old_fingerprint, str(old_name)


def _add_measurement(entry, new_config, metrics, dataset, criterion_metrics, query_fingerprint, replaced) -> None:
    """Make ``entry`` a sealed ``"measured"`` entry: the parsed results, the criterion's outcome, the data set, the
    date and version, and the measured model's fingerprint (the binding galleries check)."""
    if not isinstance(dataset, Mapping) or any(dataset.get(key) in (None, "") for key in DATASET_KEYS):
        raise CompatibilityMetadataError(
            f"Metrics were given without the held-out data they were measured on; pass dataset= with "
            f"{list(DATASET_KEYS)} (bt2 verify records it)."
        )
    if hasattr(metrics, "to_dict") and not isinstance(metrics, Mapping):
        metrics = metrics.to_dict()
    parsed = load_evaluation_results(metrics)
    outcome = criterion_outcome(parsed, criterion_metrics)
    if outcome is None:
        raise CompatibilityMetadataError(
            f"The results lack new/old or old/old {list(criterion_metrics)}: the criterion cannot be judged."
        )
    entry.update(
        status="measured",
        metrics=parsed,
        criterion=outcome,
        dataset={key: dataset[key] for key in (*DATASET_KEYS, *sorted(set(dataset) - set(DATASET_KEYS)))},
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        bt2_hf_version=_bt2_version(),
        query_fingerprint=query_fingerprint or getattr(new_config, "fingerprint", None),
    )
    if replaced is not None:
        entry["replaced"] = dict(replaced)
    if not is_fingerprint(entry["query_fingerprint"]):
        # Never bound later (save_pretrained would bind a copied entry to whatever model it is pasted into):
        # galleries refuse an unbound entry, and say so.
        entry.pop("query_fingerprint")
        logger.warning(
            "%s has no fingerprint, so the measured entry for %s is not bound to it and galleries will refuse it; "
            "save the model first and measure the saved checkpoint with `bt2 verify`.",
            getattr(new_config, "name_or_path", None) or "the new model", entry["name_or_path"],
        )  # fmt: skip
    seal_entry(entry)


def _close_lineage(entries, new_config, old_config, old_fingerprint: str, old_name: str) -> list[dict[str, Any]]:
    """``entries`` plus every model the old one lists, inherited at its own prefix ``via`` the old model (a direct
    entry wins over an inherited one; ``link_passed`` says whether the old model was admitted there by measurement)."""
    old_dim = int(old_config.embedding_dim)
    direct = {e.get("fingerprint") for e in entries if not e.get("via")}
    for inherited in getattr(old_config, "compatible_with", None) or []:
        fingerprint = inherited.get("fingerprint")
        if fingerprint in direct or fingerprint == getattr(new_config, "fingerprint", None):
            continue  # a direct entry wins over an inherited one
        if int(inherited["embedding_dim"]) > old_dim:  # cannot happen for valid metadata; never widen a prefix
            logger.warning("Skipping %s: its prefix is wider than %s's.", inherited.get("name_or_path"), old_name)
            continue
        keep = ("name_or_path", "revision", "fingerprint", "embedding_dim", "method")
        closed = {k: copy.deepcopy(inherited[k]) for k in keep if k in inherited}
        # The new model reaches that gallery through the old model's space; nothing was measured for this pair.
        closed.update(
            status="inherited",
            via=str(old_name),
            via_fingerprint=old_fingerprint,
            link_passed=is_measured_compatible(old_config, fingerprint),
        )
        entries = [e for e in entries if e.get("fingerprint") != fingerprint] + [closed]
    return entries


def lineage(config: Any) -> list[dict[str, Any]]:
    """The models whose galleries ``config``'s model lists, oldest prefix first: ``compatible_with`` entries sorted
    by prefix length (a readable view for cards and error messages)."""
    return sorted(
        getattr(config, "compatible_with", None) or [], key=lambda e: (e["embedding_dim"], e["name_or_path"])
    )
