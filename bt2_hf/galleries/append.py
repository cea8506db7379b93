"""Add items to a faiss gallery after it was built, at the cost of what is added; fold them in later.

A gallery keeps its encoder's vector for every item, and during a backfill the new model's vector for the items
of its order's first ``done`` positions. An added item therefore carries both: the encoder's vector (so old-model
queries and the new→old ranking find it) and, while a backfill is recorded, the backfill model's vector; it is
placed in the order at position ``done`` with ``done`` incremented, so the slot rule treats it as re-embedded and
the backfill never embeds it again.

:func:`append_items` appends the rows to the gallery's append-only files (``appended.py``: the files are fsynced,
then the manifest records their new lengths, atomically: the commit point), then adds them to the open gallery in
memory (its faiss index with ``index.add``, its ids, labels, paths and backfill state) while the caller's write lock
is held, so the next search finds them. A write costs the rows it adds, whatever the gallery's size; a ``kill -9``
at any point leaves the gallery before or after the whole write. Ids already in the gallery (appended ones
included) are skipped, so a write retried after a crash adds each item once.

:func:`compact_gallery` (``bt2 gallery compact DIR``) folds the appended rows into the base files with one atomic
rewrite of the directory (built in a staging folder and swapped in), the cost the appended files avoid per write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

import numpy as np

from ..retrieval.knn import import_faiss
from ..retrieval.protocol import l2_normalize
from ..utils.io import atomic_directory, atomic_write_json, fsync_directory
from .appended import (
    APPENDED_DIR,
    BACKFILL_FILE,
    EMPTY_DIGEST,
    ITEMS_FILE,
    VECTORS_FILE,
    append_to_file,
    chain_digest,
    empty_record,
    item_line,
    writer_lock,
)
from .faiss_store import (
    APPENDED_FORMAT,
    CHUNK,
    GALLERY_FORMAT,
    MANIFEST_NAME,
    FaissGallery,
    GalleryError,
    read_manifest,
)
from .shards import file_sha256, ids_array

logger = logging.getLogger(__name__)


class StaleGalleryError(GalleryError):
    """The gallery's files changed since this object opened it (another writer, or a compaction): open it again."""


def _gallery_ids(store: FaissGallery, ids: list) -> np.ndarray:
    """The new ids in the gallery's id type (int64 galleries take ints or digit strings, others strings)."""
    if np.issubdtype(store.id_dtype, np.integer):
        try:
            return np.asarray([int(item) for item in ids], dtype=np.int64)
        except (TypeError, ValueError):
            raise GalleryError(f"This gallery's ids are integers; {ids[:3]} are not.") from None
    return np.asarray([str(item) for item in ids], dtype=np.str_)


def _label_codes(store: FaissGallery, labels) -> tuple[list[int] | None, list | None]:
    names = list(store.label_names or [])
    if labels is None or all(label is None for label in labels):
        return None, None
    has_labels = bool((store.manifest.get("items") or {}).get("labels")) or (
        store.appended is not None and store.appended.has_labels)  # fmt: skip
    codes = []
    for label in labels:
        if label is None:
            codes.append(-1)
        elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            codes.append(int(label))
        elif not names and str(label).isdigit():  # a gallery of class ids: "7" is class 7
            codes.append(int(label))
        elif names or not has_labels:
            if str(label) not in names:
                names.append(str(label))
            codes.append(names.index(str(label)))
        else:
            raise GalleryError(f"This gallery's labels are class ids without names; give an integer, not {label!r}.")
    return codes, names or None


def _committed(manifest: dict) -> tuple:
    # what a write builds on: another writer or a compaction since this object read its manifest changes it
    return manifest["count"], manifest.get("appended"), (manifest.get("backfill") or {}).get("done")


@contextlib.contextmanager
def _writing(store: FaissGallery):
    """The directory's writer lock, and the refusal of a gallery object that no longer matches its files."""
    with writer_lock(store.directory):
        on_disk = read_manifest(store.directory)
        if _committed(on_disk) != _committed(store.manifest):
            raise StaleGalleryError(
                f"{store.directory} changed since this gallery object opened it ({on_disk['count']} items on disk, "
                f"{len(store)} here): another process wrote to it or compacted it. Open it again and retry.",
                store.directory,
            )
        yield


def append_items(
    store: FaissGallery,
    vectors,
    ids: list,
    *,
    backfill_vectors=None,
    labels: list | None = None,
    paths: list | None = None,
    swap=None,
) -> tuple[FaissGallery, list]:
    """Add items to a faiss gallery: appended to its files (committed by the manifest), then to the open gallery.

    Args:
        store (`FaissGallery`): the open gallery, changed in place (one writer at a time: the caller serialises its
            threads; other processes wait on the directory's lock, and a gallery object that another process wrote
            to since it was opened is refused with :class:`StaleGalleryError`).
        vectors (`np.ndarray` of shape `(m, d)`): the gallery encoder's embeddings of the items.
        ids (`list`): one new id per item; ids already in the gallery are skipped (the write is idempotent).
        backfill_vectors (`np.ndarray` of shape `(m, d_new)`, *optional*): the backfill model's embeddings; required
            while the gallery records a backfill, refused otherwise.
        labels (`list`, *optional*): class names or ids (``None`` = unknown).
        paths (`list[str]`, *optional*): each item's file path or source.
        swap (`Callable`, *optional*): returns a context manager held while the open gallery takes the new rows
            (a service's write lock: its searches never see half a write); the files are written before it.

    Returns:
        `tuple`: the gallery (``store`` itself) and the ids added.
    """
    if not isinstance(store, FaissGallery):
        raise GalleryError("Items can be added to faiss galleries only (Milvus: insert with its client).")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(ids), store.dimension):
        raise GalleryError(f"{len(ids)} items need {len(ids)} × {store.dimension} encoder vectors, got "
                           f"{vectors.shape}.")  # fmt: skip
    if not np.isfinite(vectors).all() or (backfill_vectors is not None and
                                          not np.isfinite(np.asarray(backfill_vectors, dtype=np.float32)).all()):  # fmt: skip
        raise GalleryError("An item's vector holds NaN or infinite values: embed it again; nothing was written.")
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
    with _writing(store):
        keep = np.flatnonzero(~store.contains_ids(new_ids))
        if not len(keep):
            return store, []
        return store, _append(store, new_ids[keep], vectors[keep], None if state is None else backfill_vectors[keep],
                              None if labels is None else [labels[i] for i in keep],
                              None if paths is None else [paths[i] for i in keep], swap)  # fmt: skip


def _append(store: FaissGallery, new_ids, vectors, backfill_vectors, labels, paths, swap) -> list:
    manifest, state, directory = store.manifest, store.backfill_state, store.directory
    dtype, count, added = np.dtype(manifest["dtype"]), len(store), len(new_ids)
    codes, label_names = _label_codes(store, labels)
    new_paths = (
        None if paths is None or all(p is None for p in paths) else ["" if p is None else str(p) for p in paths]
    )
    encoder_rows = l2_normalize(vectors).astype(dtype)
    backfill_rows = None if backfill_vectors is None else l2_normalize(backfill_vectors).astype(dtype)
    lines = [item_line(item, None if codes is None else codes[i], None if new_paths is None else new_paths[i])
             for i, item in enumerate(new_ids.tolist())]  # fmt: skip
    record = manifest.get("appended") or empty_record(False)
    files = {name: dict(entry) for name, entry in record["files"].items()}
    writes = [(VECTORS_FILE, list(encoder_rows)), (ITEMS_FILE, lines)]
    if backfill_rows is not None:
        files.setdefault(BACKFILL_FILE, {"bytes": 0, "rows": 0, "digest": EMPTY_DIGEST})
        writes.append((BACKFILL_FILE, list(backfill_rows)))
    elif BACKFILL_FILE in files:
        raise GalleryError("The appended rows hold a backfill model's vectors but no backfill is recorded: the "
                           "manifest was edited.", directory / MANIFEST_NAME)  # fmt: skip
    created = not all((directory / name).exists() for name, _ in writes)
    for name, records in writes:
        records = [r.tobytes() if isinstance(r, np.ndarray) else r for r in records]
        entry = files[name]
        data = b"".join(records)
        try:
            append_to_file(directory / name, entry["bytes"], data)
        except OSError as error:
            raise GalleryError(
                f"could not append to it ({error}); the gallery is unchanged.", directory / name
            ) from None
        files[name] = {"bytes": entry["bytes"] + len(data), "rows": entry["rows"] + len(records),
                       "digest": chain_digest(entry["digest"], records)}  # fmt: skip
    if created:  # the new files' directory entries must outlive a crash before the manifest names them
        fsync_directory(directory / APPENDED_DIR)
        fsync_directory(directory)
    items = dict(manifest.get("items") or {"labels": None, "label_names": None, "paths": None})
    if label_names:
        items["label_names"] = label_names
    new_manifest = dict(manifest, format=APPENDED_FORMAT, count=count + added, items=items,
                        appended={"count": int(record["count"]) + added, "files": files})  # fmt: skip
    new_rows = np.arange(count, count + added, dtype=np.int64)
    search = None
    if state is not None:
        done = int(state["done"])
        new_manifest["backfill"] = dict(state, done=done + added, count=count + added,
                                        target=max(int(state.get("target", 0)), done + added))  # fmt: skip
        search = store.backfill_search_with(new_rows, backfill_rows)  # prepared before the lock, as a commit's
    # the commit point; the appended rows are made durable with the manifest's temporary file, before its rename
    atomic_write_json(directory / MANIFEST_NAME, new_manifest, sync_also=[directory / name for name, _ in writes])
    with swap() if swap is not None else contextlib.nullcontext():
        store.take_appended(new_manifest, encoder_rows, new_ids.tolist(), codes, new_paths, backfill_rows, search)
    logger.info("Appended %d items to %s (%d now).", added, directory, count + added)
    return new_ids.tolist()


def compact_gallery(store: FaissGallery) -> FaissGallery:
    """Fold a gallery's appended rows into its base files: one atomic rewrite of the directory; returns it reopened.

    The faiss index is written from the open gallery's (its base rows plus the appended ones, added as they came), so
    searches rank as before the compaction. A gallery without appended rows is returned as it is. A service swaps
    the returned gallery in under its write lock; until then its searches read the open one (the same rows).

    Args:
        store (`FaissGallery`): the open gallery (nothing may append to it meanwhile).
    """
    if not isinstance(store, FaissGallery):
        raise GalleryError("Only faiss galleries have appended rows to compact.")
    if store.appended is None or not len(store.appended):
        return store
    with _writing(store):
        _rewrite(store)
    logger.info("Compacted %s: %d appended items folded into its files (%d items).", store.directory,
                len(store.appended), len(store))  # fmt: skip
    return FaissGallery.open(store.directory, verify=False)


def _rewrite(store: FaissGallery) -> None:
    manifest, source, state = store.manifest, store.directory, store.backfill_state
    count, base, dimension = len(store), store.base_count, store.dimension
    items = dict(manifest.get("items") or {"labels": None, "label_names": None, "paths": None})
    with atomic_directory(source, overwrite=True) as tmp:
        table = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.dtype(manifest["dtype"]),
                                          shape=(count, dimension))  # fmt: skip
        for start in range(0, base, CHUNK):
            stop = min(base, start + CHUNK)
            table[start:stop] = store.vectors[start:stop]
        table[base:] = store.appended.vectors.array
        table.flush()
        del table
        import_faiss().write_index(store.index, str(tmp / "index.faiss"))
        np.save(tmp / "ids.npy", ids_array(store.ids_of(np.arange(count))), allow_pickle=False)
        changed = ["vectors.npy", "index.faiss", "ids.npy"]
        codes, paths = store.label_codes(), store.all_paths()
        if codes is not None:
            np.save(tmp / "labels.npy", codes, allow_pickle=False)
            items["labels"] = "labels.npy"
            changed.append("labels.npy")
        if paths is not None:
            np.save(tmp / "paths.npy", np.asarray(paths, dtype=np.str_), allow_pickle=False)
            items["paths"] = "paths.npy"
            changed.append("paths.npy")
        for name in manifest["files"]:
            if name not in changed:  # unchanged files (the probe set): linked, not copied
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(source / name, tmp / name)
        new_manifest = {key: value for key, value in manifest.items() if key != "appended"}
        new_manifest.update(format=GALLERY_FORMAT, count=count, items=items)
        if state is not None:
            _fold_backfill(store, tmp)
            new_manifest["backfill"] = dict(state, count=count)
        files = dict(manifest["files"])
        sizes = dict(manifest.get("file_sizes") or {})
        for name in changed:
            files[name], sizes[name] = file_sha256(tmp / name), (tmp / name).stat().st_size
        new_manifest.update(files=files, file_sizes=sizes)
        atomic_write_json(tmp / MANIFEST_NAME, new_manifest)


def _link_or_copy(source, destination) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _fold_backfill(store: FaissGallery, tmp) -> None:
    """The backfill folder over every row: the order as it stands, the table with the appended rows' new vectors."""
    (tmp / "backfill").mkdir()
    np.save(tmp / "backfill" / "order.npy", store.backfill_order().astype(np.int64), allow_pickle=False)
    old = np.load(store.directory / "backfill" / "vectors.npy", mmap_mode="r")
    table = np.lib.format.open_memmap(tmp / "backfill" / "vectors.npy", mode="w+", dtype=old.dtype,
                                      shape=(len(store), old.shape[1]))  # fmt: skip
    for start in range(0, len(old), CHUNK):
        stop = min(len(old), start + CHUNK)
        table[start:stop] = old[start:stop]
    if len(old) < len(store):
        table[len(old) :] = store.appended.backfill.array
    table.flush()
