"""Adapted query models: a new model plus a post-hoc adapter into an old model's space, saved and loaded as one model.

The adapter (:mod:`bt2_hf.adapters`: Procrustes, low-rank affine, residual MLP) is a block of the model's config
(``config.adapter``) and a submodule of :class:`~bt2_hf.BT2Model` (``model.adapter``), so an adapted model is an
ordinary bt2_hf checkpoint: ``BT2Model.from_pretrained`` / ``AutoModel`` / ``SentenceTransformer`` load it, its
fingerprint covers the adapter's weights and config, ``encode`` returns the adapted embeddings (in the old space;
``encode(..., use_adapter=False)`` returns the new model's own), and galleries, ``bt2 index search`` and
``resolve_query_model`` use it like any query model. Like every model, it searches an old gallery only once
``bt2 verify`` has measured it against the old model and the criterion passed.

- :func:`attach_adapter`: a fitted adapter + the new model it was fitted on → the adapted model (in memory);
- :func:`adapt_model` (``bt2 adapt``): embed paired items with both models, fit, attach and save atomically;
- :func:`load_paired_items`: the training items: an image class data set (any ``--data`` of ``bt2 train``) or texts
  (a ``.jsonl`` file with a text field, a ``.txt`` file with one text a line, or a ``datasets`` folder written by
  ``save_to_disk``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapters import ADAPTERS, EmbeddingAdapter, fit_adapter
from .errors import BT2InputError
from .fingerprint import fingerprint_model, short_fingerprint
from .utils.io import atomic_directory, final_location
from .utils.readers import read_jsonl

logger = logging.getLogger(__name__)

ADAPTER_METHOD = "post_hoc_adapter"
# Adapters whose closed form is underdetermined with fewer pairs than the old model's width.
_LINEAR_KINDS = ("procrustes", "low_rank_affine")


@dataclass
class PairedItems:
    """Training items that both models embed (row ``i`` of each embedding is item ``i``).

    Args:
        modality (`str`): ``"image"`` or ``"text"``.
        items: the images (a 4-D uint8/float tensor) or the list of texts.
        dataset (`dict`): ``{"name", "split", "size", "sha256"}``: what the adapter was fitted on (recorded).
    """

    modality: str
    items: Any
    dataset: dict[str, Any]

    def __len__(self) -> int:
        return len(self.items)


def _texts_sha256(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def _read_texts(path: Path, split: str, text_field: str) -> list[str]:
    """Texts from a ``.jsonl`` file (one object a line, ``text_field``), a ``.txt`` file or a ``save_to_disk`` folder."""
    if path.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as error:
            raise BT2InputError(f"not a datasets folder written by save_to_disk ({error}).", path) from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise BT2InputError(f"has no split {split!r}; it has {sorted(loaded)}. Pass --split.", path)
            loaded = loaded[split]
        if text_field not in loaded.column_names:
            raise BT2InputError(
                f"has no column {text_field!r}; its columns are {loaded.column_names}. Pass --text_field.", path
            )
        texts = list(loaded[text_field])
    elif path.suffix == ".jsonl":
        texts = []
        for number, row in enumerate(read_jsonl(path), 1):
            if text_field not in row:
                raise BT2InputError(f"row {number} has no {text_field!r} field. Pass --text_field.", path)
            texts.append(row[text_field])
    elif path.suffix == ".txt":
        texts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise BT2InputError("text pairs come from a .jsonl file, a .txt file or a save_to_disk folder.", path)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise BT2InputError(f"{len(bad)} texts are empty or not strings (e.g. rows {bad[:5]}).", path)
    return texts


def load_paired_items(
    data: Any,
    modality: str,
    *,
    split: str = "train",
    text_field: str = "text",
    data_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    max_items: int | None = None,
    seed: int = 0,
) -> PairedItems:
    """The items an adapter is fitted on, with their identity (name, split, size, content hash).

    Args:
        data (`str`, `os.PathLike`, `list[str]` or `ImageClassificationData`): images: a data set name
            (``"fashion_mnist"``), a directory (IDX files, imagefolder, ``save_to_disk``) or a Hub id, read by
            :func:`bt2_hf.data.load_image_classification`; texts: a ``.jsonl`` file (``text_field`` of each line), a
            ``.txt`` file (one text a line), a ``save_to_disk`` folder (its ``text_field`` column), or a list.
        modality (`str`): ``"image"`` or ``"text"``: what both models embed.
        split (`str`, *optional*, defaults to `"train"`): the split to read (fit on training data, verify on held-out).
        text_field (`str`, *optional*, defaults to `"text"`): the texts' field or column.
        data_dir (`str`, *optional*): the Fashion-MNIST IDX directory for ``data="fashion_mnist"``.
        dataset_name (`str`, *optional*): the name recorded (default: ``data``, or the directory's or file's name).
        max_items (`int`, *optional*): keep at most this many items (a seeded random subset; images: class-balanced).
        seed (`int`, *optional*, defaults to 0): the subset's seed.
    """
    if modality == "text":
        if isinstance(data, (list, tuple)):
            texts, name = list(data), dataset_name or "in-memory texts"
        else:
            path = Path(data).expanduser()
            if not path.exists():
                raise BT2InputError("does not exist: pass a .jsonl or .txt file or a save_to_disk folder.", path)
            texts, name = _read_texts(path, split, text_field), dataset_name or path.name
        if max_items is not None and len(texts) > max_items:
            rows = np.sort(np.random.default_rng(seed).choice(len(texts), size=max_items, replace=False))
            texts = [texts[i] for i in rows]
        dataset = {"name": name, "split": split, "size": len(texts), "sha256": _texts_sha256(texts)}
        return PairedItems("text", texts, _with_subset(dataset, max_items, seed))
    if modality != "image":
        raise ValueError(f"modality must be 'image' or 'text'; got {modality!r}.")
    from .data import ImageClassificationData, load_image_classification
    from .verify import dataset_fingerprint

    if isinstance(data, ImageClassificationData):
        loaded, name = data, dataset_name or data.source
    else:
        spec = str(data)
        loaded = load_image_classification(spec, split, data_dir=data_dir)
        name = dataset_name or (Path(spec).name if Path(spec).expanduser().is_dir() else spec)
    if max_items is not None and len(loaded) > max_items:
        loaded = loaded.take_per_class(max_items, seed=seed)
    if loaded.images is None:
        raise ValueError("bt2 adapt needs the images in memory (load_image_classification(..., in_memory=True)).")
    dataset = {"name": name, "split": split, "size": len(loaded),
               "sha256": dataset_fingerprint(loaded.images, loaded.labels)}  # fmt: skip
    return PairedItems("image", loaded.images, _with_subset(dataset, max_items, seed))


def _with_subset(dataset: dict[str, Any], max_items: int | None, seed: int) -> dict[str, Any]:
    return {**dataset, "max_items": int(max_items), "seed": int(seed)} if max_items is not None else dataset


def _model_record(model: Any, name: str | None, revision: str | None = None) -> dict[str, Any]:
    config = model.config
    record = {"name_or_path": name or config.name_or_path or None, "fingerprint": fingerprint_model(model),
              "embedding_dim": int(config.embedding_dim), "compatible_dim": int(config.compatible_dim)}  # fmt: skip
    if revision:
        record["revision"] = revision
    return record


def attach_adapter(
    new_model: Any,
    adapter: EmbeddingAdapter,
    old_model: Any,
    *,
    new_name: str | None = None,
    old_name: str | None = None,
    old_revision: str | None = None,
    fitted_on: dict[str, Any] | None = None,
) -> Any:
    """The adapted query model: ``new_model``'s weights and processor, then ``adapter`` (into ``old_model``'s space).

    Args:
        new_model (`BT2Model`): the new model the adapter was fitted on (its own embeddings are the adapter's input).
        adapter (:class:`~bt2_hf.adapters.EmbeddingAdapter`): fitted on ``new_model``'s and ``old_model``'s
            embeddings of the same items (:func:`~bt2_hf.adapters.fit_adapter`).
        old_model (`BT2Model`): the old model whose space the adapter maps into (its gallery is what the adapted
            model will search, once verified).
        new_name, old_name (`str`, *optional*): the models' names to record (Hub ids or directories).
        old_revision (`str`, *optional*): the old model's Hub revision.
        fitted_on (`dict`, *optional*): the training items' identity (``name``, ``split``, ``num_pairs``,
            ``sha256``; :func:`adapt_model` records it and the fit's mean cosine).

    Returns:
        `BT2Model` with ``config.adapter`` and ``model.adapter``; its embeddings are ``old_model.config.embedding_dim``
        wide. Save it with ``save_pretrained`` (which fingerprints it). It records ``training.trained_against`` = the
        old model and no ``compatible_with`` entry: ``bt2 verify`` measures it.

    Raises:
        `ValueError`: ``new_model`` is itself adapted, or the adapter's widths are not the models' widths.
    """
    from .compatibility import trained_against
    from .configuration_bt2 import BT2Config
    from .modeling_bt2 import BT2Model

    if getattr(new_model.config, "adapter", None):
        raise ValueError(
            "The new model already carries an adapter: fit the adapter on the base model's own embeddings "
            f"({new_model.config.adapter['base_model'].get('name_or_path')}), not on an adapted model's."
        )
    new_dim, old_dim = int(new_model.config.embedding_dim), int(old_model.config.embedding_dim)
    if (adapter.input_dim, adapter.output_dim) != (new_dim, old_dim):
        raise ValueError(
            f"The {adapter.kind} adapter maps {adapter.input_dim}-d → {adapter.output_dim}-d embeddings, but the new "
            f"model embeds {new_dim}-d and the old model {old_dim}-d: it was fitted on other models. Fit it on these "
            "models' embeddings of the same items."
        )
    old_record = _model_record(old_model, old_name, old_revision)
    old_record.pop("compatible_dim")
    block = {
        "kind": adapter.kind,
        "config": adapter.config_dict(),
        "base_model": _model_record(new_model, new_name),
        "target_model": old_record,
        "fitted_on": dict(fitted_on or {}),
    }
    base = new_model.config.to_dict()
    for key in ("fingerprint", "compatible_with", "training", "embedding_dim", "compatible_dim", "adapter",
                "_name_or_path", "architectures", "transformers_version"):  # fmt: skip
        base.pop(key, None)
    training = {
        "method": ADAPTER_METHOD,
        "adapter_kind": adapter.kind,
        "base_method": (new_model.config.training or {}).get("method"),
        "trained_against": trained_against(
            old_record["name_or_path"] or "<old model>", old_record["fingerprint"], old_dim, old_revision
        ),
    }
    config = BT2Config(**{k: v for k, v in base.items() if k != "model_type"}, adapter=block, training=training)
    model = BT2Model(config)
    state = dict(new_model.state_dict())
    state.update({f"adapter.{name}": tensor for name, tensor in adapter.state_dict().items()})
    model.load_state_dict(state, strict=True)
    model.processor = new_model.processor
    model.adapter.requires_grad_(False)
    return model.eval()


@dataclass
class AdaptResult:
    """What :func:`adapt_model` fitted and saved.

    Args:
        model (`BT2Model`): the adapted query model.
        fitted_on (`dict`): the training items' identity and the fit's mean cosine (recorded in ``config.adapter``).
        saved_to (`Path`, *optional*): the output directory, when saved.
        warnings (`list[str]`): what looked doubtful (too few pairs for the old width …).
    """

    model: Any
    fitted_on: dict[str, Any]
    saved_to: Path | None = None
    warnings: list[str] = field(default_factory=list)


def _load(model_or_path: Any, role: str):
    from .modeling_bt2 import BT2Model

    if hasattr(model_or_path, "config") and hasattr(model_or_path, "state_dict"):
        return model_or_path, None
    path = str(model_or_path)
    try:
        return BT2Model.from_pretrained(path), path
    except OSError as error:
        raise OSError(f"Cannot load the {role} model {path!r}: {error}") from error


def _embed(model: Any, pairs: PairedItems, batch_size: int, device: Any, role: str) -> np.ndarray:
    model.to(device).eval()
    if pairs.modality == "image":
        embeddings = model.encode(images=pairs.items, batch_size=batch_size, device=device).numpy()
    else:
        embeddings = model.encode(texts=pairs.items, batch_size=batch_size, device=device).numpy()
    # A head turns a row with no direction (NaN, infinite or all-zero features) into the constant unit vector 1/√d
    # (heads.unit_rows): such rows would teach the adapter nothing but a constant, so they are refused like NaNs.
    constant = np.abs(embeddings - 1.0 / np.sqrt(embeddings.shape[1])).max(axis=1) < 1e-7
    bad = ~np.isfinite(embeddings).all(axis=1) | constant
    if bad.any():
        raise ValueError(
            f"The {role} model gave NaN, infinite or all-zero features for {int(bad.sum())} of {len(bad)} training "
            f"items (e.g. rows {np.flatnonzero(bad)[:5].tolist()}; their embeddings are NaN or the constant unit "
            "vector): check its weights (a diverged checkpoint) and the inputs."
        )
    return embeddings


def adapt_model(
    new: Any,
    old: Any,
    data: Any,
    kind: str = "procrustes",
    output_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    text_field: str = "text",
    data_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    max_items: int | None = None,
    seed: int = 0,
    adapter_kwargs: dict[str, Any] | None = None,
    new_name: str | None = None,
    old_name: str | None = None,
    old_revision: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> AdaptResult:
    """Fit a post-hoc adapter from ``new``'s space into ``old``'s on paired training items and save the adapted model.

    Both models embed the same items (training data: never the split you will verify on); the adapter is fitted on
    the pairs (:func:`~bt2_hf.adapters.fit_adapter`), attached (:func:`attach_adapter`) and, with ``output_dir``,
    saved with its model card into a staging folder swapped in at the end (an existing directory is replaced only
    with ``overwrite``).

    Args:
        new (`str`, `os.PathLike` or `BT2Model`): the new model (a checkpoint directory, a Hub id or a loaded model).
        old (`str`, `os.PathLike` or `BT2Model`): the old model, whose gallery the adapted model is meant to search.
        data: the training items (see :func:`load_paired_items`).
        kind (`str`, *optional*, defaults to `"procrustes"`): ``procrustes``, ``low_rank_affine`` or ``residual_mlp``.
        output_dir (`str` or `os.PathLike`, *optional*): where to save the adapted model.
        split, text_field, data_dir, dataset_name, max_items, seed: as in :func:`load_paired_items`.
        adapter_kwargs (`dict`, *optional*): the adapter's fitting arguments (``rank``, ``ridge``, ``hidden_dim``,
            ``epochs``, ``learning_rate`` …).
        new_name, old_name (`str`, *optional*): the names recorded (default: as given).
        old_revision (`str`, *optional*): the old model's Hub revision to record.
        batch_size (`int`, *optional*, defaults to 256), device (*optional*): embedding.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing ``output_dir``.
        repo_id (`str`, *optional*): the Hub id shown by the card's usage snippet.

    Returns:
        :class:`AdaptResult`.

    Raises:
        `ValueError`: unknown kind, models of different modalities, fewer than two pairs, NaN embeddings, a rank
        above the widths; `BT2InputError`: unreadable data; `FileExistsError`: ``output_dir`` exists without
        ``overwrite``.

    Example:

    ```python
    >>> from bt2_hf.adapt import adapt_model
    >>> result = adapt_model("runs/mpnet", "runs/minilm", "train_texts.jsonl", "procrustes", "runs/mpnet-adapted")  # doctest: +SKIP
    >>> result.model.encode(texts=["a query"]).shape  # doctest: +SKIP
    torch.Size([1, 384])
    ```
    """
    if kind not in ADAPTERS:
        raise ValueError(f"Unknown adapter kind {kind!r}; choose one of {sorted(ADAPTERS)}.")
    if output_dir is not None and Path(output_dir).exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; pass --overwrite (overwrite=True) to replace it.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    new_model, new_path = _load(new, "new")
    old_model, old_path = _load(old, "old")
    modalities = (new_model.config.modality, old_model.config.modality)
    if modalities[0] != modalities[1]:
        raise ValueError(
            f"The new model encodes {modalities[0]}s and the old model {modalities[1]}s: a post-hoc adapter is fitted "
            "on both models' embeddings of the same items, so both must encode the same modality."
        )
    pairs = load_paired_items(data, modalities[0], split=split, text_field=text_field, data_dir=data_dir,
                              dataset_name=dataset_name, max_items=max_items, seed=seed)  # fmt: skip
    old_dim = int(old_model.config.embedding_dim)
    if len(pairs) < 2:
        raise ValueError(f"{len(pairs)} training pair(s): fitting an adapter needs at least two (more than the old "
                         f"width, {old_dim}, to be well determined).")  # fmt: skip
    notes = []
    if kind in _LINEAR_KINDS and len(pairs) < old_dim:
        notes.append(
            f"only {len(pairs)} training pairs for a {old_dim}-d old space: the {kind} map is underdetermined "
            f"(fewer pairs than dimensions) and will overfit them; use at least {old_dim} pairs, ideally many more."
        )
    for note in notes:
        logger.warning("bt2 adapt: %s", note)
    new_embeddings = _embed(new_model, pairs, batch_size, device, "new")
    old_embeddings = _embed(old_model, pairs, batch_size, device, "old")
    adapter = fit_adapter(kind, new_embeddings, old_embeddings, **(adapter_kwargs or {}))
    mapped = adapter.apply(new_embeddings)
    targets = old_embeddings / np.maximum(np.linalg.norm(old_embeddings, axis=1, keepdims=True), 1e-12)
    fitted_on = {**pairs.dataset, "num_pairs": len(pairs), "train_mean_cosine": round(float(np.mean(
        np.sum(mapped * targets, axis=1))), 6), "fit_arguments": dict(adapter_kwargs or {})}  # fmt: skip
    recorded_new = new_name or (final_location(new_path) if new_path and Path(new_path).is_dir() else new_path)
    recorded_old = old_name or (final_location(old_path) if old_path and Path(old_path).is_dir() else old_path)
    model = attach_adapter(new_model, adapter, old_model, new_name=recorded_new, old_name=recorded_old,
                           old_revision=old_revision, fitted_on=fitted_on)  # fmt: skip
    logger.info(
        "Fitted a %s adapter %s (%s) → %s (%s) on %d pairs of %s:%s; mean cosine to the old embeddings %.4f.",
        kind, recorded_new, short_fingerprint(model.config.adapter["base_model"]["fingerprint"]), recorded_old,
        short_fingerprint(model.config.adapter["target_model"]["fingerprint"]), len(pairs), pairs.dataset["name"],
        split, fitted_on["train_mean_cosine"],
    )  # fmt: skip
    saved_to = None
    if output_dir is not None:
        saved_to = save_adapted_model(model, output_dir, overwrite=overwrite, repo_id=repo_id)
    return AdaptResult(model=model, fitted_on=fitted_on, saved_to=saved_to, warnings=notes)


def save_adapted_model(model: Any, output_dir: str | os.PathLike, *, overwrite: bool = False,
                       repo_id: str | None = None) -> Path:  # fmt: skip
    """Save an adapted model with its model card, atomically: built in a staging folder and swapped in whole (an
    existing directory is replaced only with ``overwrite``)."""
    from .hub.card import create_or_update_model_card

    output_dir = Path(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        create_or_update_model_card(staging, repo_id=repo_id)
    return output_dir


def adapt_summary_lines(result: AdaptResult) -> list[str]:
    """Readable lines of what :func:`adapt_model` did."""
    block = result.model.config.adapter
    base, target, fitted = block["base_model"], block["target_model"], block["fitted_on"]
    lines = [
        f"{block['kind']} adapter: {base.get('name_or_path')} ({base['embedding_dim']}-d, "
        f"{short_fingerprint(base['fingerprint'])}) → space of {target.get('name_or_path')} "
        f"({target['embedding_dim']}-d, {short_fingerprint(target['fingerprint'])})",
        f"fitted on {fitted.get('num_pairs')} pairs of {fitted.get('name')}:{fitted.get('split')} "
        f"(sha256 {str(fitted.get('sha256'))[:12]}); mean cosine to the old embeddings {fitted.get('train_mean_cosine')}",
    ]
    lines += [f"warning: {note}" for note in result.warnings]
    if result.saved_to is not None:
        lines.append(f"saved to {result.saved_to} (fingerprint {short_fingerprint(result.model.config.fingerprint)})")
        lines.append("not yet admitted to any gallery: measure it with")
        lines.append(f"    bt2 verify {result.saved_to} --old {target.get('name_or_path') or 'OLD_MODEL'} "
                     "--data HELD_OUT_DATA --split test")  # fmt: skip
    return lines
