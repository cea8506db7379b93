"""Items added to a faiss gallery after its build: append-only files whose committed length is in the manifest.

A dual-write (``POST /items`` of ``bt2 serve``) must cost what it writes, not what the gallery holds: rewriting a
million-item gallery's files took seconds per item. The gallery directory therefore gets one folder of append-only
files for the rows added after the build (``appended/``):

    vectors.bin      the gallery encoder's unit vectors of the added rows, raw, in the gallery's dtype, row after row
    backfill.bin     while a backfill is recorded: the backfill model's unit vectors of the rows added during it
                     (they are the gallery's last rows; the rows added before it started sit in its table)
    items.jsonl      one JSON line per added row: its id, and its class code and path when given

The manifest's ``appended`` record is the commit point: for each file, the bytes and rows committed and a digest
chained over its rows (``d_i = sha256(d_{i-1} || row_i)``, so a write hashes only what it adds and a reader checks
every committed row). A write appends its rows to each file, then rewrites the manifest atomically with the new
lengths, the appended files fsynced together with the manifest's temporary file before its rename (one wait on the
disk, where one fsync after another took 16 ms of a write's 25); bytes beyond the committed lengths (a write killed before its manifest) are ignored by
readers and truncated by the next write. So a ``kill -9`` at any point leaves the gallery before or after the
whole write.

Why one set of growing files rather than one small segment per write: a segment per write makes the manifest (and
the directory) grow with the number of writes, and opening a gallery that was fed one item at a time for a day
would read thousands of files. Here a write touches three files and a manifest of constant size whatever came
before; the cost left is the appended rows held in memory (and re-added to the faiss index when the gallery opens),
which :func:`bt2_hf.galleries.append.compact_gallery` (``bt2 gallery compact DIR``) folds into the base files
with one atomic full rewrite, as a finalised backfill does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..utils.io import file_operation_done

APPENDED_DIR = "appended"
VECTORS_FILE = f"{APPENDED_DIR}/vectors.bin"
BACKFILL_FILE = f"{APPENDED_DIR}/backfill.bin"
ITEMS_FILE = f"{APPENDED_DIR}/items.jsonl"
LOCK_FILE = f"{APPENDED_DIR}/.lock"
EMPTY_DIGEST = "0" * 64


class _Growing:
    """A 2-d array that grows by whole rows at its end (capacity doubles), readable as ``array[:rows]``."""

    def __init__(self, width: int, dtype, rows: np.ndarray | None = None):
        rows = np.empty((0, width), dtype=dtype) if rows is None else rows
        self._array = np.array(rows, dtype=dtype, copy=True).reshape(-1, width)
        self.rows = len(self._array)

    @property
    def array(self) -> np.ndarray:
        return self._array[: self.rows]

    def append(self, block: np.ndarray) -> None:
        needed = self.rows + len(block)
        if needed > len(self._array):
            grown = np.empty((max(needed, 2 * len(self._array), 64), self._array.shape[1]), dtype=self._array.dtype)
            grown[: self.rows] = self._array[: self.rows]
            self._array = grown
        self._array[self.rows : needed] = block
        self.rows = needed


def chain_digest(previous: str, records) -> str:
    """The digest after ``records`` (bytes each), chained from ``previous`` (hex; :data:`EMPTY_DIGEST` at first)."""
    digest = bytes.fromhex(previous)
    for record in records:
        digest = hashlib.sha256(digest + record).digest()
    return digest.hex()


def empty_record(with_backfill: bool) -> dict:
    names = [VECTORS_FILE, ITEMS_FILE] + ([BACKFILL_FILE] if with_backfill else [])
    return {"count": 0, "files": {name: {"bytes": 0, "rows": 0, "digest": EMPTY_DIGEST} for name in names}}


class AppendedRows:
    """The committed appended rows of a gallery, in memory: what every row reader adds to the base files.

    Args:
        base (`int`): rows in the base files (``vectors.npy``, ``ids.npy``, ``index.faiss``); appended row ``i`` is
            gallery row ``base + i``.
        dimension (`int`): the encoder's width.
        dtype (`str`): the gallery's vector dtype.
    """

    def __init__(self, base: int, dimension: int, dtype: str):
        self.base = int(base)
        self.dtype = np.dtype(dtype)
        self.vectors = _Growing(dimension, self.dtype)
        self.backfill: _Growing | None = None  # the backfill model's vectors of the last rows, during a backfill
        self.ids: list = []
        self.id_set: set = set()
        self.labels: list[int] = []
        self.paths: list[str] = []
        self.has_labels = self.has_paths = False

    def __len__(self) -> int:
        return self.vectors.rows

    def add(self, vectors: np.ndarray, ids: list, labels: list[int] | None, paths: list[str] | None,
            backfill: np.ndarray | None = None) -> None:  # fmt: skip
        """Append committed rows (``vectors`` in the gallery's dtype, unit already)."""
        self.vectors.append(vectors)
        self.ids.extend(ids)
        self.id_set.update(ids)
        self.labels.extend(labels if labels is not None else [-1] * len(ids))
        self.paths.extend(paths if paths is not None else [""] * len(ids))
        self.has_labels |= labels is not None and any(code >= 0 for code in labels)
        self.has_paths |= paths is not None and any(paths)
        if backfill is not None:
            if self.backfill is None:
                self.backfill = _Growing(backfill.shape[1], self.dtype)
            self.backfill.append(backfill)

    def rows_of(self, rows: np.ndarray) -> np.ndarray:
        """Positions in the appended part of gallery ``rows`` (all ``>= base``)."""
        return np.asarray(rows, dtype=np.int64) - self.base


def item_line(item_id, label: int | None, path: str | None) -> bytes:
    """One row of ``items.jsonl``: ASCII JSON (newlines in paths escaped), ending with a newline."""
    record = {"id": item_id.item() if isinstance(item_id, np.generic) else item_id}
    if label is not None and label >= 0:
        record["label"] = int(label)
    if path:
        record["path"] = path
    return (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def read_appended(directory: Path, manifest: dict, backfill_dim: int | None, verify: bool, error) -> AppendedRows:
    """The committed appended rows of a gallery directory (``manifest['appended']``), their lengths checked and, with
    ``verify``, their chained digests. ``error(problem, path)`` builds the exception raised on a mismatch."""
    record = manifest["appended"]
    count, base = int(record["count"]), int(manifest["count"]) - int(record["count"])
    rows = AppendedRows(base, int(manifest["dimension"]), manifest["dtype"])
    files = record.get("files") or {}
    width = {VECTORS_FILE: int(manifest["dimension"]), BACKFILL_FILE: backfill_dim}
    data = {}
    for name, entry in files.items():
        path = directory / name
        if name not in (VECTORS_FILE, BACKFILL_FILE, ITEMS_FILE) or (name == BACKFILL_FILE and backfill_dim is None):
            raise error(f"the manifest lists an appended file {name!r} this gallery cannot have; it was edited.",
                        directory / "manifest.json")  # fmt: skip
        size = path.stat().st_size if path.is_file() else None
        if size is None or size < entry["bytes"]:
            raise error(f"holds {size} bytes, fewer than the {entry['bytes']} its manifest committed: the file is "
                        "missing or truncated. Restore the gallery from a copy.", path)  # fmt: skip
        with open(path, "rb") as handle:
            content = handle.read(entry["bytes"])  # bytes beyond it: a write killed before its commit
        if name == ITEMS_FILE:
            records = content.splitlines(keepends=True)
            if len(records) != entry["rows"]:
                raise error(f"holds {len(records)} committed lines, its manifest says {entry['rows']}.", path)
        else:
            row_bytes = width[name] * rows.dtype.itemsize
            if len(content) != entry["rows"] * row_bytes:
                raise error(f"{len(content)} bytes for {entry['rows']} rows of {row_bytes}: the manifest was edited.",
                            path)  # fmt: skip
            records = [content[i : i + row_bytes] for i in range(0, len(content), row_bytes)] if verify else None
        if verify and chain_digest(EMPTY_DIGEST, records) != entry["digest"]:
            raise error("does not match the digest of its committed rows in the manifest: it was changed. Restore "
                        "the gallery from a copy.", path)  # fmt: skip
        data[name] = (content, records)
    if VECTORS_FILE not in data or ITEMS_FILE not in data or files[VECTORS_FILE]["rows"] != count or \
            files[ITEMS_FILE]["rows"] != count:  # fmt: skip
        raise error(f"the manifest's appended record does not add up to {count} rows; it was edited.",
                    directory / "manifest.json")  # fmt: skip
    vectors = np.frombuffer(data[VECTORS_FILE][0], dtype=rows.dtype).reshape(count, -1)
    # one parse of every line (a parse per line took 10 µs: a third of a second per 30k appended items)
    items = json.loads(b"[" + b",".join(line.rstrip(b"\n") for line in data[ITEMS_FILE][1]) + b"]")
    backfill = None
    if BACKFILL_FILE in data:
        backfill = np.frombuffer(data[BACKFILL_FILE][0], dtype=rows.dtype).reshape(-1, backfill_dim)
    rows.add(vectors, [item["id"] for item in items], [int(item.get("label", -1)) for item in items],
             [str(item.get("path", "")) for item in items])  # fmt: skip
    if backfill is not None:
        rows.backfill = _Growing(backfill_dim, rows.dtype, backfill)
    return rows


@contextlib.contextmanager
def writer_lock(directory: Path):
    """An exclusive lock on the gallery's appended files between processes (``flock``; none where it is missing)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: writers must be serialised by their caller, as documented
        yield
        return
    (directory / APPENDED_DIR).mkdir(exist_ok=True)
    descriptor = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def append_to_file(path: Path, committed: int, data: bytes) -> None:
    """Cut ``path`` back to its ``committed`` bytes (what a killed write left beyond them goes) and append ``data``
    (not yet durable: the manifest's write fsyncs it). Counted as one file operation (the crash tests kill after any of them)."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        if size < committed:
            raise OSError(f"{path} holds {size} bytes, fewer than the {committed} committed")
        if size > committed:
            os.ftruncate(descriptor, committed)
        os.lseek(descriptor, committed, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)
    file_operation_done()
