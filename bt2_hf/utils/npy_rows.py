"""Rows of a ``.npy`` table written in place with positioned writes, then synced.

Why not a memory map: writing rows of a large, freshly created (sparse) table through ``np.load(mmap_mode="r+")``
page-faults on every page it touches, and the kernel maps and zero-fills the pages around each one. On the machine
of the serving benchmarks, the first 256 random rows of a 1M × 416 float32 table took 0.29 s of CPU that way and
9 ms with ``os.pwrite``; later slices 13-84 ms against 6 ms. A backfill inside ``bt2 serve`` is charged for that CPU
against its share of the time, so its first batch waited about ten seconds under continuous search load.

Not atomic: a crash can leave some rows written and others not. Callers write only rows that no reader reads yet
(a backfill's rows beyond its committed ``done``), and commit them afterwards.
"""

from __future__ import annotations

import os

import numpy as np


def npy_layout(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...], int]:
    """``(dtype, shape, offset of the data)`` of a C-ordered ``.npy`` file, read from its header only."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(
                f"{path} is a .npy file of format version {version}, which bt2_hf does not write in place."
            )
        shape, fortran_order, dtype = read_header[version](file)
        if fortran_order or dtype.hasobject:
            raise ValueError(f"{path} holds a Fortran-ordered or object array; rows can only be written in place in "
                             f"a C-ordered numeric table.")  # fmt: skip
        return dtype, tuple(shape), file.tell()


def write_npy_rows(path: str | os.PathLike, rows, values) -> None:
    """Write ``values[i]`` to row ``rows[i]`` of the 2-D ``.npy`` table at ``path`` (cast to its dtype), then fsync.

    Args:
        path (`str` or `os.PathLike`): an existing C-ordered 2-D ``.npy`` file.
        rows (array-like of `int`): row numbers, each in ``[0, len(table))``; a row given twice keeps its last value.
        values (`np.ndarray`): ``(len(rows), width)``, the table's width.
    """
    dtype, shape, offset = npy_layout(path)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    values = np.asarray(values)
    if len(shape) != 2 or values.shape != (len(rows), shape[1]):
        raise ValueError(f"{len(rows)} rows of width {shape[1:] or '?'} go into {path} (shape {shape}); the values "
                         f"given have shape {values.shape}.")  # fmt: skip
    if len(rows) and (rows.min() < 0 or rows.max() >= shape[0]):
        raise IndexError(f"Rows {rows.min()}..{rows.max()} are outside {path}'s {shape[0]} rows.")
    data = np.ascontiguousarray(values, dtype=dtype)
    row_bytes = shape[1] * dtype.itemsize
    descriptor = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))  # O_BINARY: Windows would translate newlines
    try:
        # in row order, so that the last of a repeated row wins as in numpy's assignment (stable sort)
        for position in np.argsort(rows, kind="stable"):
            _write_all(descriptor, data[position].tobytes(), offset + int(rows[position]) * row_bytes)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_all(descriptor: int, payload: bytes, at: int) -> None:
    """Write ``payload`` at offset ``at`` until every byte is written (a write may write fewer bytes than asked):
    ``os.pwrite`` where the platform has it (not Windows), else a seek and a write."""
    view = memoryview(payload)
    while view:
        if hasattr(os, "pwrite"):
            written = os.pwrite(descriptor, view, at)
        else:
            os.lseek(descriptor, at, os.SEEK_SET)
            written = os.write(descriptor, view)
        view, at = view[written:], at + written
