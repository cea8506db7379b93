"""`kill -9` at every file operation of a save over an existing model: a whole model always loads (issue 11, repro 5).

The save runs in a fresh child interpreter with ``BT2_HF_KILL_AFTER_FILE_OPS=k``, which makes it ``SIGKILL`` itself
right after its k-th file operation (bt2_hf.utils.io.file_operation_done), for k = 1, 2, … until a save runs to the
end. Not a fork: after torch or faiss have started their OpenMP threads in this process, a forked child can hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bt2_hf import BT2Model
from bt2_hf.utils.io import KILL_AFTER_FILE_OPS_ENV

from .conftest import tiny_model

REPO = Path(__file__).resolve().parents[2]


SAVE_IN_A_CHILD = """
import os, sys
import bt2_hf.utils.io
from bt2_hf import BT2Model
model = BT2Model.from_pretrained(sys.argv[1])
os.environ[bt2_hf.utils.io.KILL_AFTER_FILE_OPS_ENV] = sys.argv[3]
bt2_hf.utils.io._file_operations = 0
model.save_pretrained(sys.argv[2])
"""


def _save_in_a_child_killed_after(k: int, source: Path, target: Path) -> int:
    """A child interpreter loads ``source`` and saves it to ``target``, dying at its k-th file operation.

    Returns its return code (``-SIGKILL`` when it was killed)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop(KILL_AFTER_FILE_OPS_ENV, None)
    command = [sys.executable, "-c", SAVE_IN_A_CHILD, str(source), str(target), str(k)]
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


def _fingerprint(path: Path) -> str:
    return json.loads((path / "config.json").read_text())["fingerprint"]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".bt2-" in p.name)


def test_kill_9_after_each_file_operation_of_a_save_leaves_a_whole_model(tmp_path):
    target = tmp_path / "model"
    new_model = tiny_model(seed=1, image_mean=0.25)
    new_model.save_pretrained(tmp_path / "reference")
    new_fingerprint = _fingerprint(tmp_path / "reference")

    def install_old_model():
        tiny_model(seed=0).save_pretrained(target)  # also clears what a killed save left beside it
        (target / "training_log.json").write_text("[]")  # entries beside the model must survive a new save
        (target / "checkpoints" / "checkpoint-5").mkdir(parents=True, exist_ok=True)
        (target / "checkpoints" / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
        return _fingerprint(target)

    old_fingerprint = install_old_model()
    assert old_fingerprint != new_fingerprint
    outcomes = []
    for k in range(1, 30):
        status = _save_in_a_child_killed_after(k, tmp_path / "reference", target)
        # Whatever happened, the directory holds one whole, verified model: the old one or the new one.
        loaded = BT2Model.from_pretrained(target)
        fingerprint = loaded.verified_fingerprint()
        assert fingerprint in (old_fingerprint, new_fingerprint), k
        assert (target / "training_log.json").read_text() == "[]", k
        assert (target / "checkpoints" / "checkpoint-5" / "trainer_state.json").is_file(), k
        if status == 0:
            outcomes.append(("finished", fingerprint == new_fingerprint))
            break
        assert status == -signal.SIGKILL, status
        outcomes.append(("killed", "new" if fingerprint == new_fingerprint else "old"))
        if fingerprint == new_fingerprint:
            old_fingerprint = install_old_model()
    killed = [state for event, state in outcomes if event == "killed"]
    assert outcomes[-1] == ("finished", True)
    assert len(killed) >= 6 and killed[0] == "old"  # a kill at every step up to the swap kept the old model
    assert "new" in killed  # a kill after the swap (while removing the old copy) already shows the new one
    # The next save removes whatever the killed ones left beside the model.
    install_old_model()
    assert _leftovers(tmp_path) == []
