"""`kill -9` at every file operation of a save over an existing model: a whole model always loads (issue 11, repro 5).

Each save runs with ``BT2_HF_KILL_AFTER_FILE_OPS=k``, which makes it ``SIGKILL`` itself right after its k-th file
operation (bt2_hf.utils.io.file_operation_done), for k = 1, 2, … until a save runs to the end.

Not a fork of this process: after torch or faiss have started their OpenMP/BLAS threads here, a forked child can hang.
Not a fresh interpreter per k either (importing torch 29 times took minutes). One long-lived fresh interpreter, the
fork server, imports bt2_hf once with one thread per pool, checks before every fork that it still has a single thread,
and forks one child per k; only that child loads the model, saves it and is killed. The fork server never runs a torch
operation, so every fork starts from a single-threaded process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bt2_hf import BT2Model
from bt2_hf.utils.io import KILL_AFTER_FILE_OPS_ENV

from .conftest import tiny_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Reads [k, source, target] JSON lines on stdin; for each, forks a child that loads source and saves it to target, dying at
# its k-th file operation; writes the child's return code (-9 when it was killed) as one line on stdout.
FORK_SERVER = """
import json, os, sys, traceback
import bt2_hf.utils.io
from bt2_hf import BT2Model

def threads():
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1

for line in sys.stdin:
    k, source, target = json.loads(line)
    if threads() != 1:
        print(f"fork server has {threads()} threads: refusing to fork", file=sys.stderr, flush=True)
        sys.exit(3)
    pid = os.fork()
    if pid == 0:
        os.dup2(2, 1)  # whatever the child prints goes to the log, never into the replies on stdout
        try:
            model = BT2Model.from_pretrained(source)
            os.environ[bt2_hf.utils.io.KILL_AFTER_FILE_OPS_ENV] = str(k)
            bt2_hf.utils.io._file_operations = 0
            model.save_pretrained(target)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class _ForkServer:
    """A fresh interpreter that imports bt2_hf once, then forks one save per request (see the module docstring)."""

    def __init__(self, log: Path):
        threads = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        env = dict(os.environ, PYTHONPATH=str(REPO), **threads)
        env.pop(KILL_AFTER_FILE_OPS_ENV, None)
        self.log = log
        self._stderr = log.open("w")
        command = [sys.executable, "-c", FORK_SERVER]
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )

    def save_killed_after(self, k: int, source: Path, target: Path) -> int:
        """A forked child loads ``source`` and saves it to ``target``, dying at its k-th file operation.

        Returns its return code (``-SIGKILL`` when it was killed)."""
        self.process.stdin.write(json.dumps([k, str(source), str(target)]) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the fork server died: {self.log.read_text()}"
        return int(line)

    def close(self) -> None:
        self.process.stdin.close()
        status = self.process.wait(timeout=60)
        self._stderr.close()
        assert status == 0, f"the fork server refused or failed: {self.log.read_text()}"


@pytest.fixture
def fork_server(tmp_path):
    server = _ForkServer(tmp_path / "fork_server.log")
    yield server
    server.close()


def _fingerprint(path: Path) -> str:
    return json.loads((path / "config.json").read_text())["fingerprint"]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".bt2-" in p.name)


def test_kill_9_after_each_file_operation_of_a_save_leaves_a_whole_model(tmp_path, fork_server):
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
        status = fork_server.save_killed_after(k, tmp_path / "reference", target)
        # Whatever happened, the directory holds one whole, verified model: the old one or the new one.
        loaded = BT2Model.from_pretrained(target)
        fingerprint = loaded.verified_fingerprint()
        assert fingerprint in (old_fingerprint, new_fingerprint), k
        assert (target / "training_log.json").read_text() == "[]", k
        assert (target / "checkpoints" / "checkpoint-5" / "trainer_state.json").is_file(), k
        if status == 0:
            outcomes.append(("finished", fingerprint == new_fingerprint))
            break
        assert status == -signal.SIGKILL, (status, (tmp_path / "fork_server.log").read_text())
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
