"""The admission rule: may query model Q search a gallery embedded by G, and with which embedding prefix?

This is the one place that decides it (galleries, :func:`~bt2_hf.compatibility.resolve_query_model` and
``bt2 index`` call :func:`admit_query_model` / :func:`admit_to_gallery`). Q is admitted when

1. Q *is* G (same fingerprint): the whole embedding;
0. (before rules 2–5) the gallery measured Q itself on its own probe set (``bt2 gallery admit``): the newest entry of
   the gallery's admission log for Q's fingerprint decides, re-judged with the gallery's policy. A passing one
   admits Q; a failing one refuses Q whatever Q's config claims. With ``AdmissionPolicy(require_gate=True)`` only
   rules 1 and 0 admit: the gallery trusts no config at all;
2. Q's ``compatible_with`` has a **measured, passing** entry for G (written by ``bt2 verify``): that entry's prefix;
3. Q reaches G through its lineage: an ``inherited`` entry for G ``via`` V, where Q's own entry for V is measured and
   passing and V was itself admitted to G (``link_passed``).

A gallery's manifest also records its encoder's own ``compatible_with`` entries, and :func:`admit_to_gallery` uses
them for cross-modal and sideways searches (an old image model's queries over a text tower's gallery, a new image
tower's queries over a text gallery): Q is admitted on G's vectors cut to a shared prefix when

4. G's entry for Q is measured and passing (G was trained into Q's space): Q's embedding against G's first dims;
5. G has a measured, passing entry for a model A, and Q is admitted to A's galleries by rules 1–3: both live in A's
   space, compared on A's width.

A measured entry counts only when it is bound to the query model and re-judged by the gallery (:func:`check_measured`):
its ``query_fingerprint`` is the query model's (verified) fingerprint, so an entry copied from another model's config
is refused; its ``entry_sha256`` matches its content, so an entry edited after ``bt2 verify`` wrote it is refused;
and the criterion is judged again from its recorded metrics with the gallery's :class:`AdmissionPolicy` (which metrics,
minimum margin, minimum held-out size), never with the entry's own ``criterion`` (its ``metrics`` and ``passed``).

Everything else is refused with an error naming both models and the ``bt2 verify`` command that would measure the
pair. An adapted query model (``config.adapter``: a new model plus a post-hoc map into G's space, ``bt2 adapt``) is
admitted only by rules 0–2: measured (by the gallery, or by ``bt2 verify``) and passing; ``allow_unmeasured`` never
admits it. A relation that is known but unmeasured (a ``declared`` entry, an inherited one with an unmeasured link, or only
``training.trained_against``) is admitted with ``allow_unmeasured=True``: an explicit override that is logged and
recorded in the admission (and in search results). A measured, *failing* entry is refused even then: the
measurement says the new model's queries are worse than the old model's on that gallery.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fingerprint import short_fingerprint
from .criterion import DEFAULT_CRITERION_METRICS, canonical_metric
from .schema import (
    ENTRY_HASH_KEY,
    IncompatibleModelsError,
    entry_content_hash,
    entry_status,
    same_fingerprint,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmissionPolicy:
    """The gallery owner's rule for measured entries: what a measurement must show for a query model to be admitted.

    Args:
        required_metrics (`tuple[str]`, *optional*, defaults to ``("top1", "mAP")``): ``M(new/old) − M(old/old)``
            must exceed ``min_margin`` on every one of them; an entry that lacks one is refused.
        min_margin (`float`, *optional*, defaults to 0.0): the margin each required metric must exceed, in points.
        min_size (`int`, *optional*, defaults to 0): the fewest held-out items a measurement may have used.
        require_gate (`bool`, *optional*, defaults to `False`): admit a model other than the gallery's encoder only
            on the gallery's own measurement (``bt2 gallery admit``), never on a ``compatible_with`` entry of its
            config.
    """

    required_metrics: tuple[str, ...] = DEFAULT_CRITERION_METRICS
    min_margin: float = 0.0
    min_size: int = 0
    require_gate: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AdmissionPolicy:
        """A policy from a gallery manifest's ``policy`` (``None``: the default policy)."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError(f"an admission policy must be a dict, got {type(values).__name__}")
        unknown = set(values) - {"required_metrics", "min_margin", "min_size", "require_gate"}
        if unknown:
            raise ValueError(f"unknown admission policy keys {sorted(unknown)}")
        metrics = values.get("required_metrics", DEFAULT_CRITERION_METRICS)
        if isinstance(metrics, str) or not metrics or not all(isinstance(m, str) for m in metrics):
            raise ValueError(f"required_metrics must be a non-empty list of metric names, got {metrics!r}")
        margin, size = values.get("min_margin", 0.0), values.get("min_size", 0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise ValueError(f"min_margin must be a number of points, got {margin!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"min_size must be an int >= 0, got {size!r}")
        require_gate = values.get("require_gate", False)
        if not isinstance(require_gate, bool):
            raise ValueError(f"require_gate must be true or false, got {require_gate!r}")
        return cls(tuple(canonical_metric(m) for m in metrics), float(margin), size, require_gate)

    def to_dict(self) -> dict[str, Any]:
        return {"required_metrics": list(self.required_metrics), "min_margin": self.min_margin,
                "min_size": self.min_size, "require_gate": self.require_gate}  # fmt: skip


def judge_metrics(metrics: Mapping[str, Any], size: Any, policy: AdmissionPolicy | None = None) -> str | None:
    """Why recorded metrics do not pass the gallery's policy, or ``None`` when they do.

    Args:
        metrics (`dict`): ``{"old/old": {metric: percent}, "new/old": {...}}``.
        size (`int`): how many held-out items were measured.
        policy (:class:`AdmissionPolicy`, *optional*): the gallery's rule (default: top-1 and mAP, margin > 0).
    """
    policy = policy or AdmissionPolicy()
    if isinstance(size, bool) or not isinstance(size, int) or size < policy.min_size:
        return f"it was measured on {size} held-out items; the gallery's policy needs at least {policy.min_size}"
    metrics = metrics or {}
    failing, missing = [], []
    for metric in policy.required_metrics:
        try:
            new_old, old_old = float(metrics["new/old"][metric]), float(metrics["old/old"][metric])
        except (KeyError, TypeError, ValueError):
            missing.append(metric)
            continue
        if not new_old - old_old > policy.min_margin:
            failing.append(f"{metric} new→old {new_old:.2f} vs old→old {old_old:.2f}")
    if missing:
        return (f"the entry has no new/old and old/old {missing}; the gallery's policy judges "
                f"{list(policy.required_metrics)} (an entry judged on fewer metrics does not count)")  # fmt: skip
    if failing:
        return (f"re-judged with the gallery's policy (every one of {list(policy.required_metrics)} must beat "
                f"old→old by more than {policy.min_margin:g} points), the criterion FAILED: {'; '.join(failing)}")  # fmt: skip
    return None


def check_measured(
    entry: Mapping[str, Any], query_fingerprint: str | None, policy: AdmissionPolicy | None = None
) -> str | None:
    """Why a measured entry does not admit its query model to the entry's gallery, or ``None`` when it does.

    Checked in this order: the entry names the query model it measured (``query_fingerprint``, equal to
    ``query_fingerprint`` given: the query model's verified fingerprint); its content hash matches; its data set
    is large enough; and, re-judged from the recorded metrics with ``policy`` (never the entry's own criterion),
    ``M(new/old) − M(old/old) > min_margin`` on every required metric.
    """
    policy = policy or AdmissionPolicy()
    measured_query = entry.get("query_fingerprint")
    if not measured_query:
        return ("the entry does not record which query model it measured (written by an older bt2_hf, or by "
                "hand); re-run `bt2 verify`, which binds the entry to the model")  # fmt: skip
    if not same_fingerprint(measured_query, query_fingerprint):
        return (f"the entry was measured on another query model (fingerprint {short_fingerprint(measured_query)}, "
                f"this model is {short_fingerprint(query_fingerprint)}): it was copied from another model's config")  # fmt: skip
    recorded_hash = entry.get(ENTRY_HASH_KEY)
    try:
        actual_hash = entry_content_hash(entry)
    except (TypeError, ValueError):
        actual_hash = None
    if recorded_hash != actual_hash:
        return ("the entry's content hash does not match its content: it was edited after `bt2 verify` wrote it "
                "(or written by hand)")  # fmt: skip
    return judge_metrics(entry.get("metrics") or {}, (entry.get("dataset") or {}).get("size"), policy)


def gate_entry(
    admissions: Sequence[Mapping[str, Any]] | None, query_fingerprint: str | None, encoder_fingerprint: str | None
) -> Mapping[str, Any] | None:
    """The newest entry of a gallery's admission log for this query model and this encoder (``None``: never
    measured at the gate). Entries are written by :func:`bt2_hf.galleries.gate.admit_candidate`."""
    for entry in reversed(list(admissions or [])):
        if same_fingerprint(entry.get("query_fingerprint"), query_fingerprint) and same_fingerprint(
            entry.get("encoder_fingerprint"), encoder_fingerprint
        ):
            return entry
    return None


def _evidence(entry: Mapping[str, Any]) -> str:
    dataset = entry.get("dataset") or {}
    return (f"{dataset.get('name')}:{dataset.get('split')} ({dataset.get('size')} items, data sha256 "
            f"{str(dataset.get('sha256'))[:12]}, measured {entry.get('date')}, entry "
            f"{str(entry.get(ENTRY_HASH_KEY))[:12]})")  # fmt: skip


@dataclass
class Admission:
    """Why a query model may search a gallery.

    Args:
        prefix_dim (`int`): leading query-embedding dimensions to compare (then re-normalise).
        basis (`str`): ``"same_model"``, ``"measured"``, ``"lineage"``, ``"unmeasured_override"``,
            ``"gallery_encoder_measured"`` or ``"shared_ancestor"``.
        query (`str`): the query model, as named in messages.
        gallery (`str`): the gallery's encoder, as named in messages.
        overridden (`bool`): admitted only because ``allow_unmeasured=True`` was passed.
        entry (`dict`, *optional*): the ``compatible_with`` entry (or ``trained_against`` record) it rests on.
        gallery_prefix_dim (`int`, *optional*): compare with only the leading dims of the gallery's vectors (rules 4
            and 5 of the module docstring); ``None``: the whole gallery vector.
        evidence (`str`, *optional*): which measurement it used (data set, split, size, date, entry hash).
    """

    prefix_dim: int
    basis: str
    query: str
    gallery: str
    overridden: bool = False
    entry: dict | None = None
    gallery_prefix_dim: int | None = None
    evidence: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Field by field: ``dataclasses.asdict`` recursed through every field and cost more than the rest of a served
        # search's bookkeeping. ``entry`` is the one mutable field: copied, as asdict copied it.
        return {"prefix_dim": self.prefix_dim, "basis": self.basis, "query": self.query, "gallery": self.gallery,
                "overridden": self.overridden, "entry": None if self.entry is None else copy.deepcopy(self.entry),
                "gallery_prefix_dim": self.gallery_prefix_dim, "evidence": self.evidence}  # fmt: skip


def _name(config: Any) -> str | None:
    return getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None) or None


def _describe(name: str | None, fingerprint: str | None) -> str:
    return f"{name or '<unnamed model>'} (fingerprint {short_fingerprint(fingerprint)})"


def verify_command(query_name: str | None, gallery_name: str | None, independent: str | None = None) -> str:
    """The ``bt2 verify`` command that measures whether ``query_name`` may search ``gallery_name``'s galleries."""
    command = f"bt2 verify {query_name or 'NEW_MODEL'} --old {gallery_name or 'OLD_MODEL'} --data HELD_OUT_DATA"
    command += " --split test"
    if independent:
        command += f" --independent {independent}"
    return command


def _runnable_old_name(gallery_name: str | None, record: Mapping[str, Any] | None) -> str | None:
    """The old model's name for a printed command: its local copy when the record names a repo not yet pushed."""
    if record:
        for candidate in (record.get("local_path"), record.get("name_or_path")):
            # a name_or_path that is a directory here (a local reference) runs as printed; a Hub id may not exist yet
            if candidate and (Path(str(candidate)) / "config.json").is_file():
                return str(candidate)
    return gallery_name


def _find_entry(config: Any, fingerprint: str) -> dict | None:
    return next(
        (
            e
            for e in getattr(config, "compatible_with", None) or []
            if same_fingerprint(e.get("fingerprint"), fingerprint)
        ),
        None,
    )


def _measured_passing(
    entry: Mapping[str, Any] | None, query_fingerprint: str | None, policy: AdmissionPolicy | None = None
) -> bool:
    return (
        bool(entry) and entry_status(entry) == "measured" and check_measured(entry, query_fingerprint, policy) is None
    )


def is_measured_compatible(config: Any, gallery_fingerprint: str, policy: AdmissionPolicy | None = None) -> bool:
    """Whether ``config``'s model is admitted to ``gallery_fingerprint``'s galleries by measurement alone (rules 1–3
    of the module docstring; no override). Used to close lineages: an inherited entry records it as ``link_passed``."""
    if same_fingerprint(getattr(config, "fingerprint", None), gallery_fingerprint):
        return True
    entry = _find_entry(config, gallery_fingerprint)
    if entry is None:
        return False
    status = entry_status(entry)
    own = getattr(config, "fingerprint", None)
    if status == "measured":
        return _measured_passing(entry, own, policy)
    if status == "inherited":
        via = _find_entry(config, entry.get("via_fingerprint") or "") if entry.get("via_fingerprint") else None
        return bool(entry.get("link_passed")) and _measured_passing(via, own, policy)
    return False


def _width_checked(prefix: int, query_config: Any, gallery_dim: int, query: str, gallery: str) -> int:
    if prefix != gallery_dim:
        raise IncompatibleModelsError(
            f"{query} is recorded as compatible with {gallery} at {prefix} dims, but the gallery holds "
            f"{gallery_dim}-d vectors. The metadata or the gallery is wrong: rebuild the gallery with that model, or "
            f"re-measure the pair ({verify_command(None, None)})."
        )
    if prefix > int(query_config.embedding_dim):
        raise IncompatibleModelsError(
            f"{query} ({query_config.embedding_dim}-d) cannot use a {prefix}-d prefix for {gallery}: its metadata is "
            "wrong. Re-measure the pair with `bt2 verify`."
        )
    return prefix


def _failing_detail(entry: Mapping[str, Any], policy: AdmissionPolicy | None = None) -> str:
    metrics = entry.get("metrics") or {}
    parts = []
    for metric in (policy or AdmissionPolicy()).required_metrics:
        try:
            parts.append(
                f"{metric} new→old {metrics['new/old'][metric]:.2f} vs old→old {metrics['old/old'][metric]:.2f}"
            )
        except (KeyError, TypeError):
            continue
    dataset = entry.get("dataset") or {}
    where = f" on {dataset.get('name')}:{dataset.get('split')} ({dataset.get('size')} items)" if dataset else ""
    return "; ".join(parts) + where


def admit_query_model(
    query_config: Any,
    gallery_fingerprint: str | None,
    gallery_dim: int,
    gallery_name: str | None = None,
    *,
    allow_unmeasured: bool = False,
    policy: AdmissionPolicy | None = None,
    admissions: Sequence[Mapping[str, Any]] | None = None,
    gallery_location: str | None = None,
) -> Admission:
    """Decide whether a query model may search a gallery, and with which prefix (the rule of this module).

    Args:
        query_config (`BT2Config`): the query model's config (``fingerprint``, ``embedding_dim``, ``compatible_with``,
            ``training``).
        gallery_fingerprint (`str`): fingerprint of the encoder that embedded the gallery (its manifest has it).
        gallery_dim (`int`): width of the gallery embeddings.
        gallery_name (`str`, *optional*): the gallery encoder's name, for messages and the verify command.
        allow_unmeasured (`bool`, *optional*, defaults to `False`): admit a known but unmeasured relation (a declared
            entry, an unmeasured lineage link, or a model only trained against the gallery's encoder). The override
            is logged as a warning and recorded in the returned :class:`Admission` (``overridden=True``).
        policy (:class:`AdmissionPolicy`, *optional*): the gallery's rule for measured entries (defaults: top-1 and
            mAP, margin > 0, any size). ``query_config.fingerprint`` must be the query model's verified fingerprint
            (``BT2Model.from_pretrained`` verifies it; galleries check ``verified_fingerprint()``).
        admissions (`list[dict]`, *optional*): the gallery's own admission log (its manifest's ``admissions``,
            written by ``bt2 gallery admit``); its newest entry for the query model decides before any config entry.
        gallery_location (`str`, *optional*): the gallery's directory, for the ``bt2 gallery admit`` command in
            messages.

    Returns:
        :class:`Admission`: the prefix length and the grounds.

    Raises:
        `IncompatibleModelsError`: the pair was never measured (without the override), was measured and failed, or
        the models are unrelated; the message names both models and gives the ``bt2 verify`` command to run.

    Example:

    ```python
    >>> from types import SimpleNamespace
    >>> from bt2_hf.compatibility import admit_query_model
    >>> old = SimpleNamespace(fingerprint="sha256:" + "a" * 64, embedding_dim=16, compatible_with=[], training={})
    >>> admit_query_model(old, old.fingerprint, 16, "org/old").basis
    'same_model'
    ```
    """
    query_name = _name(query_config)
    query = _describe(query_name, getattr(query_config, "fingerprint", None))
    gallery = _describe(gallery_name, gallery_fingerprint)
    command = verify_command(query_name, gallery_name)
    if not gallery_fingerprint:
        raise IncompatibleModelsError(
            f"The gallery encoded by {gallery} has no fingerprint, so {query} cannot be checked against it. "
            "Rebuild the gallery with a bt2_hf model saved by `save_pretrained` (which records its fingerprint)."
        )
    if same_fingerprint(getattr(query_config, "fingerprint", None), gallery_fingerprint):
        if int(query_config.embedding_dim) != gallery_dim:
            raise IncompatibleModelsError(
                f"{query} matches the gallery's encoder but the gallery holds {gallery_dim}-d vectors while the model "
                f"embeds {query_config.embedding_dim}-d; the gallery files are inconsistent: rebuild the gallery."
            )
        return Admission(int(gallery_dim), "same_model", query, gallery)

    policy = policy or AdmissionPolicy()
    own = getattr(query_config, "fingerprint", None)
    admit_command = f"bt2 gallery admit {gallery_location or 'GALLERY'} {query_name or 'NEW_MODEL'}"
    measured_here = gate_entry(admissions, own, gallery_fingerprint)
    if measured_here is not None:
        # The gallery's own measurement outranks anything the model's config says, passing or failing.
        return _admit_on_gallery_measurement(measured_here, query_config, gallery_dim, query, gallery, policy)
    if policy.require_gate:
        raise IncompatibleModelsError(
            f"{query} may not search the gallery of {gallery}: the gallery's policy admits other models only on its "
            f"own measurement, and it has not measured this one. Measure it at the gallery's gate with:\n"
            f"    {admit_command}"
        )

    entry = _find_entry(query_config, gallery_fingerprint)
    trained = (getattr(query_config, "training", None) or {}).get("trained_against") or {}
    known_old = (
        entry
        if entry is not None
        else trained
        if same_fingerprint(trained.get("fingerprint"), gallery_fingerprint)
        else None
    )
    command = verify_command(query_name, _runnable_old_name(gallery_name, known_old))
    unmeasured_reason = None
    if entry is not None:
        prefix = _width_checked(int(entry["embedding_dim"]), query_config, gallery_dim, query, gallery)
        status = entry_status(entry)
        if status == "measured":
            problem = check_measured(entry, own, policy)
            if problem is None:
                evidence = _evidence(entry)
                logger.info("%s admitted to the gallery of %s on the measurement %s.", query, gallery, evidence)
                return Admission(prefix, "measured", query, gallery, entry=dict(entry), evidence=evidence)
            if "FAILED" in problem:
                raise IncompatibleModelsError(
                    f"{query} may not search the gallery of {gallery}: compatibility was measured and the criterion "
                    f"M(new→old) > M(old→old) FAILED ({_failing_detail(entry, policy)}). Its queries would do worse "
                    "than the old model's own: keep querying with the old model, or re-embed (backfill) the gallery "
                    f"with the new model. After retraining, measure again with:\n    {command}"
                )
            raise IncompatibleModelsError(
                f"{query} may not search the gallery of {gallery}: its measured compatible_with entry for it is not "
                f"accepted: {problem}. Measure the pair with:\n    {command}"
            )
        if status == "inherited" and is_measured_compatible(query_config, gallery_fingerprint, policy):
            via = _find_entry(query_config, entry.get("via_fingerprint") or "")
            return Admission(prefix, "lineage", query, gallery, entry=dict(entry), evidence=via and _evidence(via))
        if status == "inherited":
            unmeasured_reason = (
                f"it reaches {gallery} only through {entry.get('via')!r}, and that link was not measured as passing"
            )
        else:
            unmeasured_reason = "its compatible_with entry for it was declared, not measured on a named held-out split"
        admitted_entry = dict(entry)
    else:
        if not same_fingerprint(trained.get("fingerprint"), gallery_fingerprint):
            raise IncompatibleModelsError(
                f"{query} may not search the gallery embedded by {gallery}: the models are unrelated (the query model "
                f"was not trained against it and has no compatible_with entry for it). {_lineage_summary(query_config)} "
                "Use the gallery's own encoder, re-embed (backfill) the gallery with the new model, or, if the new "
                f"model was trained to be backward compatible with it, measure the pair with:\n    {command}"
            )
        prefix = _width_checked(
            int(trained.get("prefix_dim") or gallery_dim), query_config, gallery_dim, query, gallery
        )
        unmeasured_reason = "it was trained against it, but the pair was never measured (`bt2 verify`)"
        admitted_entry = {"trained_against": dict(trained)}
    _refuse_unmeasured_adapter(query_config, query, gallery, command)
    if not allow_unmeasured:
        raise IncompatibleModelsError(
            f"{query} may not search the gallery embedded by {gallery}: {unmeasured_reason}. Compatibility is "
            f"measured, never assumed. Measure it with:\n    {command}\nor pass allow_unmeasured=True "
            "(--allow_unmeasured) to search anyway; the override is logged and recorded in the results."
        )
    logger.warning(
        "allow_unmeasured: %s searches the gallery of %s although %s (prefix %d).", query, gallery, unmeasured_reason,
        prefix,
    )  # fmt: skip
    return Admission(prefix, "unmeasured_override", query, gallery, overridden=True, entry=admitted_entry)


def _admit_on_gallery_measurement(
    measured_here: dict, query_config: Any, gallery_dim: int, query: str, gallery: str, policy: AdmissionPolicy
) -> Admission:
    """Admit (or refuse) a query model on the gallery's own measurement of it at its gate."""
    evidence = (f"the gallery's probe set ({measured_here.get('size')} items, measured {measured_here.get('date')}, "
                f"probe sha256 {str(measured_here.get('probe_sha256'))[:12]})")  # fmt: skip
    problem = judge_metrics(measured_here.get("metrics") or {}, measured_here.get("size"), policy)
    if problem is None:
        prefix = _width_checked(int(measured_here["prefix_dim"]), query_config, gallery_dim, query, gallery)
        logger.info("%s admitted to the gallery of %s by its own measurement on %s.", query, gallery, evidence)
        return Admission(prefix, "gallery_measured", query, gallery, entry=dict(measured_here), evidence=evidence)
    raise IncompatibleModelsError(
        f"{query} may not search the gallery of {gallery}: the gallery measured it on {evidence} and {problem}. "
        "Whatever the model's config claims, the gallery's own measurement decides."
    )


def _refuse_unmeasured_adapter(query_config: Any, query: str, gallery: str, command: str) -> None:
    """A post-hoc map promises nothing about retrieval until measured: no override admits one."""
    adapter = getattr(query_config, "adapter", None)
    if adapter:
        raise IncompatibleModelsError(
            f"{query} may not search the gallery embedded by {gallery}: it is a post-hoc {adapter.get('kind')} "
            f"adapter of {adapter.get('base_model', {}).get('name_or_path') or 'a new model'} fitted into that "
            "model's space, and the pair was never measured as passing. An adapted model is admitted only on a "
            f"measured, passing entry (allow_unmeasured does not apply). Measure it with:\n    {command}"
        )


def _lineage_summary(query_config: Any) -> str:
    entries = getattr(query_config, "compatible_with", None) or []
    if not entries:
        return "Its compatible_with lineage is empty."
    listed = ", ".join(
        f"{_describe(e.get('name_or_path'), e.get('fingerprint'))} at {e.get('embedding_dim')} dims "
        f"({entry_status(e)})"
        for e in entries
    )
    return f"Its compatible_with lineage lists: {listed}."


def compatible_prefix(
    query_config: Any,
    gallery_fingerprint: str | None,
    gallery_dim: int,
    gallery_name: str | None = None,
    *,
    allow_unmeasured: bool = False,
) -> int:
    """The prefix length of :func:`admit_query_model` (kept for callers that need only the number)."""
    return admit_query_model(
        query_config, gallery_fingerprint, gallery_dim, gallery_name, allow_unmeasured=allow_unmeasured
    ).prefix_dim


def admit_to_gallery(
    query_config: Any,
    encoder: Mapping[str, Any],
    gallery_dim: int,
    *,
    allow_unmeasured: bool = False,
    policy: AdmissionPolicy | None = None,
    admissions: Sequence[Mapping[str, Any]] | None = None,
    gallery_location: str | None = None,
) -> Admission:
    """:func:`admit_query_model`, then rules 4 and 5 of the module docstring from the encoder's recorded lineage.

    Args:
        query_config (`BT2Config`): the query model's config.
        encoder (`dict`): the gallery manifest's encoder record (``fingerprint``, ``name_or_path``, and the encoder's
            own ``compatible_with`` entries when the gallery was built by bt2_hf ≥ 0.1).
        gallery_dim (`int`): width of the gallery's vectors.
        allow_unmeasured (`bool`, *optional*, defaults to `False`): as in :func:`admit_query_model`; it never admits
            through an entry of the encoder that is not measured and passing.
        policy (:class:`AdmissionPolicy`, *optional*): the gallery's rule for measured entries (its manifest's).
        admissions (`list[dict]`, *optional*): the gallery's own admission log (see :func:`admit_query_model`).
        gallery_location (`str`, *optional*): the gallery's directory, for messages.

    Returns:
        :class:`Admission`: with ``gallery_prefix_dim`` set when only the gallery vectors' leading dims are compared.

    Raises:
        `IncompatibleModelsError`: no rule admits the query model (the message of :func:`admit_query_model`).
    """
    try:
        return admit_query_model(query_config, encoder.get("fingerprint"), gallery_dim, encoder.get("name_or_path"),
                                 allow_unmeasured=allow_unmeasured, policy=policy, admissions=admissions,
                                 gallery_location=gallery_location)  # fmt: skip
    except IncompatibleModelsError as refusal:
        refused = refusal
    measured_here = gate_entry(admissions, getattr(query_config, "fingerprint", None), encoder.get("fingerprint"))
    if measured_here is not None or (policy and policy.require_gate):
        raise refused  # the gallery's own word (or its policy) is final: no sideways route around it
    query = _describe(_name(query_config), getattr(query_config, "fingerprint", None))
    gallery = _describe(encoder.get("name_or_path"), encoder.get("fingerprint"))
    best: Admission | None = None
    for entry in encoder.get("compatible_with") or []:
        if entry.get("via") or not _measured_passing(entry, encoder.get("fingerprint"), policy):
            continue  # only the encoder's own measured, passing links: an inherited one adds nothing new
        shared_dim = int(entry["embedding_dim"])
        if same_fingerprint(getattr(query_config, "fingerprint", None), entry.get("fingerprint")):
            if int(query_config.embedding_dim) != shared_dim:
                continue
            candidate = Admission(shared_dim, "gallery_encoder_measured", query, gallery, entry=dict(entry),
                                  gallery_prefix_dim=shared_dim)  # fmt: skip
        else:
            try:
                through = admit_query_model(query_config, entry.get("fingerprint"), shared_dim,
                                            entry.get("name_or_path"), allow_unmeasured=allow_unmeasured,
                                            policy=policy)  # fmt: skip
            except IncompatibleModelsError:
                continue
            candidate = Admission(through.prefix_dim, "shared_ancestor", query, gallery, overridden=through.overridden,
                                  entry={"gallery_encoder": dict(entry), "query": through.entry},
                                  gallery_prefix_dim=through.prefix_dim)  # fmt: skip
        if shared_dim <= gallery_dim and (best is None or candidate.prefix_dim > best.prefix_dim):
            best = candidate
    if best is None:
        raise refused
    logger.info("%s searches the gallery of %s on a shared %d-d prefix (%s).", query, gallery, best.prefix_dim,
                best.basis)  # fmt: skip
    return best
