"""kill -9 at each file operation of a training run that checkpoints every step: whatever checkpoint is left is whole,
and `--resume_from_checkpoint latest` then finishes the run exactly as one uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import CNN, REPO, quick_args, synthetic_data

from bt2_hf import BT2Model
from bt2_hf.training import DataArguments, ModelArguments, train
from bt2_hf.training.checkpointing import list_checkpoints
from bt2_hf.utils.io import KILL_AFTER_FILE_OPS_ENV

pytestmark = pytest.mark.slow

RUN = """
import sys
import torch
torch.set_num_threads({threads})  # the test process's count: float sums must round alike on both sides of the kill
sys.path.insert(0, {helpers!r})
from training_helpers import CNN, quick_args, synthetic_data
from bt2_hf.training import DataArguments, ModelArguments, train
args = quick_args({out!r}, "independent", max_steps=4, save_steps=1, save_total_limit=2, seed=3)
train(ModelArguments(backbone_config=CNN, embedding_dim=8), DataArguments(), args, train_data=synthetic_data(n=48))
"""


def _train(out: Path, **overrides) -> None:
    args = quick_args(out, "independent", **{"max_steps": 4, "save_steps": 1, "save_total_limit": 2, "seed": 3,
                                             **overrides})  # fmt: skip
    train(ModelArguments(backbone_config=CNN, embedding_dim=8), DataArguments(), args,
          train_data=synthetic_data(n=48))  # fmt: skip


def test_a_kill_during_checkpointing_leaves_whole_checkpoints_and_an_exact_resume(tmp_path):
    _train(tmp_path / "straight")
    straight = BT2Model.from_pretrained(tmp_path / "straight").state_dict()
    killed_at = []
    for ops in (2, 5, 9, 14, 20, 27):  # spread over the first checkpoints' writes and the run's later ones
        out = tmp_path / f"killed-{ops}"
        script = RUN.format(helpers=str(REPO / "tests" / "training"), out=str(out), threads=torch.get_num_threads())
        env = {**os.environ, KILL_AFTER_FILE_OPS_ENV: str(ops),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        if result.returncode != -9:  # the run finished before its ops-th file operation
            assert result.returncode == 0, result.stderr[-2000:]
            continue
        killed_at.append(ops)
        # every checkpoint the run lists is complete: resuming from the latest finishes the run exactly
        if list_checkpoints(out):
            _train(out, resume_from_checkpoint="latest")
        else:
            _train(out, overwrite_output_dir=True)
        resumed = BT2Model.from_pretrained(out).state_dict()
        for name, value in straight.items():
            assert torch.equal(resumed[name], value), (ops, name)
    assert len(killed_at) >= 3, killed_at  # the kills did land inside the run
