"""`kill -9` at every file operation of an index build over an existing gallery: a whole gallery always opens."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import bt2_hf.utils.io
from bt2_hf.galleries import FaissGallery
from bt2_hf.utils.io import KILL_AFTER_FILE_OPS_ENV

ENCODER = {"fingerprint": "sha256:" + "c" * 64, "name_or_path": "old", "embedding_dim": 8}


def _unit_rows(seed: int, count: int = 300) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, 8)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _build_in_a_child_killed_after(k: int, directory, vectors) -> int:
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        status = 1
        try:
            os.environ[KILL_AFTER_FILE_OPS_ENV] = str(k)
            bt2_hf.utils.io._file_operations = 0
            FaissGallery.build(directory, vectors, encoder=ENCODER, index_type="ivf", overwrite=True)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_9_after_each_file_operation_of_a_build_leaves_a_whole_gallery(tmp_path):
    directory = tmp_path / "gallery"
    old_vectors, new_vectors = _unit_rows(0), _unit_rows(1)
    FaissGallery.build(directory, old_vectors, encoder=ENCODER, index_type="flat")
    outcomes = []
    for k in range(1, 30):
        status = _build_in_a_child_killed_after(k, directory, new_vectors)
        # Whatever happened, the directory opens (manifest and file hashes verified) as the old or the new gallery.
        gallery = FaissGallery.open(directory)
        vectors = np.asarray(gallery.vectors)
        state = "new" if np.allclose(vectors, new_vectors, atol=1e-6) else "old"
        assert state == "new" or np.allclose(vectors, old_vectors, atol=1e-6), k
        assert gallery.manifest["index"]["type"] == ("ivf" if state == "new" else "flat"), k
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            outcomes.append(("finished", state))
            break
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        outcomes.append(("killed", state))
        if state == "new":  # start again from the old gallery
            FaissGallery.build(directory, old_vectors, encoder=ENCODER, index_type="flat", overwrite=True)
    assert outcomes[-1] == ("finished", "new"), outcomes
    killed = [state for event, state in outcomes if event == "killed"]
    assert len(killed) >= 3 and killed[0] == "old", outcomes
    # A finished build leaves nothing but the gallery beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]
    scores, rows = FaissGallery.open(directory).search_encoder_space(new_vectors[:5], 1)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]
