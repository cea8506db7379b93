"""Directory writes: staged beside the target, swapped in whole, stale leftovers cleaned (bt2_hf.utils.io)."""

from __future__ import annotations

import pytest

import bt2_hf.utils.io as io_module
from bt2_hf.utils.io import atomic_directory, recover_directory

DEAD_PID = 2**22 + 12345  # above Linux's default pid_max: no such process


def _write(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_swap_replaces_whole_and_carries_other_entries(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(io_module, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    _write(target, {"model.bin": "old", "notes.txt": "keep", "stale.bin": "old"})
    with atomic_directory(target, keep_other_entries=True, never_keep=lambda n: n.endswith(".bin")) as staging:
        _write(staging, {"model.bin": "new"})
        assert (target / "model.bin").read_text() == "old"  # untouched until the block succeeds
    assert {p.name: p.read_text() for p in target.iterdir()} == {"model.bin": "new", "notes.txt": "keep"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_leaves_the_previous_version_and_no_staging(tmp_path):
    target = tmp_path / "out"
    _write(target, {"a": "old"})
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            _write(staging, {"a": "new"})
            raise RuntimeError("crash")
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_directory(target, overwrite=False):
            pass


def test_leftovers_of_killed_writes_are_cleaned_and_an_interrupted_swap_is_undone(tmp_path):
    target = tmp_path / "out"
    # A two-rename swap killed between its renames: the previous version is aside, nothing at the target.
    _write(tmp_path / f".out.bt2-prev-{DEAD_PID}-abcd", {"a": "previous"})
    _write(tmp_path / f".out.bt2-stage-{DEAD_PID}-beef", {"a": "half-written"})
    _write(tmp_path / ".bt2-save-k3j4h5g6", {"model.safetensors": "legacy staging"})
    recover_directory(target)
    assert (target / "a").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
