"""The compatibility entry schema of ``config.json`` and its validation (DESIGN §3.3).

A config carries its own ``fingerprint`` and a ``compatible_with`` list, one entry per older model whose galleries it
may query. Every entry has a ``status``:

- ``"measured"``: written by :func:`bt2_hf.verify.verify_compatibility` (or a pipeline that calls it). It holds the
  metrics it measured, the criterion's outcome and margin, the held-out data it measured on, the date and the
  bt2_hf version::

      {
        "name_or_path": "org/old-model", "revision": "3f1c…", "fingerprint": "sha256:…",
        "embedding_dim": 128,            # the prefix of *this* model's embedding to compare with that gallery
        "method": "bt2", "status": "measured",
        "metrics": {"old/old": {"top1": 61.2, "top5": 80.3, "mAP": 40.1}, "new/old": {…}, "new/new": {…}},
        "criterion": {"rule": "M(new/old) > M(old/old)", "metric": "top1", "metrics": ["top1", "mAP"],
                      "passed": true, "margin": {"top1": 1.3, "mAP": 0.4}},
        "dataset": {"name": "fashion_mnist", "split": "test", "size": 10000, "sha256": "…"},
        "date": "2026-11-30T13:00:00+00:00", "bt2_hf_version": "0.1.0",
        "query_fingerprint": "sha256:…",  # the new (query) model that was measured
        "entry_sha256": "…"               # sha256 of the entry's other keys (canonical JSON)
      }

  The entry is bound to what it measured: ``query_fingerprint`` (this model), ``fingerprint`` (the old model),
  the data set's hash and size, and its own content hash, so admission refuses an entry copied into another model's
  config or edited after it was written (see :mod:`bt2_hf.compatibility.admission`, which also re-judges the
  criterion from the metrics with the gallery's own policy). The content hash is not a signature: whoever can write
  a config can recompute it, so only a measurement the gallery makes itself (``bt2 gallery admit``) resists a forger
  who edits the numbers too.

- ``"inherited"``: closed through the lineage (``via`` the intermediate model, ``via_fingerprint`` its fingerprint);
  ``link_passed`` says whether the intermediate model was itself admitted to that gallery by measurement.
- ``"declared"``: a relation someone stated without a measurement on a named split. Galleries refuse it unless the
  caller overrides with ``allow_unmeasured=True``.

Metrics are percentages keyed ``"<query>/<gallery>"`` with ``new`` = this model and ``old`` = the entry's model.
Training never writes entries: it records ``config.training["trained_against"]`` (see :func:`trained_against`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from ..fingerprint import FINGERPRINT_PREFIX

logger = logging.getLogger(__name__)

REQUIRED_ENTRY_KEYS = ("name_or_path", "fingerprint", "embedding_dim", "method")
OPTIONAL_ENTRY_KEYS = (
    "revision",
    "status",
    "metrics",
    "criterion",
    "dataset",
    "date",
    "bt2_hf_version",
    "via",
    "via_fingerprint",
    "link_passed",
    "query_fingerprint",
    "entry_sha256",
    "replaced",
    # the local checkpoint measured when name_or_path is the Hub id it is to be pushed to (not on the Hub yet)
    "local_path",
)
ENTRY_HASH_KEY = "entry_sha256"
STATUSES = ("measured", "inherited", "declared")
DATASET_KEYS = ("name", "split", "size", "sha256")
PAIR_ORDER = ("old/old", "new/old", "new/new", "indep/indep")
CRITERION_RULE = "M(new/old) > M(old/old)"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")


class CompatibilityMetadataError(ValueError):
    """The compatibility metadata of a config (``fingerprint`` / ``compatible_with``) is malformed or inconsistent."""


class IncompatibleModelsError(ValueError):
    """Raised when a query model may not search a gallery (never measured compatible, or measured incompatible)."""


def is_fingerprint(value: Any) -> bool:
    """Whether ``value`` is a bt2_hf fingerprint: ``"sha256:"`` followed by 64 lower-case hex digits."""
    return isinstance(value, str) and bool(_FINGERPRINT.match(value))


def same_fingerprint(a: str | None, b: str | None) -> bool:
    """Whether two fingerprints name the same weights; ``"sha256:<hex>"`` and a bare ``"<hex>"`` compare equal."""
    if not a or not b:
        return False
    return a.removeprefix(FINGERPRINT_PREFIX).lower() == b.removeprefix(FINGERPRINT_PREFIX).lower()


def entry_content_hash(entry: Mapping[str, Any]) -> str:
    """sha256 of a ``compatible_with`` entry without its ``entry_sha256``, over canonical JSON (sorted keys, no
    spaces): any edit of a key or value after :func:`seal_entry` changes it."""
    content = {k: v for k, v in entry.items() if k != ENTRY_HASH_KEY}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Record ``entry``'s content hash in it (``entry_sha256``) and return it; ``bt2 verify`` seals what it writes."""
    entry[ENTRY_HASH_KEY] = entry_content_hash(entry)
    return entry


def entry_status(entry: Mapping[str, Any]) -> str:
    """The entry's ``status``; entries written before statuses existed are ``inherited`` (with ``via``) or
    ``declared`` (everything else: nothing says on which data they were measured)."""
    status = entry.get("status")
    if status:
        return status
    return "inherited" if entry.get("via") else "declared"


def _model_label(config: Any) -> str:
    name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return repr(name) if name else "this model"


def validate_compatibility_metadata(config: Any) -> None:
    """Check a config's ``fingerprint``, ``compatible_with`` entries and ``training["trained_against"]``.

    It is cheap (no I/O, no weights) and runs at the end of ``BT2Config.__init__``, so a ``config.json`` with bad
    metadata is refused when it is read rather than when a gallery is searched.

    Args:
        config (`BT2Config` or any object with ``fingerprint``, ``embedding_dim``, ``compatible_dim`` and
            ``compatible_with``): the config to check.

    Raises:
        `CompatibilityMetadataError`: a missing key, a malformed fingerprint, a prefix wider than the model's
        compatible block, two entries (or the model itself) with the same fingerprint, malformed metrics, a measured
        entry without its data set, or a criterion outcome that contradicts the metrics.
    """
    where = f"config of {_model_label(config)}"
    own = getattr(config, "fingerprint", None)
    if own is not None and not is_fingerprint(own):
        raise CompatibilityMetadataError(
            f"The {where} has fingerprint {own!r}, which is not 'sha256:<64 hex digits>'. Remove it and re-save the "
            "model with save_pretrained, which computes it from the weights."
        )
    entries = getattr(config, "compatible_with", None) or []
    if not isinstance(entries, list):
        raise CompatibilityMetadataError(
            f"The {where} has compatible_with of type {type(entries).__name__}; it must be a list of dicts."
        )
    embedding_dim = int(getattr(config, "embedding_dim", 0) or 0)
    compatible_dim = int(getattr(config, "compatible_dim", None) or embedding_dim)
    seen: dict[str, str] = {}
    for position, entry in enumerate(entries):
        label = f"compatible_with[{position}]"
        if not isinstance(entry, Mapping):
            raise CompatibilityMetadataError(f"{label} in the {where} is {type(entry).__name__}, not a dict.")
        name = entry.get("name_or_path")
        label = f"{label} ({name!r})" if name else label
        missing = [key for key in REQUIRED_ENTRY_KEYS if entry.get(key) in (None, "")]
        if missing:
            raise CompatibilityMetadataError(
                f"{label} in the {where} lacks {missing}. Each entry needs {list(REQUIRED_ENTRY_KEYS)}; measure the "
                "pair with `bt2 verify NEW --old OLD --data DATA` (bt2_hf.verify.verify_compatibility), which writes "
                "the entry, rather than editing config.json by hand."
            )
        fingerprint = entry["fingerprint"]
        if not is_fingerprint(fingerprint):
            raise CompatibilityMetadataError(
                f"{label} in the {where} has fingerprint {fingerprint!r}, which is not 'sha256:<64 hex digits>'. "
                "Copy it from the old model's config.json (written by save_pretrained)."
            )
        prefix = entry["embedding_dim"]
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix <= 0:
            raise CompatibilityMetadataError(f"{label} in the {where} has embedding_dim={prefix!r}; need an int > 0.")
        if prefix > compatible_dim:
            raise CompatibilityMetadataError(
                f"{label} in the {where} asks for a {prefix}-d prefix, but the model's compatible block is only "
                f"{compatible_dim}-d (embedding_dim={embedding_dim}). A model can only be compatible with an older "
                "model whose width fits its compatible prefix: fix the entry or train with old_embedding_dim="
                f"{prefix}."
            )
        revision = entry.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise CompatibilityMetadataError(
                f"{label} in the {where} has revision={revision!r}; use a branch, tag or commit sha string (or null)."
            )
        if own is not None and fingerprint == own:
            raise CompatibilityMetadataError(
                f"{label} in the {where} lists the model itself (same fingerprint); a model is always compatible "
                "with its own galleries, remove the entry."
            )
        if fingerprint in seen:
            raise CompatibilityMetadataError(
                f"{label} in the {where} repeats the fingerprint of {seen[fingerprint]!r}; keep one entry per older "
                "model."
            )
        seen[fingerprint] = name
        unknown = set(entry) - set(REQUIRED_ENTRY_KEYS) - set(OPTIONAL_ENTRY_KEYS)
        if unknown:
            logger.debug("%s in the %s has extra keys %s (kept as they are).", label, where, sorted(unknown))
        status = entry_status(entry)
        if status not in STATUSES:
            raise CompatibilityMetadataError(
                f"{label} in the {where} has status={status!r}; it must be one of {list(STATUSES)}."
            )
        metrics = entry.get("metrics")
        if metrics is not None:
            _validate_metrics(metrics, f"{label} in the {where}")
        criterion = entry.get("criterion")
        if criterion is not None:
            _validate_criterion(criterion, metrics, f"{label} in the {where}")
        if status == "measured":
            _validate_measured(entry, f"{label} in the {where}")
        if status == "inherited" and not entry.get("via"):
            raise CompatibilityMetadataError(
                f"{label} in the {where} is inherited but does not say through which model ('via')."
            )
    trained_against = (getattr(config, "training", None) or {}).get("trained_against")
    if trained_against is not None:
        _validate_trained_against(trained_against, where)


def _validate_measured(entry: Mapping[str, Any], where: str) -> None:
    if entry.get("metrics") is None or entry.get("criterion") is None:
        raise CompatibilityMetadataError(
            f"{where} says status='measured' but lacks its metrics or criterion. Measured entries are written by "
            "`bt2 verify`; re-run it."
        )
    dataset = entry.get("dataset")
    if not isinstance(dataset, Mapping) or any(dataset.get(key) in (None, "") for key in DATASET_KEYS):
        raise CompatibilityMetadataError(
            f"{where} says status='measured' but does not name the held-out data it was measured on (dataset with "
            f"{list(DATASET_KEYS)}). Re-run `bt2 verify`, which records it."
        )


def _validate_metrics(metrics: Any, where: str) -> None:
    if not isinstance(metrics, Mapping):
        raise CompatibilityMetadataError(f"The metrics of {where} must be a dict keyed 'query/gallery'.")
    for pair, values in metrics.items():
        if not isinstance(pair, str) or pair.count("/") != 1:
            raise CompatibilityMetadataError(
                f"The metrics of {where} have key {pair!r}; use 'query/gallery' keys such as {list(PAIR_ORDER[:3])}."
            )
        if not isinstance(values, Mapping):
            raise CompatibilityMetadataError(f"The metrics of {where} for {pair!r} must be a dict of metric → number.")
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CompatibilityMetadataError(
                    f"The metrics of {where} give {pair} {metric} = {value!r}; metrics must be finite numbers."
                )


def judged_metrics(criterion: Mapping[str, Any]) -> list[str]:
    """The metrics a criterion was judged on: ``criterion["metrics"]``, or the single ``criterion["metric"]``."""
    judged = criterion.get("metrics")
    if judged:
        return list(judged)
    return [criterion.get("metric", "top1")]


def _validate_criterion(criterion: Any, metrics: Any, where: str) -> None:
    if not isinstance(criterion, Mapping) or not isinstance(criterion.get("passed"), bool):
        raise CompatibilityMetadataError(
            f"The criterion of {where} must be a dict with a boolean 'passed' (and the 'metric' it was judged on)."
        )
    holds = []
    for metric in judged_metrics(criterion):
        try:
            new_old, old_old = metrics["new/old"][metric], metrics["old/old"][metric]
        except (KeyError, TypeError):
            raise CompatibilityMetadataError(
                f"The criterion of {where} is judged on {metric!r}, but its metrics lack new/old or old/old "
                f"{metric!r}. Record the measured metrics with the outcome (`bt2 verify` does both)."
            ) from None
        holds.append((metric, new_old, old_old, new_old > old_old))
    if all(h for *_, h in holds) != criterion["passed"]:
        detail = ", ".join(f"{m} new/old = {n} vs old/old = {o}" for m, n, o, _ in holds)
        raise CompatibilityMetadataError(
            f"The criterion of {where} says passed={criterion['passed']}, but its metrics give {detail} "
            f"({CRITERION_RULE} must hold for every judged metric). Re-derive it from the metrics (`bt2 verify` "
            "computes it) instead of editing it by hand."
        )


def _validate_trained_against(trained_against: Any, where: str) -> None:
    if not isinstance(trained_against, Mapping):
        raise CompatibilityMetadataError(f"training.trained_against in the {where} must be a dict.")
    fingerprint = trained_against.get("fingerprint")
    if fingerprint is not None and not is_fingerprint(fingerprint):
        raise CompatibilityMetadataError(
            f"training.trained_against in the {where} has fingerprint {fingerprint!r}, which is not "
            "'sha256:<64 hex digits>'."
        )
    prefix = trained_against.get("prefix_dim")
    if prefix is not None and (isinstance(prefix, bool) or not isinstance(prefix, int) or prefix <= 0):
        raise CompatibilityMetadataError(
            f"training.trained_against in the {where} has prefix_dim={prefix!r}; need an int > 0."
        )


def trained_against(name_or_path: str, fingerprint: str | None, prefix_dim: int, revision: str | None = None) -> dict:
    """What training records about the old model it trained against (never a compatibility claim).

    Args:
        name_or_path (`str`): the old model's Hub id or directory.
        fingerprint (`str`): its weights' fingerprint.
        prefix_dim (`int`): its width: the prefix of the new embedding that was trained to match it.
        revision (`str`, *optional*): its Hub revision.

    Returns:
        `dict`: ``{"name_or_path", "revision", "fingerprint", "prefix_dim"}`` for ``config.training["trained_against"]``.
    """
    return {"name_or_path": str(name_or_path), "revision": revision, "fingerprint": fingerprint,
            "prefix_dim": int(prefix_dim)}  # fmt: skip
