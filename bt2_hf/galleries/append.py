"""Add items to a faiss gallery after it was built, atomically; during a backfill, as already re-embedded items.

A gallery keeps its encoder's vector for every item, and during a backfill the new model's vector for the items
of its order's first ``done`` positions. An added item therefore carries both: the encoder's vector (so old-model
queries and the new→old ranking find it) and, while a backfill is recorded, the backfill model's vector, inserted
into the order at position ``done`` with ``done`` incremented, so the slot rule treats it as re-embedded and the
backfill never embeds it again.

The directory is rebuilt in a staging folder and swapped in (``atomic_directory``): a crash leaves the gallery
before or after the whole write. A gallery object opened before the write can still be searched after it (writes
go through the reopened one): the rows it knows are a prefix of every rewritten file, and the first ``done``
entries of the backfill order are unchanged. Ids already in the gallery are skipped, so a write retried after a
crash adds each item once. The cost is a copy of the gallery's files per call: add items in batches.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np

from ..retrieval.knn import import_faiss
from ..utils.io import atomic_directory, atomic_write_json
from .faiss_store import CHUNK, MANIFEST_NAME, FaissGallery, GalleryError
from .shards import file_sha256, ids_array

logger = logging.getLogger(__name__)


def _unit(array) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def _gallery_ids(store: FaissGallery, ids: list) -> np.ndarray:
    """The new ids in the gallery's id type (int64 galleries take ints or digit strings, others strings)."""
    existing = np.load(store.directory / "ids.npy", mmap_mode="r")
    if np.issubdtype(existing.dtype, np.integer):
        try:
            return np.asarray([int(item) for item in ids], dtype=np.int64)
        except (TypeError, ValueError):
            raise GalleryError(f"This gallery's ids are integers; {ids[:3]} are not.") from None
    return np.asarray([str(item) for item in ids], dtype=np.str_)


def _label_codes(store: FaissGallery, labels, count: int) -> tuple[np.ndarray | None, list | None]:
    names = list(store.label_names or [])
    if labels is None:
        return None, None
    codes = []
    for label in labels:
        if label is None:
            codes.append(-1)
        elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            codes.append(int(label))
        elif not names and str(label).isdigit():  # a gallery of class ids: "7" is class 7
            codes.append(int(label))
        elif names or not (store.manifest.get("items") or {}).get("labels"):
            if str(label) not in names:
                names.append(str(label))
            codes.append(names.index(str(label)))
        else:
            raise GalleryError(f"This gallery's labels are class ids without names; give an integer, not {label!r}.")
    return np.asarray(codes, dtype=np.int64), names or None


def append_items(
    store: FaissGallery,
    vectors,
    ids: list,
    *,
    backfill_vectors=None,
    labels: list | None = None,
    paths: list | None = None,
) -> tuple[FaissGallery, list]:
    """Add items to a faiss gallery in one atomic rewrite; returns the reopened gallery and the ids added.

    Args:
        store (`FaissGallery`): the gallery (nothing else may write to it meanwhile: the caller serialises writers).
        vectors (`np.ndarray` of shape `(m, d)`): the gallery encoder's embeddings of the items.
        ids (`list`): one new id per item; ids already in the gallery are skipped (the write is idempotent).
        backfill_vectors (`np.ndarray` of shape `(m, d_new)`, *optional*): the backfill model's embeddings; required
            while the gallery records a backfill, refused otherwise.
        labels (`list`, *optional*): class names or ids (``None`` = unknown).
        paths (`list[str]`, *optional*): each item's file path or source.
    """
    if not isinstance(store, FaissGallery):
        raise GalleryError("Items can be added to faiss galleries only (Milvus: insert with its client).")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(ids), store.dimension):
        raise GalleryError(f"{len(ids)} items need {len(ids)} × {store.dimension} encoder vectors, got "
                           f"{vectors.shape}.")  # fmt: skip
    new_ids = _gallery_ids(store, list(ids))
    if len(np.unique(new_ids)) != len(new_ids):
        raise GalleryError("The same id is given twice in one write: give each item once.")
    state = store.backfill_state
    if state is not None and backfill_vectors is None:
        raise GalleryError(f"A backfill with {state['model'].get('name_or_path')} is recorded: each item needs that "
                           "model's vector too (dual-write), else it would stay un-re-embedded forever.")  # fmt: skip
    if state is None and backfill_vectors is not None:
        raise GalleryError("No backfill is recorded on this gallery: give only its encoder's vectors.")
    if state is not None:
        backfill_vectors = np.asarray(backfill_vectors, dtype=np.float32)
        if backfill_vectors.shape != (len(ids), state["dimension"]):
            raise GalleryError(f"The backfill model's vectors must be {len(ids)} × {state['dimension']}, got "
                               f"{backfill_vectors.shape}.")  # fmt: skip
    existing = np.load(store.directory / "ids.npy", allow_pickle=False)
    fresh = ~np.isin(new_ids, existing)
    if not fresh.any():
        return store, []
    keep = np.flatnonzero(fresh)
    new_ids, vectors = new_ids[keep], _unit(vectors[keep])
    label_codes, label_names = _label_codes(store, None if labels is None else [labels[i] for i in keep], len(keep))
    new_paths = None if paths is None else ["" if paths[i] is None else str(paths[i]) for i in keep]
    count, added, dimension = len(store), len(keep), store.dimension
    manifest = store.manifest
    items = dict(manifest.get("items") or {"labels": None, "label_names": None, "paths": None})
    source = store.directory
    with atomic_directory(source, overwrite=True) as tmp:
        table = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.dtype(manifest["dtype"]),
                                          shape=(count + added, dimension))  # fmt: skip
        old = np.load(source / "vectors.npy", mmap_mode="r")
        for start in range(0, count, CHUNK):
            stop = min(count, start + CHUNK)
            table[start:stop] = old[start:stop]
        table[count:] = vectors.astype(table.dtype)
        table.flush()
        del table, old
        faiss = import_faiss()
        index = faiss.read_index(str(source / "index.faiss"))
        index.add(np.ascontiguousarray(vectors))
        faiss.write_index(index, str(tmp / "index.faiss"))
        np.save(tmp / "ids.npy", ids_array(existing.tolist() + new_ids.tolist()), allow_pickle=False)
        changed = ["vectors.npy", "index.faiss", "ids.npy"]
        if items.get("labels") or label_codes is not None:
            before = (np.load(source / items["labels"], allow_pickle=False) if items.get("labels")
                      else np.full(count, -1, dtype=np.int64))  # fmt: skip
            extra = label_codes if label_codes is not None else np.full(added, -1, dtype=np.int64)
            np.save(tmp / "labels.npy", np.concatenate([before, extra]).astype(np.int64), allow_pickle=False)
            items.update(labels="labels.npy", label_names=label_names or items.get("label_names"))
            changed.append("labels.npy")
        if items.get("paths") or new_paths is not None:
            before = (np.load(source / items["paths"], allow_pickle=False).tolist() if items.get("paths")
                      else [""] * count)  # fmt: skip
            extra = new_paths if new_paths is not None else [""] * added
            np.save(tmp / "paths.npy", np.asarray(before + extra, dtype=np.str_), allow_pickle=False)
            items["paths"] = "paths.npy"
            changed.append("paths.npy")
        for name in manifest["files"]:
            if name not in changed:  # unchanged files (the probe set): linked, not copied
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(source / name, tmp / name)
        new_manifest = dict(manifest, count=count + added, items=items)
        if state is not None:
            _append_backfill(source, tmp, manifest["dtype"], state, count, backfill_vectors[keep])
            new_manifest["backfill"] = dict(state, done=int(state["done"]) + added, count=count + added,
                                            target=max(int(state.get("target", 0)), int(state["done"]) + added))  # fmt: skip
        files = dict(manifest["files"])
        sizes = dict(manifest.get("file_sizes") or {})
        for name in changed:
            files[name], sizes[name] = file_sha256(tmp / name), (tmp / name).stat().st_size
        new_manifest.update(files=files, file_sizes=sizes)
        atomic_write_json(tmp / MANIFEST_NAME, new_manifest)
    logger.info("Added %d items to %s (%d now).", added, source, count + added)
    return FaissGallery.open(source, verify=False), new_ids.tolist()


def _link_or_copy(source, destination) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _append_backfill(source, tmp, dtype: str, state: dict, count: int, new_vectors: np.ndarray) -> None:
    """The backfill folder with the new rows inserted at the order's position ``done`` (re-embedded already)."""
    (tmp / "backfill").mkdir()
    order = np.load(source / "backfill" / "order.npy", allow_pickle=False)
    done, added = int(state["done"]), len(new_vectors)
    new_rows = np.arange(count, count + added, dtype=np.int64)
    np.save(tmp / "backfill" / "order.npy", np.concatenate([order[:done], new_rows, order[done:]]), allow_pickle=False)
    old = np.load(source / "backfill" / "vectors.npy", mmap_mode="r")
    table = np.lib.format.open_memmap(tmp / "backfill" / "vectors.npy", mode="w+", dtype=np.dtype(dtype),
                                      shape=(count + added, old.shape[1]))  # fmt: skip
    for start in range(0, count, CHUNK):
        stop = min(count, start + CHUNK)
        table[start:stop] = old[start:stop]
    table[count:] = _unit(new_vectors).astype(table.dtype)
    table.flush()
