"""Issue 24: each probe of the hostile-user review, written as the attack, and what it gets now (refused, named)."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from training_helpers import CNN, quick_args, synthetic_data  # noqa: E402

from bt2_hf.errors import BT2InputError  # noqa: E402
from bt2_hf.training import DataArguments, ModelArguments, train  # noqa: E402
from bt2_hf.training.checkpointing import list_checkpoints  # noqa: E402


class _MakesADirectory:
    """A pickle that, when loaded, creates ``marker``: the stand-in for any code a crafted checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _train_independent(output_dir, data, **overrides):
    args = quick_args(output_dir, "independent", **{"max_steps": 4, "save_steps": 1, **overrides})
    return train(ModelArguments(backbone_config=CNN, embedding_dim=8), DataArguments(), args, train_data=data)


# ---- 1. No code runs from a checkpoint


def test_checkpoints_hold_only_json_and_safetensors(tmp_path):
    out = tmp_path / "run"
    _train_independent(out, synthetic_data(n=48), stop_after_steps=2)
    checkpoint = list_checkpoints(out)[-1]
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names and all(name.endswith((".json", ".safetensors")) for name in names), names


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.pt", "state"])
def test_a_pickle_planted_in_a_checkpoint_is_refused_and_runs_nothing(tmp_path, name):
    data = synthetic_data(n=48)
    out = tmp_path / "run"
    _train_independent(out, data, stop_after_steps=2)
    checkpoint = list_checkpoints(out)[-1]
    marker = tmp_path / "pwned"
    (checkpoint / name).write_bytes(pickle.dumps(_MakesADirectory(marker)))

    with pytest.raises(BT2InputError, match=name.replace(".", r"\.") + ".*pickle"):
        _train_independent(out, data, resume_from_checkpoint="latest")
    assert not marker.exists()
    assert not (out / "model.safetensors").exists()
