"""`kill -9` at every file operation of an index build over an existing gallery: a whole gallery always opens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from bt2_hf.galleries import FaissGallery
from bt2_hf.utils.io import KILL_AFTER_FILE_OPS_ENV

from .conftest import REPO

pytestmark = pytest.mark.slow  # a fresh interpreter per kill

ENCODER = {"fingerprint": "sha256:" + "c" * 64, "name_or_path": "old", "embedding_dim": 8}


def _unit_rows(seed: int, count: int = 300) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, 8)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


BUILD_IN_A_CHILD = """
import json, os, sys
import numpy as np
import bt2_hf.utils.io
from bt2_hf.galleries import FaissGallery
vectors = np.load(sys.argv[1])
os.environ[bt2_hf.utils.io.KILL_AFTER_FILE_OPS_ENV] = sys.argv[3]
bt2_hf.utils.io._file_operations = 0
FaissGallery.build(sys.argv[2], vectors, encoder=json.loads(sys.argv[4]), index_type="ivf", overwrite=True)
"""


def _build_in_a_child_killed_after(k: int, directory, vectors_file) -> int:
    """A child interpreter builds an IVF gallery over ``directory``, dying at its k-th file operation (not a fork:
    after faiss or torch started OpenMP threads here, a forked child can hang). Returns its return code."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop(KILL_AFTER_FILE_OPS_ENV, None)
    command = [sys.executable, "-c", BUILD_IN_A_CHILD, str(vectors_file), str(directory), str(k), json.dumps(ENCODER)]
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


def test_kill_9_after_each_file_operation_of_a_build_leaves_a_whole_gallery(tmp_path):
    directory = tmp_path / "gallery"
    old_vectors, new_vectors = _unit_rows(0), _unit_rows(1)
    FaissGallery.build(directory, old_vectors, encoder=ENCODER, index_type="flat")
    np.save(tmp_path / "new_vectors.npy", new_vectors)
    outcomes = []
    for k in range(1, 30):
        status = _build_in_a_child_killed_after(k, directory, tmp_path / "new_vectors.npy")
        # Whatever happened, the directory opens (manifest and file hashes verified) as the old or the new gallery.
        gallery = FaissGallery.open(directory)
        vectors = np.asarray(gallery.vectors)
        state = "new" if np.allclose(vectors, new_vectors, atol=1e-6) else "old"
        assert state == "new" or np.allclose(vectors, old_vectors, atol=1e-6), k
        assert gallery.manifest["index"]["type"] == ("ivf" if state == "new" else "flat"), k
        if status == 0:
            outcomes.append(("finished", state))
            break
        assert status == -signal.SIGKILL, status
        outcomes.append(("killed", state))
        if state == "new":  # start again from the old gallery
            FaissGallery.build(directory, old_vectors, encoder=ENCODER, index_type="flat", overwrite=True)
    assert outcomes[-1] == ("finished", "new"), outcomes
    killed = [state for event, state in outcomes if event == "killed"]
    assert len(killed) >= 3 and killed[0] == "old", outcomes
    # A finished build leaves nothing but the gallery beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery", "new_vectors.npy"]
    scores, rows = FaissGallery.open(directory).search_encoder_space(new_vectors[:5], 1)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]
