"""What the upgrade page computes, without any web framework: three searches side by side, verdicts and progress.

:class:`UpgradeView` loads the two models and opens the galleries of :class:`~bt2_hf.ui.UpgradeSettings`, then
answers one query three ways, each through the library's one search (:func:`bt2_hf.galleries.search_gallery`, with
the gallery's admission rule and, on the backfilled copy, its mixed ranking):

1. ``old``: the old model on the old gallery (what users get today);
2. ``new_on_old``: the new model's compatible prefix on the same, never re-embedded gallery;
3. ``new_on_backfilled``: the new model on the copy backfilled with it (re-embedded items ranked by new/new).

A list that cannot be made says why (the model embeds another modality; the gallery refuses the model, with the
refusal's reason) instead of failing the page.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

import numpy as np

from .settings import UpgradeSettings

logger = logging.getLogger(__name__)

COLUMNS = (
    ("old", "old model → old gallery", "old"),
    ("new_on_old", "new model → old gallery", "new"),
    ("new_on_backfilled", "new model → backfilled gallery", "new"),
)
REPORTED_METRICS = ("top1", "mAP")


@dataclass
class ColumnResult:
    """One list of the page.

    Args:
        key (`str`): ``"old"``, ``"new_on_old"`` or ``"new_on_backfilled"``.
        title (`str`): what is searched with what.
        hits (`list[dict]`): best first: ``id``, ``row``, ``score`` (the encoder-space cosine that earned the
            position), ``backfilled``, ``new_score`` (a re-embedded item's new/new cosine), ``label`` (class name when
            the gallery has names), ``image`` (a PNG data URI) or ``text`` (the item) when the dataset is known.
        message (`str`, *optional*): why there are no hits (another modality, a refusal), or a note on them.
        prefix_dim (`int`, *optional*): the query dimensions compared with the gallery's vectors.
    """

    key: str
    title: str
    hits: list[dict] = field(default_factory=list)
    message: str | None = None
    prefix_dim: int | None = None


@dataclass
class ModelVerdict:
    """A model's standing with the old gallery: the gallery's admission, and what its card says was measured.

    Args:
        role (`str`): ``"old"`` or ``"new"``.
        name (`str`): its checkpoint.
        fingerprint (`str`): its verified fingerprint.
        modality (`str`): ``"image"`` or ``"text"``.
        embedding_dim (`int`): its width.
        admitted (`bool`): the old gallery admits its queries.
        admission (`str`): why (the admission's basis and evidence) or why not (the refusal).
        card (`str`, *optional*): the card's verdict on its entry for the gallery's encoder: ``"compatible"``,
            ``"failed"`` or ``"not measured"``; ``None`` without an entry (or for the encoder itself).
        metrics (`list[dict]`): the entry's measured ``metric``, ``new_old``, ``old_old`` and ``margin`` (points).
        measured_on (`str`, *optional*): the entry's held-out data (name, split, size).
        gate (`dict`, *optional*): the gallery's own measurement of the model on its probe set (``passed``, ``margin``,
            ``size``), when it made one.
    """

    role: str
    name: str
    fingerprint: str
    modality: str
    embedding_dim: int
    admitted: bool
    admission: str
    card: str | None = None
    metrics: list[dict] = field(default_factory=list)
    measured_on: str | None = None
    gate: dict | None = None


def _png_data_uri(image: Any) -> str:
    """A small PNG of one item (uint8 ``(C, H, W)``/``(H, W)`` array or tensor, or a PIL image) as a data URI."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        image = Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))
    image = image.copy()
    image.thumbnail((96, 96))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class UpgradeView:
    """The models and galleries of one upgrade, and the three searches the page shows.

    Args:
        settings (:class:`~bt2_hf.ui.UpgradeSettings`): what to show (see :func:`bt2_hf.ui.prepare_upgrade`).
        device (`str`, *optional*): where the models run (default: CPU).
    """

    def __init__(self, settings: UpgradeSettings, device: str | None = None):
        from ..galleries.stores import open_gallery
        from ..modeling_bt2 import BT2Model

        self.settings = settings
        self.old_model = BT2Model.from_pretrained(settings.old_model).eval()
        self.new_model = BT2Model.from_pretrained(settings.new_model).eval()
        if device is not None:
            self.old_model.to(device)
            self.new_model.to(device)
        self.old_gallery = open_gallery(settings.old_gallery)
        self.backfilled_gallery = open_gallery(settings.backfilled_gallery) if settings.backfilled_gallery else None
        self._source = None
        self._positions: dict[str, int] | None = None
        self._lock = Lock()  # one backfill step at a time; searches read the manifest it rewrites

    # -- what the page shows before any query -------------------------------------------------------------------------

    @property
    def title(self) -> str:
        return self.settings.title or "Upgrading an embedding model without re-embedding its gallery"

    @property
    def query_modalities(self) -> list[str]:
        """The query inputs the page offers: ``"image"`` and/or ``"text"``, from the models' modalities."""
        return list(dict.fromkeys(model.modality for model in (self.new_model, self.old_model)))

    def model_of(self, role: str):
        return self.old_model if role == "old" else self.new_model

    def gallery_of(self, key: str):
        return self.backfilled_gallery if key == "new_on_backfilled" else self.old_gallery

    def verdicts(self) -> list[ModelVerdict]:
        """The old and the new model's standing with the old gallery (admission, card entry, gate measurement)."""
        return [self._verdict("old", self.old_model), self._verdict("new", self.new_model)]

    def _verdict(self, role: str, model) -> ModelVerdict:
        from ..compatibility import IncompatibleModelsError, gate_entry, query_model_fingerprint, same_fingerprint
        from ..hub.card import entry_verdict

        store = self.old_gallery
        encoder = store.encoder.get("fingerprint")
        fingerprint = query_model_fingerprint(model) or model.config.fingerprint
        try:
            admission = store.admit(model.config, self.settings.allow_unmeasured)
            admitted, why = True, _admission_text(admission)
        except IncompatibleModelsError as error:
            admitted, why = False, str(error)
        verdict = ModelVerdict(role=role, name=_short(getattr(self.settings, f"{role}_model")), fingerprint=fingerprint,
                               modality=model.modality, embedding_dim=int(model.config.embedding_dim),
                               admitted=admitted, admission=why)  # fmt: skip
        if same_fingerprint(fingerprint, encoder):
            return verdict
        entries = list(getattr(model.config, "compatible_with", None) or [])
        entry = next((e for e in entries if same_fingerprint(e.get("fingerprint"), encoder)), None)
        if entry is not None:
            verdict.card = entry_verdict(entry, entries)
            verdict.metrics = _metric_rows(entry.get("metrics") or {})
            dataset = entry.get("dataset") or {}
            if dataset:
                verdict.measured_on = f"{dataset.get('name')}:{dataset.get('split')} ({dataset.get('size')} items)"
        logged = gate_entry(store.admissions, fingerprint, encoder)
        if logged is not None:
            verdict.gate = {"passed": bool(logged.get("passed")), "margin": dict(logged.get("margin") or {}),
                            "size": logged.get("size"), "reason": logged.get("reason")}  # fmt: skip
        return verdict

    def progress(self) -> dict | None:
        """The backfilled copy's progress: ``done``, ``count``, ``fraction`` and the ``model`` re-embedding it."""
        store = self.backfilled_gallery
        if store is None:
            return None
        state = store.backfill_state or {}
        done, count = int(state.get("done", 0)), len(store)
        return {"done": done, "count": count, "fraction": done / count if count else 0.0,
                "model": _short((state.get("model") or {}).get("name_or_path") or "") or None}  # fmt: skip

    def backfill_to(self, fraction: float) -> dict | None:
        """Continue the copy's backfill up to ``fraction`` (never backwards); the new progress."""
        from ..galleries import backfill

        if self.backfilled_gallery is None or not self.settings.data:
            raise ValueError("This page has no backfilled copy with a dataset to continue backfilling.")
        with self._lock:
            backfill(self.backfilled_gallery, self.new_model, self.settings.data, fraction=float(fraction),
                     split=self.settings.split, allow_unmeasured=self.settings.allow_unmeasured,
                     show_progress=False)  # fmt: skip
        return self.progress()

    # -- the three lists -----------------------------------------------------------------------------------------------

    def search(self, text: str | None = None, image: Any = None, k: int = 5) -> list[ColumnResult]:
        """Answer one query (a text, or an image as a uint8 array or PIL image) with the three lists.

        Raises:
            `ValueError`: no query, or both a text and an image.
        """
        from ..compatibility import IncompatibleModelsError
        from ..galleries import search_gallery

        text = (text or "").strip() or None
        if (text is None) == (image is None):
            raise ValueError("Give one query: a text or an image.")
        modality = "text" if text is not None else "image"
        k = max(1, int(k))
        embedded: dict[str, np.ndarray] = {}
        columns = []
        for key, title, role in COLUMNS:
            column = ColumnResult(key=key, title=title)
            columns.append(column)
            model, store = self.model_of(role), self.gallery_of(key)
            if store is None:
                column.message = (f"No backfilled gallery: the new model embeds {self.new_model.modality}s, the "
                                  f"gallery holds {self.old_gallery.encoder.get('modality', 'image')}s.")  # fmt: skip
                continue
            if model.modality != modality:
                column.message = f"The {role} model embeds {model.modality}s: it takes no {modality} query."
                continue
            if role not in embedded:
                encoded = model.encode(texts=[text]) if text is not None else model.encode(images=[image])
                embedded[role] = encoded.numpy()
            try:
                with self._lock:
                    result = search_gallery(store, embedded[role], k=k, query_config=model.config,
                                            allow_unmeasured=self.settings.allow_unmeasured)  # fmt: skip
            except IncompatibleModelsError as error:
                column.message = f"Refused by the gallery: {error}"
                continue
            column.prefix_dim = int(result.prefix_dim)
            column.hits = [dict(hit, **self._preview(hit["id"])) for hit in result.hits()[0]]
            for hit, new_score in zip(column.hits, result.new_scores[0]):
                if not np.isnan(new_score):  # a re-embedded item: its full new/new cosine, beside the slot's score
                    hit["new_score"] = round(float(new_score), 6)
        return columns

    def _preview(self, item_id) -> dict:
        """The item itself for the page: ``{"image": data URI}`` or ``{"text": ...}``; empty without the dataset."""
        source = self._dataset()
        if source is None:
            return {}
        position = self._positions.get(str(item_id))
        if position is None:
            return {}
        item = source.take([position])
        if source.modality == "text":
            return {"text": str(item[0])}
        return {"image": _png_data_uri(item[0])}

    def _dataset(self):
        if self._source is None and self.settings.data:
            from ..galleries import GallerySourceError, open_source

            try:
                self._source = open_source(self.settings.data, split=self.settings.split)
            except (GallerySourceError, OSError, ValueError) as error:
                logger.warning("No thumbnails: cannot read %s (%s).", self.settings.data, error)
                self.settings.data = None
                return None
            self._positions = {str(item): position for position, item in enumerate(self._source.ids())}
        return self._source


def _short(path) -> str:
    """A path as the page names it: relative to the working directory when it lies under it."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    relative = os.path.relpath(text)
    return text if relative.startswith("..") else relative


def _metric_rows(metrics: dict) -> list[dict]:
    rows = []
    for metric in REPORTED_METRICS:
        try:
            new_old, old_old = float(metrics["new/old"][metric]), float(metrics["old/old"][metric])
        except (KeyError, TypeError, ValueError):
            continue
        rows.append({"metric": metric, "new_old": new_old, "old_old": old_old, "margin": round(new_old - old_old, 4)})
    return rows


def _admission_text(admission) -> str:
    bases = {
        "same_model": "it is the gallery's encoder",
        "gallery_measured": "the gallery measured it on its own probe set",
        "measured": "a measured, passing `bt2 verify` entry",
        "lineage": "its lineage, every link measured",
        "unmeasured_override": "declared compatibility, NOT measured (allowed by an override)",
        "gallery_encoder_measured": "the gallery encoder's own measured entry",
        "shared_ancestor": "a shared, measured ancestor",
    }
    text = f"admitted: {bases.get(admission.basis, admission.basis)}; compares {admission.prefix_dim} dims"
    if admission.evidence:
        text += f"; evidence: {admission.evidence}"
    return text
