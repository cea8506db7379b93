"""Compatibility metadata in ``config.json``: declare it, close the lineage, validate it, read evaluation results.

``config.json`` is the authoritative record (DESIGN §3.3); the model card mirrors it. A config carries its own
``fingerprint`` and a ``compatible_with`` list with one entry per older model whose galleries it may query:

```json
{
  "name_or_path": "org/old-model", "revision": "3f1c…", "fingerprint": "sha256:…",
  "embedding_dim": 128,                  # the prefix of *this* model's embedding to compare with that gallery
  "method": "bt2",
  "metrics": {"old/old": {"top1": 61.2, "top5": 80.3, "mAP": 40.1}, "new/old": {…}, "new/new": {…}},
  "criterion": {"rule": "M(new/old) > M(old/old)", "metric": "top1", "passed": true},
  "via": "org/v2"                        # only for entries inherited through the lineage
}
```

Metrics are percentages, keyed ``"<query>/<gallery>"`` with ``new`` = this model and ``old`` = the entry's model.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REQUIRED_ENTRY_KEYS = ("name_or_path", "fingerprint", "embedding_dim", "method")
OPTIONAL_ENTRY_KEYS = ("revision", "metrics", "criterion", "via")
PAIR_ORDER = ("old/old", "new/old", "new/new")
CRITERION_RULE = "M(new/old) > M(old/old)"
# Canonical spellings of metric names: the evaluator writes lower case, the demo's results.json "mAP".
_METRIC_ALIASES = {"map": "mAP", "map@r": "mAP@R", "top-1": "top1", "top-5": "top5", "r@1": "recall@1"}
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")


class CompatibilityMetadataError(ValueError):
    """The compatibility metadata of a config (``fingerprint`` / ``compatible_with``) is malformed or inconsistent."""


def is_fingerprint(value: Any) -> bool:
    """Whether ``value`` is a bt2_hf fingerprint: ``"sha256:"`` followed by 64 lower-case hex digits."""
    return isinstance(value, str) and bool(_FINGERPRINT.match(value))


def _model_label(config: Any) -> str:
    name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    return repr(name) if name else "this model"


# ------------------------------------------------------------------------------------------------------ validation


def validate_compatibility_metadata(config: Any) -> None:
    """Check a config's ``fingerprint`` and ``compatible_with`` entries, raising on the first problem.

    It is cheap (no I/O, no weights) and runs at the end of ``BT2Config.__init__``, so a ``config.json`` with bad
    metadata is refused when it is read rather than when a gallery is searched.

    Args:
        config (`BT2Config` or any object with ``fingerprint``, ``embedding_dim``, ``compatible_dim`` and
            ``compatible_with``): the config to check.

    Raises:
        `CompatibilityMetadataError`: a missing key, a malformed fingerprint, a prefix wider than the model's
        compatible block, two entries (or the model itself) with the same fingerprint, malformed metrics, or a
        criterion outcome that contradicts the metrics.
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
                f"{label} in the {where} lacks {missing}. Each entry needs {list(REQUIRED_ENTRY_KEYS)}; add entries "
                "with bt2_hf.hub.declare_compatibility(new_config, old_model, ...) rather than by hand."
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
        metrics = entry.get("metrics")
        if metrics is not None:
            _validate_metrics(metrics, f"{label} in the {where}")
        criterion = entry.get("criterion")
        if criterion is not None:
            _validate_criterion(criterion, metrics, f"{label} in the {where}")


def _validate_metrics(metrics: Any, where: str) -> None:
    if not isinstance(metrics, Mapping):
        raise CompatibilityMetadataError(f"The metrics of {where} must be a dict keyed 'query/gallery'.")
    for pair, values in metrics.items():
        if not isinstance(pair, str) or pair.count("/") != 1:
            raise CompatibilityMetadataError(
                f"The metrics of {where} have key {pair!r}; use 'query/gallery' keys such as {list(PAIR_ORDER)}."
            )
        if not isinstance(values, Mapping):
            raise CompatibilityMetadataError(f"The metrics of {where} for {pair!r} must be a dict of metric → number.")
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CompatibilityMetadataError(
                    f"The metrics of {where} give {pair} {metric} = {value!r}; metrics must be finite numbers."
                )


def _validate_criterion(criterion: Any, metrics: Any, where: str) -> None:
    if not isinstance(criterion, Mapping) or not isinstance(criterion.get("passed"), bool):
        raise CompatibilityMetadataError(
            f"The criterion of {where} must be a dict with a boolean 'passed' (and the 'metric' it was judged on)."
        )
    metric = criterion.get("metric", "top1")
    try:
        new_old, old_old = metrics["new/old"][metric], metrics["old/old"][metric]
    except (KeyError, TypeError):
        raise CompatibilityMetadataError(
            f"The criterion of {where} is judged on {metric!r}, but its metrics lack new/old or old/old {metric!r}. "
            "Record the measured metrics with the outcome (declare_compatibility(..., metrics=...) does both)."
        ) from None
    if (new_old > old_old) != criterion["passed"]:
        raise CompatibilityMetadataError(
            f"The criterion of {where} says passed={criterion['passed']}, but its metrics give {metric} new/old = "
            f"{new_old} vs old/old = {old_old} ({CRITERION_RULE} is {new_old > old_old}). Re-derive it from the "
            "metrics (declare_compatibility computes it) instead of editing it by hand."
        )


# ------------------------------------------------------------------------------------------------------ evaluation


def _canonical_metric(name: str) -> str:
    return _METRIC_ALIASES.get(name.lower(), name)


def _canonical_pair(pair: str, method: str | None) -> str:
    query, _, gallery = pair.partition("/")
    rename = {"independent": "indep"}
    if method:
        rename[method] = "new"
    return f"{rename.get(query, query)}/{rename.get(gallery, gallery)}"


def load_evaluation_results(
    results: str | os.PathLike | Mapping[str, Any],
    method: str | None = None,
    unit: str = "auto",
) -> dict[str, dict[str, float]]:
    """Read an evaluation JSON into ``{"<query>/<gallery>": {metric: percent}}`` with canonical names.

    Two layouts are accepted:

    - the demo's ``results.json``: ``{"methods": {"<method>": {"<query>/<gallery>": {"top1": .., "top5": ..,
      "mAP": ..}}}}`` (percent); ``method`` picks one (optional when there is only one). A query or gallery named
      like the method is read as ``new``.
    - a per-pair dict ``{"old/old": {...}, "new/old": {...}, "new/new": {...}}``, or the ``to_dict()`` of
      :class:`bt2_hf.retrieval.compatibility.PairReport` (its ``"results"``).

    Args:
        results (`str`, `os.PathLike` or `dict`): a JSON file or its parsed content.
        method (`str`, *optional*): the method to read from a ``"methods"`` layout.
        unit (`str`, *optional*, defaults to `"auto"`): ``"percent"``, ``"fraction"`` (multiplied by 100) or
            ``"auto"`` (fraction when every value is within [0, 1], which is what the bt2_hf evaluator returns).

    Returns:
        `dict[str, dict[str, float]]`: metrics in percent, metric names ``top1``, ``top5``, ``mAP``, ``mAP@R`` ….
    """
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"No evaluation results at {path}; pass the results.json of an evaluation."
            ) from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(results, Mapping):
        raise ValueError(f"Evaluation results must be a JSON object, got {type(results).__name__}.")
    if "methods" in results:
        methods = results["methods"]
        if not isinstance(methods, Mapping) or not methods:
            raise ValueError("The evaluation results have an empty or malformed 'methods' block.")
        if method is None:
            if len(methods) != 1:
                raise ValueError(
                    f"The evaluation results hold several methods {sorted(methods)}; say which one this model was "
                    "trained with (method=..., or --method on the command line)."
                )
            method = next(iter(methods))
        if method not in methods:
            raise ValueError(f"The evaluation results have no method {method!r}; available: {sorted(methods)}.")
        pairs = methods[method]
    elif "results" in results and isinstance(results["results"], Mapping):
        pairs = results["results"]
    else:
        pairs = results
    parsed: dict[str, dict[str, float]] = {}
    for pair, values in pairs.items():
        if not isinstance(pair, str) or pair.count("/") != 1 or not isinstance(values, Mapping):
            continue  # other top-level keys ("dataset", "criterion", …) are not pair results
        numbers = {
            _canonical_metric(k): float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numbers:
            parsed[_canonical_pair(pair, method)] = numbers
    if not parsed:
        raise ValueError(
            "No '<query>/<gallery>' results found in the evaluation JSON; expected e.g. "
            '{"methods": {"bt2": {"new/old": {"top1": 60.1, "top5": 80.2, "mAP": 35.0}, ...}}}.'
        )
    if unit not in ("auto", "percent", "fraction"):
        raise ValueError(f"unit must be 'auto', 'percent' or 'fraction', got {unit!r}.")
    values = [v for metrics in parsed.values() for v in metrics.values()]
    if unit == "fraction" or (unit == "auto" and all(0.0 <= v <= 1.0 for v in values)):
        parsed = {pair: {k: round(100.0 * v, 4) for k, v in m.items()} for pair, m in parsed.items()}
    return parsed


def criterion_outcome(metrics: Mapping[str, Mapping[str, float]], metric: str = "top1") -> dict[str, Any] | None:
    """The empirical compatibility criterion ``M(new/old) > M(old/old)`` (strict) on ``metric``, or ``None``.

    Args:
        metrics (`dict`): ``{"<query>/<gallery>": {metric: value}}``.
        metric (`str`, *optional*, defaults to `"top1"`): the metric judged.

    Returns:
        `dict` or `None`: ``{"rule", "metric", "passed"}``; ``None`` when new/old or old/old lacks ``metric``.
    """
    metric = _canonical_metric(metric)
    try:
        new_old, old_old = metrics["new/old"][metric], metrics["old/old"][metric]
    except KeyError:
        return None
    return {"rule": CRITERION_RULE, "metric": metric, "passed": bool(new_old > old_old)}


# ------------------------------------------------------------------------------------------------------ declaring


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
    metrics: Mapping[str, Any] | str | os.PathLike | None = None,
    revision: str | None = None,
    name_or_path: str | None = None,
    criterion_metric: str = "top1",
) -> dict[str, Any]:
    """Record in ``new_config`` that it is compatible with an older model, and close the lineage.

    The entry gets the old model's name, revision and fingerprint, the prefix length (the old model's
    ``embedding_dim``, which must equal ``new_config.compatible_dim``), the method, and the measured metrics with the
    criterion's outcome. Then every model the old one was compatible with is inherited at its own (shorter or equal)
    prefix, marked ``via`` the old model: for v3 ← v2 (prefix p2) and v2 ← v1 (prefix p1 ≤ p2), v3 gets v1 at p1.
    Entries already present for the same fingerprint are replaced.

    Args:
        new_config (`BT2Config`): the new model's config, modified in place.
        old_model_or_config (`BT2Model` or `BT2Config`): the old model (its fingerprint is computed from the weights)
            or its config as loaded from a checkpoint (whose ``fingerprint`` was written by ``save_pretrained``).
        method (`str`, *optional*): how compatibility was obtained (``"bt2"``, ``"bct"`` …); defaults to
            ``new_config.training["method"]``.
        metrics (`dict`, `str` or `os.PathLike`, *optional*): the measured old/old, new/old, new/new metrics in any
            layout :func:`load_evaluation_results` reads.
        revision (`str`, *optional*): the old model's Hub revision (a commit sha pins it best); defaults to the commit
            the old config was downloaded from, when known.
        name_or_path (`str`, *optional*): the old model's Hub id or path; defaults to ``old_config.name_or_path``.
        criterion_metric (`str`, *optional*, defaults to `"top1"`): the metric the criterion is judged on.

    Returns:
        `dict`: the direct entry that was added.

    Raises:
        `bt2_hf.IncompatibleModelsError`: the old model's width differs from the new model's compatible prefix.
        `CompatibilityMetadataError`: the old model has no valid fingerprint (save it first) or the result is invalid.

    Example:

    ```python
    >>> from bt2_hf import BT2Config, BT2Model
    >>> from bt2_hf.hub import declare_compatibility
    >>> old = BT2Model(BT2Config(backbone_type="small_cnn", embedding_dim=16))
    >>> new_config = BT2Config(head_type="basis_transformation", feature_dim=16, old_embedding_dim=16, extra_dim=4)
    >>> entry = declare_compatibility(new_config, old, method="bt2", name_or_path="org/old", revision="main")
    >>> entry["embedding_dim"], new_config.compatible_with[0]["name_or_path"]
    (16, 'org/old')

    ```
    """
    from ..compatibility import IncompatibleModelsError

    old_config, old_fingerprint = _old_identity(old_model_or_config)
    old_name = name_or_path or getattr(old_config, "name_or_path", None) or getattr(old_config, "_name_or_path", None)
    new_name = getattr(new_config, "name_or_path", None) or "the new model"
    if not old_name:
        raise CompatibilityMetadataError(
            "The old model has no name or path; pass name_or_path='org/old-model' (its Hub id) to declare_compatibility."
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
            f"{new_name} cannot be declared compatible with {old_name!r}: the old model embeds {old_dim}-d vectors but "
            f"the new model's compatible prefix is {compatible_dim}-d (embedding_dim={new_config.embedding_dim}). "
            f"Train the new model against this old model (BT²: old_embedding_dim={old_dim}) or declare it against "
            f"the old model it was trained with."
        )
    method = method or (getattr(new_config, "training", None) or {}).get("method")
    if not method:
        raise CompatibilityMetadataError(
            "Say how compatibility was obtained: method='bt2' (or 'bct', …), or set new_config.training['method']."
        )
    if getattr(new_config, "fingerprint", None) == old_fingerprint:
        # The new model was initialised from the old checkpoint and still carries its fingerprint; it is stale (the
        # weights changed in training) and save_pretrained recomputes it.
        logger.warning(
            "%s carries the old model's fingerprint; dropping it (save_pretrained recomputes it).", new_name
        )
        new_config.fingerprint = None
    revision = revision or getattr(old_config, "_commit_hash", None)
    entry: dict[str, Any] = {
        "name_or_path": str(old_name),
        "revision": revision,
        "fingerprint": old_fingerprint,
        "embedding_dim": old_dim,
        "method": method,
    }
    if metrics is not None:
        parsed = load_evaluation_results(metrics, method=method)
        entry["metrics"] = {pair: parsed[pair] for pair in _ordered_pairs(parsed)}
        outcome = criterion_outcome(parsed, criterion_metric)
        if outcome is not None:
            entry["criterion"] = outcome
    entries = [e for e in new_config.compatible_with if e.get("fingerprint") != old_fingerprint]
    entries.append(entry)
    for inherited in getattr(old_config, "compatible_with", None) or []:
        if inherited.get("fingerprint") in {e.get("fingerprint") for e in entries}:
            continue  # a direct (measured) entry wins over an inherited one
        if inherited.get("fingerprint") == getattr(new_config, "fingerprint", None):
            continue
        if int(inherited["embedding_dim"]) > old_dim:  # cannot happen for valid metadata; never widen a prefix
            logger.warning("Skipping %s: its prefix is wider than %s's.", inherited.get("name_or_path"), old_name)
            continue
        closed = {k: copy.deepcopy(v) for k, v in inherited.items() if k not in ("metrics", "criterion", "via")}
        # The new model reaches that gallery through the old model's space; nothing was measured for this pair.
        closed["via"] = str(old_name)
        entries.append(closed)
    previous = new_config.compatible_with
    new_config.compatible_with = entries
    try:
        validate_compatibility_metadata(new_config)
    except CompatibilityMetadataError:
        new_config.compatible_with = previous
        raise
    logger.info(
        "Declared %s compatible with %s at a %d-d prefix (%d entries in its lineage).",
        new_name,
        old_name,
        old_dim,
        len(entries),
    )
    return entry


def _ordered_pairs(metrics: Mapping[str, Any]) -> list[str]:
    return [p for p in PAIR_ORDER if p in metrics] + sorted(p for p in metrics if p not in PAIR_ORDER)


def lineage(config: Any) -> list[dict[str, Any]]:
    """The models whose galleries ``config``'s model may query, oldest prefix first: ``compatible_with`` entries
    sorted by prefix length (a readable view for cards and error messages)."""
    return sorted(
        getattr(config, "compatible_with", None) or [], key=lambda e: (e["embedding_dim"], e["name_or_path"])
    )
