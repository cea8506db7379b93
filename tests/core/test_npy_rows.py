"""Rows of a .npy table written in place: the file equals numpy's own fancy-index assignment, and bad calls are
refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.utils.npy_rows import npy_layout, write_npy_rows


def fresh_table(path, shape, dtype=np.float32):
    table = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    del table
    return np.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_rows_written_in_place_equal_numpys_assignment(tmp_path, dtype):
    path = tmp_path / "table.npy"
    expected = fresh_table(path, (1000, 7), dtype)
    rng = np.random.default_rng(0)
    for _ in range(3):  # unsorted rows, a repeated row (its last value wins), values of another dtype (cast)
        rows = rng.choice(1000, size=50, replace=False)
        rows[-1] = rows[0]
        values = rng.normal(size=(50, 7))
        write_npy_rows(path, rows, values)
        expected[rows] = values.astype(dtype)
    np.testing.assert_array_equal(np.load(path), expected)
    assert np.load(path).dtype == dtype


def test_without_pwrite_a_seek_and_write_give_the_same_file(tmp_path, monkeypatch):
    path = tmp_path / "table.npy"
    expected = fresh_table(path, (100, 5))
    monkeypatch.delattr("os.pwrite")  # as on Windows
    rows, values = np.array([70, 3, 41]), np.arange(15, dtype=np.float32).reshape(3, 5)
    write_npy_rows(path, rows, values)
    expected[rows] = values
    np.testing.assert_array_equal(np.load(path), expected)


def test_the_layout_is_read_from_the_header_of_either_format_version(tmp_path):
    for version in ((1, 0), (2, 0)):
        path = tmp_path / f"v{version[0]}.npy"
        with open(path, "wb") as file:
            np.lib.format.write_array(file, np.arange(12, dtype=np.float32).reshape(4, 3), version=version)
        dtype, shape, offset = npy_layout(path)
        assert (dtype, shape) == (np.float32, (4, 3)) and offset == path.stat().st_size - 48
        write_npy_rows(path, [2], [[-1.0, -2.0, -3.0]])
        np.testing.assert_array_equal(np.load(path)[2], [-1, -2, -3])


def test_bad_calls_are_refused_and_write_nothing(tmp_path):
    path = tmp_path / "table.npy"
    expected = fresh_table(path, (10, 4))
    with pytest.raises(IndexError, match="outside .*10 rows"):
        write_npy_rows(path, [3, 10], np.ones((2, 4)))
    with pytest.raises(IndexError, match="outside"):
        write_npy_rows(path, [-1], np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"values given have shape \(2, 5\)"):
        write_npy_rows(path, [1, 2], np.ones((2, 5)))
    np.testing.assert_array_equal(np.load(path), expected)
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(np.ones((3, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="Fortran-ordered"):
        write_npy_rows(fortran, [0], np.zeros((1, 4)))
