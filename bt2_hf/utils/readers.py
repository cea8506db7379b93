"""Readers of user-supplied files (npy / npz arrays, JSON configs and manifests) that fail with one clear error.

Whatever is wrong with a file (empty, truncated, not the format its name says, missing or malformed entries), the
reader raises :class:`bt2_hf.errors.BT2InputError` naming the file and the problem, never a raw ``EOFError``,
``zipfile.BadZipFile``, ``KeyError`` or ``json.JSONDecodeError``. Nothing here writes anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BT2InputError

# Reading a corrupted .npy/.npz can fail deep inside numpy or zipfile with many error types (EOFError, BadZipFile,
# zlib.error, struct.error, ValueError, SyntaxError from the header's literal, NotImplementedError for an unknown
# compression…); for a pure read each of them means "this file is bad".
_NUMPY_READ_ERRORS = (Exception,)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; any failure is a `BT2InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BT2InputError(f"the {what} does not exist.", path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise BT2InputError(f"the {what} is not valid JSON ({error}).", path) from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, one a line (blank lines skipped); a line that is not a JSON object is a
    :class:`BT2InputError` naming its number."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise BT2InputError(f"line {number} is not JSON ({error}).", path) from None
            if not isinstance(row, dict):
                raise BT2InputError(f"line {number} is not a JSON object.", path)
            rows.append(row)
    return rows


def load_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """Read a ``.npy`` file (no pickles) in full; a 0-byte, truncated or non-npy file is a `BT2InputError`."""
    path = Path(path)
    if not path.is_file():
        raise BT2InputError(f"the {what} file does not exist.", path)
    if path.stat().st_size == 0:
        raise BT2InputError(f"the file is empty (0 bytes); expected .npy {what} (write it with numpy.save).", path)
    try:
        return np.load(path, allow_pickle=False)
    except _NUMPY_READ_ERRORS as error:
        raise BT2InputError(
            f"cannot read it as a .npy {what} ({type(error).__name__}: {error or 'empty or truncated file'}); write it "
            "again with numpy.save.",
            path,
        ) from None


def load_npz(path: str | os.PathLike, what: str = "arrays") -> dict[str, np.ndarray]:
    """Read every array of a ``.npz`` file (no pickles); an empty, truncated or non-npz file is a `BT2InputError`."""
    path = Path(path)
    if not path.is_file():
        raise BT2InputError(f"the {what} file does not exist.", path)
    if path.stat().st_size == 0:
        raise BT2InputError(f"the file is empty (0 bytes); expected .npz {what} (write it with numpy.savez).", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except _NUMPY_READ_ERRORS as error:
        raise BT2InputError(
            f"cannot read it as a .npz file of {what} ({type(error).__name__}: {error or 'empty or truncated file'}); "
            "write it again with numpy.savez.",
            path,
        ) from None
    if not arrays:
        raise BT2InputError(f"the .npz file holds no arrays; expected {what}.", path)
    return arrays


def check_embeddings(array: Any, path: str | os.PathLike, name: str = "embeddings") -> np.ndarray:
    """A 2-D, non-empty, finite float matrix, as float32; anything else is a `BT2InputError` naming the file."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BT2InputError(f"'{name}' must be a non-empty (n, d) matrix, got shape {array.shape}.", path)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise BT2InputError(f"'{name}' must hold numbers, got dtype {array.dtype}.", path)
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
        raise BT2InputError(
            f"'{name}' has non-finite values (NaN or inf) in {len(rows)} rows, first row {rows[0]}.", path
        )
    return array


def check_labels(array: Any, path: str | os.PathLike, count: int, name: str = "labels") -> np.ndarray:
    """One integer label per item (``count`` of them), as int64; anything else is a `BT2InputError`."""
    array = np.asarray(array)
    if array.ndim != 1 or len(array) != count:
        raise BT2InputError(f"'{name}' must hold one label per item ({count}), got shape {array.shape}.", path)
    if not np.issubdtype(array.dtype, np.integer):
        if not (
            np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array))
        ):
            raise BT2InputError(f"'{name}' must be integer class ids, got dtype {array.dtype}.", path)
    return array.astype(np.int64)


def check_unique_ids(ids: list, path: str | os.PathLike, name: str = "ids") -> list:
    """Ids must be unique: a duplicate would make search results ambiguous."""
    seen: dict[str, int] = {}
    for row, item in enumerate(ids):
        key = json.dumps(item, sort_keys=True, default=str)
        if key in seen:
            raise BT2InputError(
                f"duplicate id {item!r} in '{name}' (rows {seen[key]} and {row}); ids must be unique.", path
            )
        seen[key] = row
    return ids
