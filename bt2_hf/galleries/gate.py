"""The gallery's gate: a small labelled probe set kept by the gallery, and the measurement of a candidate on it.

A model's ``compatible_with`` entries are claims written by whoever wrote its config; a gallery can check them only
as far as a content hash goes (whoever can write a config can recompute it). The gate does not read claims: the
gallery keeps a probe set (held-out items, their labels and its own encoder's embeddings of them, sampled when it
is built), embeds the probe items with the candidate, measures old→old and new→old with the library's one evaluator
(:class:`~bt2_hf.retrieval.RetrievalEvaluator`, each query left out of its own gallery), judges the result with the
gallery owner's :class:`~bt2_hf.compatibility.AdmissionPolicy`, and appends it to the gallery's admission log, bound
to the candidate's verified fingerprint. Searches then admit (or refuse) that model on the log entry, re-judged with
the policy in force (:func:`bt2_hf.compatibility.admit_query_model`).

- :func:`sample_probe`: a class-balanced probe set from items, labels and the encoder's embeddings of them.
- :func:`make_probe`: the same from a dataset (any :func:`~bt2_hf.galleries.open_source` input) and the encoder.
- :func:`admit_candidate` (``bt2 gallery admit``): measure a candidate at the gate and log the result.
"""

from __future__ import annotations

import datetime
import logging

import numpy as np
import torch

from ..compatibility import AdmissionPolicy, judge_metrics, query_model_fingerprint, same_fingerprint
from ..fingerprint import short_fingerprint
from .faiss_store import PROBE_DIR, GalleryError

logger = logging.getLogger(__name__)

PROBE_METRICS = ("top1", "top5", "map")
DEFAULT_PROBE_SIZE = 500


def _balanced_rows(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn class-balanced (round-robin over classes in a seeded order), sorted."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
    picked: list[int] = []
    depth = 0
    while len(picked) < min(size, len(labels)):
        for rows in by_class:
            if depth < len(rows) and len(picked) < size:
                picked.append(int(rows[depth]))
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


def sample_probe(
    items,
    labels,
    embeddings,
    size: int = DEFAULT_PROBE_SIZE,
    *,
    seed: int = 0,
    description: dict | None = None,
) -> dict:
    """A class-balanced probe set for :meth:`FaissGallery.build(probe=...) <bt2_hf.galleries.FaissGallery.build>`.

    Args:
        items (`np.ndarray`, `torch.Tensor` or `list[str]`): held-out items: uint8 images ``(N, H, W)`` or
            ``(N, C, H, W)``, or texts.
        labels (`np.ndarray`): one class id per item.
        embeddings (`np.ndarray` of shape `(N, d)`): the gallery encoder's embeddings of ``items``.
        size (`int`, *optional*, defaults to 500): probe items to keep (all when fewer).
        seed (`int`, *optional*, defaults to 0): seed of the draw.
        description (`dict`, *optional*): where the items came from (dataset name, split), kept in the manifest.
    """
    labels = np.asarray(labels, dtype=np.int64)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(labels) != len(embeddings) or len(items) != len(labels):
        raise GalleryError(f"{len(items)} probe items, {len(labels)} labels and {len(embeddings)} embeddings: give "
                           "one label and one embedding per item.")  # fmt: skip
    if size < 2:
        raise GalleryError(f"A probe set needs at least 2 items (leave-one-out), got size {size}.")
    rows = _balanced_rows(labels, size, seed)
    probe = {"embeddings": embeddings[rows], "labels": labels[rows],
             "description": dict(description or {}, seed=int(seed))}  # fmt: skip
    if isinstance(items, (list, tuple)) and items and isinstance(items[0], str):
        probe["texts"] = [items[int(row)] for row in rows]
    else:
        images = items.numpy() if isinstance(items, torch.Tensor) else np.asarray(items)
        if images.dtype != np.uint8:
            raise GalleryError(f"Probe images must be uint8 arrays (as read from the dataset), got {images.dtype}.")
        probe["images"] = images[rows]
    return probe


def make_probe(
    encoder,
    data,
    size: int = DEFAULT_PROBE_SIZE,
    *,
    split: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device=None,
) -> dict:
    """Sample a probe set from a labelled dataset and embed it with the gallery's encoder.

    Args:
        encoder (`BT2Model`): the gallery's encoder (the model whose vectors the gallery holds).
        data (`str` or `GallerySource`): held-out data with labels (see :func:`bt2_hf.galleries.open_source`), e.g.
            the test split of an IDX directory.
        size (`int`, *optional*, defaults to 500): probe items, class-balanced.
        split (`str`, *optional*): the split of ``data``.
        seed (`int`, *optional*, defaults to 0): seed of the draw.
    """
    from .embed import encode_items
    from .sources import open_source

    source = open_source(data, split=split)
    labels = source.labels()
    if labels is None:
        raise GalleryError(f"{source.name} has no labels: a probe set needs labelled held-out data (an IDX split, or "
                           "a dataset with a ClassLabel column).")  # fmt: skip
    rows = _balanced_rows(np.asarray(labels), size, seed)
    if source.modality == "text":
        items = source.take(rows)
    else:
        taken = source.take(rows)
        items = taken if isinstance(taken, torch.Tensor) else _stack_images(taken, source.name)
    embeddings = encode_items(encoder, items, batch_size, device)
    description = {"dataset": source.name, "dataset_hash": source.fingerprint(), "split": split}
    return sample_probe(items if source.modality == "text" else np.asarray(items), np.asarray(labels)[rows],
                        embeddings, len(rows), seed=seed, description=description)  # fmt: skip


def _stack_images(images: list, name: str) -> torch.Tensor:
    arrays = [np.asarray(image) for image in images]
    if len({array.shape for array in arrays}) != 1 or arrays[0].dtype != np.uint8:
        raise GalleryError(f"The probe images of {name} differ in size or are not 8-bit: a probe set keeps them as one "
                           "uint8 array; resize them to one size first.")  # fmt: skip
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if stacked.ndim == 3 else np.moveaxis(stacked, -1, 1)  # (N, C, H, W)
    return torch.from_numpy(np.ascontiguousarray(stacked))


def _percent(metrics: dict) -> dict:
    from ..compatibility import canonical_metric

    return {canonical_metric(name): round(100.0 * float(value), 4) for name, value in metrics.items()}


def measure_on_probe(store, model, *, batch_size: int = 256, device=None) -> tuple[dict, int]:
    """old→old and new→old on the gallery's probe set, in percent, and the prefix compared.

    The old side is the gallery encoder's stored probe embeddings; the new side is ``model``'s embeddings of the
    stored probe items, cut to the gallery's width and re-normalised.
    """
    from ..retrieval import RetrievalEvaluator
    from ..retrieval.protocol import truncate
    from .embed import encode_items

    probe = store.probe()
    if probe is None:
        raise GalleryError(
            f"{store.location} has no probe set, so it cannot measure a model itself. Rebuild it with one: "
            "`bt2 index build ... --probe_from HELD_OUT_DATA --probe_size 500` (labelled data the encoder was not "
            "trained on)."
        )
    prefix = store.dimension
    if int(model.config.embedding_dim) < prefix:
        raise GalleryError(f"The candidate embeds {model.config.embedding_dim}-d vectors, fewer than the gallery's "
                           f"{prefix}: it cannot be compared with them.")  # fmt: skip
    if "texts" in probe:
        items = probe["texts"]
    else:
        images = torch.from_numpy(probe["images"])
        items = images.unsqueeze(1) if images.ndim == 3 else images
    new = np.asarray(encode_items(model, items, batch_size, device), dtype=np.float32)
    new = truncate(new, prefix, renormalize=True)
    old, labels = probe["embeddings"], probe["labels"]
    evaluator = RetrievalEvaluator(metrics=PROBE_METRICS)
    old_old = evaluator.evaluate(old, old, labels, labels, same_items=True)
    new_old = evaluator.evaluate(new, old, labels, labels, same_items=True)
    return {"old/old": _percent(old_old.metrics), "new/old": _percent(new_old.metrics)}, prefix


def admit_candidate(store, model, *, batch_size: int = 256, device=None, model_name: str | None = None) -> dict:
    """Measure a candidate query model on the gallery's probe set, judge it with the gallery's policy, log it.

    Nothing the candidate's config claims is read: not its ``compatible_with``, not its ``compatible_dim``. The
    entry appended to the gallery's admission log (atomically) is bound to the candidate's verified fingerprint;
    searches with that model are then admitted or refused on it.

    Args:
        store (`FaissGallery`): the gallery, with a probe set.
        model (`BT2Model`): the candidate, loaded with ``from_pretrained`` (its weights verified).
        batch_size (`int`, *optional*, defaults to 256): probe items per forward pass.
        device (`str`, *optional*): where to run the candidate.
        model_name (`str`, *optional*): how the log names the candidate (default: its ``name_or_path``).

    Returns:
        `dict`: the log entry (``passed``, ``reason``, ``metrics``, ``margin``, ``size`` …).
    """
    from .. import __version__

    fingerprint = query_model_fingerprint(model)
    if not fingerprint:
        raise GalleryError("The candidate has no verified fingerprint: load it with BT2Model.from_pretrained from a "
                           "saved checkpoint.")  # fmt: skip
    encoder = store.encoder
    if same_fingerprint(fingerprint, encoder.get("fingerprint")):
        raise GalleryError("The candidate is the gallery's own encoder: it searches the gallery without a gate.")
    policy: AdmissionPolicy = store.policy
    metrics, prefix = measure_on_probe(store, model, batch_size=batch_size, device=device)
    size = int(store.manifest["probe"]["size"])
    problem = judge_metrics(metrics, size, policy)
    margin = {name: round(metrics["new/old"][name] - metrics["old/old"][name], 4)
              for name in policy.required_metrics if name in metrics["new/old"]}  # fmt: skip
    entry = {
        "query_fingerprint": fingerprint,
        "query_name": model_name or getattr(model.config, "name_or_path", None),
        "encoder_fingerprint": encoder.get("fingerprint"),
        "prefix_dim": int(prefix),
        "size": size,
        "probe_sha256": store.manifest["files"].get(f"{PROBE_DIR}/embeddings.npy"),
        "metrics": metrics,
        "margin": margin,
        "policy": policy.to_dict(),
        "passed": problem is None,
        "reason": problem,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bt2_hf_version": __version__,
    }
    store.append_admission(entry)
    logger.info("Gate of %s: %s (fingerprint %s) %s.", store.location, entry["query_name"],
                short_fingerprint(fingerprint), "ADMITTED" if problem is None else f"REFUSED: {problem}")  # fmt: skip
    return entry
