"""`kill -9` at every file operation of a dual-write: the gallery opens as it was before or after the whole write,
and the next write cuts what the killed one left beyond the committed lengths."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from bt2_hf.galleries import FaissGallery
from bt2_hf.galleries.append import append_items
from bt2_hf.utils.io import KILL_AFTER_FILE_OPS_ENV

from .conftest import REPO

pytestmark = pytest.mark.slow  # a fresh interpreter per kill

ENCODER = {"fingerprint": "sha256:" + "c" * 64, "name_or_path": "old", "embedding_dim": 8}
NEW_MODEL = {"fingerprint": "sha256:" + "d" * 64, "name_or_path": "new", "embedding_dim": 12}
IDS = [900, 901, 902]

APPEND_IN_A_CHILD = """
import os, sys
import numpy as np
import bt2_hf.utils.io
from bt2_hf.galleries import FaissGallery
from bt2_hf.galleries.append import append_items
gallery = FaissGallery.open(sys.argv[1])
vectors = np.load(sys.argv[2])
os.environ[bt2_hf.utils.io.KILL_AFTER_FILE_OPS_ENV] = sys.argv[3]
bt2_hf.utils.io._file_operations = 0
append_items(gallery, vectors[:, :8], [900, 901, 902], backfill_vectors=vectors[:, 8:], paths=["a", "b", "c"])
"""


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _append_in_a_child_killed_after(k: int, directory, vectors_file) -> int:
    """A child interpreter (not a fork: faiss's OpenMP threads) appends the three items, dying at its k-th file
    operation. Returns its return code."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop(KILL_AFTER_FILE_OPS_ENV, None)
    command = [sys.executable, "-c", APPEND_IN_A_CHILD, str(directory), str(vectors_file), str(k)]
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


def _state(directory, added_old, added_new, before_count: int, before_done: int) -> str:
    """``"before"`` or ``"after"`` the write, checked in full (the gallery opens with every hash verified)."""
    gallery = FaissGallery.open(directory)
    assert gallery.check() == []
    if len(gallery) == before_count:
        assert gallery.backfill_state["done"] == before_done and not gallery.contains_ids(np.array(IDS)).any()
        return "before"
    assert len(gallery) == before_count + 3 and gallery.backfill_state["done"] == before_done + 3
    rows = np.arange(before_count, before_count + 3)
    assert gallery.ids_of(rows) == IDS and gallery.paths_of(rows) == ["a", "b", "c"]
    np.testing.assert_allclose(gallery.vectors_at(rows), added_old, atol=1e-6)
    np.testing.assert_allclose(gallery.backfill_vectors(rows), added_new, atol=1e-6)
    assert gallery.backfilled(rows).all()
    assert gallery.search_encoder_space(added_old, 1)[1][:, 0].tolist() == rows.tolist()
    return "after"


def test_kill_9_at_each_file_operation_of_a_dual_write(tmp_path):
    rng = np.random.default_rng(0)
    pristine = tmp_path / "pristine"
    gallery = FaissGallery.build(pristine, rng.normal(size=(200, 8)), encoder=ENCODER, index_type="ivf")
    gallery.start_backfill({"model": NEW_MODEL, "dimension": 12, "order": "random", "seed": 0, "done": 0,
                            "count": 200, "target": 0, "batch_size": 50}, rng.permutation(200))  # fmt: skip
    gallery.write_backfill_batch(gallery.backfill_order()[:50], rng.normal(size=(50, 12)), 50)
    # two items appended already: the killed write appends to files that hold committed rows
    append_items(gallery, rng.normal(size=(2, 8)), [800, 801], backfill_vectors=rng.normal(size=(2, 12)))
    before_count, before_done = len(gallery), gallery.backfill_state["done"]
    added = np.concatenate([_unit(rng.normal(size=(3, 8))), _unit(rng.normal(size=(3, 12)))], axis=1)
    np.save(tmp_path / "added.npy", added.astype(np.float32))
    added_old, added_new = added[:, :8], added[:, 8:]

    outcomes = []
    for k in range(1, 12):
        directory = tmp_path / f"k{k}"
        shutil.copytree(pristine, directory)
        status = _append_in_a_child_killed_after(k, directory, tmp_path / "added.npy")
        state = _state(directory, added_old, added_new, before_count, before_done)
        outcomes.append(("finished" if status == 0 else "killed", state))
        if status == 0:
            assert state == "after"
            break
        assert status == -signal.SIGKILL, status
        if state == "before":
            # The same write again, in this process: it cuts what the killed one left and commits exactly once.
            reopened = FaissGallery.open(directory)
            assert append_items(reopened, added_old, IDS, backfill_vectors=added_new, paths=["a", "b", "c"])[1] == IDS
            assert _state(directory, added_old, added_new, before_count, before_done) == "after"
            record = json.loads((directory / "manifest.json").read_text())["appended"]
            for name, entry in record["files"].items():
                assert (directory / name).stat().st_size == entry["bytes"], (k, name)
    killed = [state for event, state in outcomes if event == "killed"]
    # killed after each data file's append (3) and after the manifest's temporary file, fsynced with them (the data
    # durable, not yet committed): before; after the manifest's rename: after
    assert killed[:4] == ["before"] * 4 and killed[4:] == ["after"], outcomes
    assert outcomes[-1] == ("finished", "after")
