"""Make what the upgrade page shows: a copy of the old gallery, backfilled with the new model.

The user's gallery is never modified: :func:`prepare_upgrade` copies it (built in a staging folder and swapped in,
like every directory bt2_hf writes) into a work folder and backfills the copy with the library's
:func:`~bt2_hf.galleries.backfill`, through the gallery's own admission rule. A page that judges models with another
admission policy than the gallery owner's (``required_metrics``, as an owner who ranks by mAP would set with
``bt2 gallery policy``), or that measures the new model at the gallery's gate (``gate``, as ``bt2 gallery admit``
does), gets a copy of the old gallery too, so that both galleries it searches judge alike. Run again, it reuses the copies and continues the backfill up to the fraction asked for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import BT2InputError
from .settings import (
    ENV_ALLOW_UNMEASURED,
    ENV_CONFIG,
    ENV_DEMO_OUTPUT,
    ENV_FRACTION,
    ENV_GATE,
    ENV_PATHS,
    ENV_REQUIRED_METRICS,
    SETTINGS_FILE,
    UpgradeSettings,
)

logger = logging.getLogger(__name__)

OLD_COPY, BACKFILLED_COPY = "gallery_old", "gallery_backfilled"
DEMO_WORK_DIR = "ui"
DEFAULT_FRACTION = 0.5


def _our_copies(work_dir: Path) -> set[str]:
    """The gallery folders that an earlier :func:`prepare_upgrade` wrote into ``work_dir`` (its ``ui.json``)."""
    try:
        values = json.loads((work_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(values, dict):
        return set()
    return {str(Path(values[name]).resolve()) for name in ("old_gallery", "backfilled_gallery")
            if isinstance(values.get(name), str)}  # fmt: skip


def copy_gallery(source: str | os.PathLike, destination: str | os.PathLike, *, replace: bool = False):
    """Copy a faiss gallery directory atomically and open the copy (its files' sha256 checked).

    Args:
        source (`str` or `os.PathLike`): the gallery to copy (read only).
        destination (`str` or `os.PathLike`): where the copy goes.
        replace (`bool`, *optional*, defaults to `False`): replace an existing ``destination``.

    Returns:
        `FaissGallery`: the copy.
    """
    from ..galleries import FaissGallery
    from ..utils.io import atomic_directory

    with atomic_directory(destination, overwrite=replace) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    return FaissGallery.open(destination)


def _matching_copy(source, destination: Path, ours: set[str], new_fingerprint: str | None = None):
    """The copy at ``destination`` when it is a copy of ``source`` (and, for a backfilled copy, backfilled by the new
    model); ``None`` when a fresh copy is needed. A folder that is neither ours nor a copy of ``source`` is refused."""
    from ..compatibility import same_fingerprint
    from ..galleries import FaissGallery, GalleryError

    if not destination.exists():
        return None
    is_ours = str(destination.resolve()) in ours
    try:
        copy = FaissGallery.open(destination)
    except GalleryError:
        if is_ours:
            return None
        raise
    same_source = same_fingerprint(copy.encoder.get("fingerprint"), source.encoder.get("fingerprint")) and len(
        copy
    ) == len(source)
    state = copy.backfill_state
    same_model = new_fingerprint is None or state is None or same_fingerprint(state["model"]["fingerprint"],
                                                                              new_fingerprint)  # fmt: skip
    if same_source and same_model:
        return copy
    if not is_ours:
        raise GalleryError(
            f"{destination} holds another gallery than a copy of {source.location} (or one backfilled by another "
            "model): choose another work folder, or remove it."
        )
    logger.info("Replacing the page's copy %s: its gallery or its backfill model changed.", destination)
    return None


def _measured_at_gate(store, model, gallery_modality: str, batch_size: int) -> dict | None:
    """The gallery's own measurement of ``model`` on its probe set (an earlier one for the same model, or a new one,
    logged in ``store``); ``None`` when the gallery has no probe set or holds items the model cannot embed."""
    from ..compatibility import gate_entry, query_model_fingerprint
    from ..galleries.gate import admit_candidate

    if store.manifest.get("probe") is None or model.modality != gallery_modality:
        logger.warning("%s has no probe set the new model can embed: nothing is measured at its gate.", store.location)
        return None
    logged = gate_entry(store.admissions, query_model_fingerprint(model), store.encoder.get("fingerprint"))
    return dict(logged) if logged is not None else admit_candidate(store, model, batch_size=batch_size)


def prepare_upgrade(
    old_model: str | os.PathLike,
    new_model: str | os.PathLike,
    gallery: str | os.PathLike,
    work_dir: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    split: str | None = None,
    fraction: float = DEFAULT_FRACTION,
    required_metrics: list[str] | None = None,
    allow_unmeasured: bool = False,
    gate: bool = False,
    batch_size: int = 1024,
    embed_batch_size: int = 256,
    title: str | None = None,
    show_progress: bool = True,
) -> UpgradeSettings:
    """Copy the old gallery into ``work_dir``, backfill the copy with the new model, and save the page's settings.

    Args:
        old_model (`str` or `os.PathLike`): the old model (the gallery's encoder).
        new_model (`str` or `os.PathLike`): the new model.
        gallery (`str` or `os.PathLike`): the old gallery (a faiss gallery directory); never modified.
        work_dir (`str` or `os.PathLike`): where the copies and ``ui.json`` go.
        data (`str` or `os.PathLike`, *optional*): the gallery's dataset (as given to ``bt2 embed``); needed to
            backfill, and for thumbnails.
        split (`str`, *optional*): its split.
        fraction (`float`, *optional*, defaults to 0.5): the fraction of the copy to re-embed (continued if smaller
            in an earlier run). Half by default: the page then shows old and re-embedded items ranked together, and
            its slider continues the backfill.
        required_metrics (`list[str]`, *optional*): judge models with this admission policy (``["mAP"]``: an owner
            who ranks by mAP) on the page's copies instead of the gallery owner's policy.
        allow_unmeasured (`bool`, *optional*, defaults to `False`): admit declared, unmeasured compatibility.
        gate (`bool`, *optional*, defaults to `False`): measure the new model on the gallery's probe set
            (:func:`bt2_hf.galleries.gate.admit_candidate`, ``bt2 gallery admit``) and log it in the page's copies;
            the gallery's own measurement then decides the admission, whatever the model's config says.

    Returns:
        :class:`UpgradeSettings` (absolute paths), also saved as ``work_dir/ui.json`` (paths relative to it).

    A new model that the gallery refuses leaves the copy as it is (nothing re-embedded): the page then shows the
    refusal and its reason, which is what an operator needs to see.
    """
    from ..compatibility import AdmissionPolicy, IncompatibleModelsError, gate_entry
    from ..galleries import FaissGallery, GalleryError, GallerySourceError, backfill
    from ..modeling_bt2 import BT2Model

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    from ..galleries.stores import is_milvus_uri

    if is_milvus_uri(gallery):
        raise BT2InputError(f"{gallery} is a Milvus gallery; the page copies faiss gallery directories only (build one "
                            "from the same embeddings with `bt2 index build --output DIR`).")  # fmt: skip
    work_dir = Path(work_dir)
    source = FaissGallery.open(gallery)
    if source.backfill_state is not None:
        logger.info("%s is being backfilled already (%d/%d items): the page shows its copy as it is.", gallery,
                    source.backfill_state["done"], len(source))  # fmt: skip
    ours = _our_copies(work_dir)
    policy = None
    if required_metrics:
        try:
            policy = AdmissionPolicy.from_dict(dict(source.policy.to_dict(), required_metrics=list(required_metrics)))
        except ValueError as error:
            raise BT2InputError(f"invalid required metrics {required_metrics}: {error}.") from None
    old_location = Path(gallery)
    new = BT2Model.from_pretrained(new_model)
    gallery_modality = source.encoder.get("modality", "image")
    measured = None
    if policy is not None or gate:
        old_location = work_dir / OLD_COPY
        old_copy = _matching_copy(source, old_location, ours) or copy_gallery(gallery, old_location, replace=True)
        if policy is not None and old_copy.policy != policy:
            old_copy.set_policy(policy)
        if gate:
            measured = _measured_at_gate(old_copy, new, gallery_modality, embed_batch_size)
    backfilled_location = None
    if new.modality != gallery_modality:
        logger.warning("The new model embeds %ss and the gallery holds %ss: there is no backfilled gallery to show.",
                       new.modality, gallery_modality)  # fmt: skip
    else:
        backfilled_location = work_dir / BACKFILLED_COPY
        copy = _matching_copy(source, backfilled_location, ours, new.config.fingerprint)
        copy = copy or copy_gallery(gallery, backfilled_location, replace=True)
        if policy is not None and copy.policy != policy:
            copy.set_policy(policy)
        if measured is not None and gate_entry(copy.admissions, measured["query_fingerprint"],
                                               measured["encoder_fingerprint"]) is None:  # fmt: skip
            copy.append_admission(measured)  # the same probe set, the same model: one measurement serves both copies
        done = (copy.backfill_state or {}).get("done", 0)
        wanted = fraction * len(copy) >= done + 1  # at least one more item to re-embed
        if wanted and data is None:
            logger.warning("No dataset given for %s: the page's copy is not backfilled (pass data, `--data`).",
                           gallery)  # fmt: skip
        elif wanted:
            try:
                backfill(copy, new, str(data), fraction=fraction, split=split, batch_size=batch_size,
                         embed_batch_size=embed_batch_size, allow_unmeasured=allow_unmeasured,
                         show_progress=show_progress)  # fmt: skip
            except IncompatibleModelsError as error:
                logger.warning("The backfill was refused, the copy stays as it is: %s", error)
            except (GallerySourceError, GalleryError) as error:
                raise BT2InputError(f"cannot backfill the page's copy from {data}: {error}") from None
    settings = UpgradeSettings(
        old_model=str(old_model), new_model=str(new_model), old_gallery=str(old_location),
        backfilled_gallery=None if backfilled_location is None else str(backfilled_location),
        data=None if data is None else str(data), split=split, allow_unmeasured=allow_unmeasured, title=title,
        source_gallery=str(gallery),
    )  # fmt: skip
    work_dir.mkdir(parents=True, exist_ok=True)
    return UpgradeSettings.load(settings.save(work_dir))  # as a later `bt2 ui --config` reads it


def prepare_demo(
    demo_output: str | os.PathLike,
    *,
    work_dir: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    new_model: str = "bt2",
    **kwargs,
) -> UpgradeSettings:
    """:func:`prepare_upgrade` for a ``bt2 demo`` output folder: its old CNN, its BT² model and its old gallery.

    Args:
        demo_output (`str` or `os.PathLike`): the folder ``bt2 demo`` wrote.
        work_dir (`str` or `os.PathLike`, *optional*): where the copies go (default: ``demo_output/ui``).
        data (`str` or `os.PathLike`, *optional*): the demo's data directory (default: the one its
            ``results.json`` names).
        new_model (`str`, *optional*, defaults to `"bt2"`): which of ``models/`` is the new model.
        kwargs: passed to :func:`prepare_upgrade` (``fraction``, ``required_metrics``, ``allow_unmeasured`` …).
    """
    from ..galleries.faiss_store import read_manifest
    from ..utils.readers import read_json

    demo_output = Path(demo_output)
    results_path = demo_output / "results.json"
    if not results_path.is_file():
        raise BT2InputError(
            f"{demo_output} is not a `bt2 demo` output folder (no results.json): run `bt2 demo` first."
        )
    results = read_json(results_path, "demo results")
    models = demo_output / "models"
    for name in ("old", new_model):
        if not (models / name / "config.json").is_file():
            raise BT2InputError(f"{models / name} holds no model: run `bt2 demo` again, or pick another new model.")
    gallery = demo_output / "gallery_old"
    split = (read_manifest(gallery).get("dataset") or {}).get("split")
    source = data or (results.get("dataset_source") if isinstance(results, dict) else None)
    if source is not None and not Path(str(source)).is_dir():
        logger.warning("The demo's data %s is not a folder here: the page has no thumbnails and no backfill.", source)
        source = None
    if split not in ("train", "test"):
        # A --validation run's gallery holds rows carved out of the training split, not a split of the data folder.
        logger.warning("The demo's gallery is of its %r split: the page has no thumbnails and no backfill.", split)
        source = split = None
    dataset = results.get("dataset", "the demo") if isinstance(results, dict) else "the demo"
    title = kwargs.pop("title", None) or f"{dataset}: upgrading the old CNN's gallery to the {new_model} model"
    return prepare_upgrade(models / "old", models / new_model, gallery, work_dir or demo_output / DEMO_WORK_DIR,
                           data=source, split=split, title=title, **kwargs)  # fmt: skip


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def settings_from_env(environ: dict | None = None) -> UpgradeSettings:
    """The page's settings from environment variables (what a Hugging Face Space's ``app.py`` is configured with).

    In order of precedence: ``BT2_UI_CONFIG`` (a ``ui.json`` file or its folder); ``BT2_UI_DEMO_OUTPUT`` (a
    ``bt2 demo`` output folder); or ``BT2_UI_OLD_MODEL``, ``BT2_UI_NEW_MODEL``, ``BT2_UI_GALLERY`` with
    ``BT2_UI_DATA`` / ``BT2_UI_SPLIT`` (the gallery's dataset) and ``BT2_UI_WORK_DIR`` (where the backfilled copy
    goes). The last two forms prepare the copies when they are missing (:func:`bt2_hf.ui.prepare_upgrade`), with
    ``BT2_UI_BACKFILL_FRACTION`` (default 0.5), ``BT2_UI_REQUIRED_METRICS`` (the page's admission policy, e.g. ``mAP``),
    ``BT2_UI_ALLOW_UNMEASURED`` and ``BT2_UI_GATE`` (measure the new model on the gallery's probe set).

    Raises:
        `BT2InputError`: none of the three forms is set, or one is incomplete.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_CONFIG):
        return UpgradeSettings.load(env[ENV_CONFIG])
    fraction = float(env.get(ENV_FRACTION) or 0.5)
    metrics = [m.strip() for m in (env.get(ENV_REQUIRED_METRICS) or "").split(",") if m.strip()] or None
    allow_unmeasured, gate = _flag(env.get(ENV_ALLOW_UNMEASURED)), _flag(env.get(ENV_GATE))
    if env.get(ENV_DEMO_OUTPUT):
        return prepare_demo(env[ENV_DEMO_OUTPUT], work_dir=env.get(ENV_PATHS["work_dir"]), fraction=fraction,
                            required_metrics=metrics, allow_unmeasured=allow_unmeasured, gate=gate)  # fmt: skip
    paths = {name: env.get(variable) for name, variable in ENV_PATHS.items()}
    missing = [ENV_PATHS[name] for name in ("old_model", "new_model", "gallery", "work_dir") if not paths[name]]
    if missing:
        raise BT2InputError(
            f"the upgrade page is not configured: set {ENV_CONFIG} (a ui.json), {ENV_DEMO_OUTPUT} (a `bt2 demo` "
            f"output folder), or {', '.join(missing)}."
        )
    return prepare_upgrade(paths["old_model"], paths["new_model"], paths["gallery"], paths["work_dir"],
                           data=paths["data"], split=paths["split"], fraction=fraction, required_metrics=metrics,
                           allow_unmeasured=allow_unmeasured, gate=gate)  # fmt: skip
