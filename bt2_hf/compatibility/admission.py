"""The admission rule: may query model Q search a gallery embedded by G, and with which embedding prefix?

This is the one place that decides it (``GalleryIndex``, ``resolve_query_model`` and ``bt2 index`` call
:func:`admit_query_model`). Q is admitted when

1. Q *is* G (same fingerprint): the whole embedding;
2. Q's ``compatible_with`` has a **measured, passing** entry for G (written by ``bt2 verify``): that entry's prefix;
3. Q reaches G through its lineage: an ``inherited`` entry for G ``via`` V, where Q's own entry for V is measured and
   passing and V was itself admitted to G (``link_passed``).

A gallery's manifest also records its encoder's own ``compatible_with`` entries, and :func:`admit_to_gallery` uses
them for cross-modal and sideways searches (an old image model's queries over a text tower's gallery, a new image
tower's queries over a text gallery): Q is admitted on G's vectors cut to a shared prefix when

4. G's entry for Q is measured and passing (G was trained into Q's space): Q's embedding against G's first dims;
5. G has a measured, passing entry for a model A, and Q is admitted to A's galleries by rules 1–3: both live in A's
   space, compared on A's width.

Everything else is refused with an error naming both models and the ``bt2 verify`` command that would measure the
pair. A relation that is known but unmeasured (a ``declared`` entry, an inherited one with an unmeasured link, or only
``training.trained_against``) is admitted with ``allow_unmeasured=True``: an explicit override that is logged and
recorded in the admission (and in search results). A measured, *failing* entry is refused even then: the
measurement says the new model's queries are worse than the old model's on that gallery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..fingerprint import short_fingerprint
from .schema import IncompatibleModelsError, entry_status, judged_metrics, same_fingerprint

logger = logging.getLogger(__name__)


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
    """

    prefix_dim: int
    basis: str
    query: str
    gallery: str
    overridden: bool = False
    entry: dict | None = None
    gallery_prefix_dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _find_entry(config: Any, fingerprint: str) -> dict | None:
    return next(
        (
            e
            for e in getattr(config, "compatible_with", None) or []
            if same_fingerprint(e.get("fingerprint"), fingerprint)
        ),
        None,
    )


def _measured_passing(entry: Mapping[str, Any] | None) -> bool:
    return bool(entry) and entry_status(entry) == "measured" and bool((entry.get("criterion") or {}).get("passed"))


def is_measured_compatible(config: Any, gallery_fingerprint: str) -> bool:
    """Whether ``config``'s model is admitted to ``gallery_fingerprint``'s galleries by measurement alone (rules 1–3
    of the module docstring; no override). Used to close lineages: an inherited entry records it as ``link_passed``."""
    if same_fingerprint(getattr(config, "fingerprint", None), gallery_fingerprint):
        return True
    entry = _find_entry(config, gallery_fingerprint)
    if entry is None:
        return False
    status = entry_status(entry)
    if status == "measured":
        return _measured_passing(entry)
    if status == "inherited":
        via = _find_entry(config, entry.get("via_fingerprint") or "") if entry.get("via_fingerprint") else None
        return bool(entry.get("link_passed")) and _measured_passing(via)
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


def _failing_detail(entry: Mapping[str, Any]) -> str:
    criterion, metrics = entry.get("criterion") or {}, entry.get("metrics") or {}
    parts = []
    for metric in judged_metrics(criterion):
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

    entry = _find_entry(query_config, gallery_fingerprint)
    unmeasured_reason = None
    if entry is not None:
        prefix = _width_checked(int(entry["embedding_dim"]), query_config, gallery_dim, query, gallery)
        status = entry_status(entry)
        if status == "measured":
            if _measured_passing(entry):
                return Admission(prefix, "measured", query, gallery, entry=dict(entry))
            raise IncompatibleModelsError(
                f"{query} may not search the gallery of {gallery}: compatibility was measured and the criterion "
                f"M(new→old) > M(old→old) FAILED ({_failing_detail(entry)}). Its queries would do worse than the old "
                "model's own: keep querying with the old model, or re-embed (backfill) the gallery with the new "
                f"model. After retraining, measure again with:\n    {command}"
            )
        if status == "inherited" and is_measured_compatible(query_config, gallery_fingerprint):
            return Admission(prefix, "lineage", query, gallery, entry=dict(entry))
        if status == "inherited":
            unmeasured_reason = (
                f"it reaches {gallery} only through {entry.get('via')!r}, and that link was not measured as passing"
            )
        else:
            unmeasured_reason = "its compatible_with entry for it was declared, not measured on a named held-out split"
        admitted_entry = dict(entry)
    else:
        trained = (getattr(query_config, "training", None) or {}).get("trained_against") or {}
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
    query_config: Any, encoder: Mapping[str, Any], gallery_dim: int, *, allow_unmeasured: bool = False
) -> Admission:
    """:func:`admit_query_model`, then rules 4 and 5 of the module docstring from the encoder's recorded lineage.

    Args:
        query_config (`BT2Config`): the query model's config.
        encoder (`dict`): the gallery manifest's encoder record (``fingerprint``, ``name_or_path``, and the encoder's
            own ``compatible_with`` entries when the gallery was built by bt2_hf ≥ 0.1).
        gallery_dim (`int`): width of the gallery's vectors.
        allow_unmeasured (`bool`, *optional*, defaults to `False`): as in :func:`admit_query_model`; it never admits
            through an entry of the encoder that is not measured and passing.

    Returns:
        :class:`Admission`: with ``gallery_prefix_dim`` set when only the gallery vectors' leading dims are compared.

    Raises:
        `IncompatibleModelsError`: no rule admits the query model (the message of :func:`admit_query_model`).
    """
    try:
        return admit_query_model(query_config, encoder.get("fingerprint"), gallery_dim, encoder.get("name_or_path"),
                                 allow_unmeasured=allow_unmeasured)  # fmt: skip
    except IncompatibleModelsError as refusal:
        refused = refusal
    query = _describe(_name(query_config), getattr(query_config, "fingerprint", None))
    gallery = _describe(encoder.get("name_or_path"), encoder.get("fingerprint"))
    best: Admission | None = None
    for entry in encoder.get("compatible_with") or []:
        if entry.get("via") or not _measured_passing(entry):
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
                                            entry.get("name_or_path"), allow_unmeasured=allow_unmeasured)  # fmt: skip
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
