"""Issue 24: each probe of the hostile-user review, written as the attack, and what it gets now (refused, named)."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from training_helpers import CNN, quick_args, synthetic_data  # noqa: E402

from bt2_hf import BT2Model  # noqa: E402
from bt2_hf.errors import BT2InputError  # noqa: E402
from bt2_hf.fingerprint import state_fingerprint as fingerprint_state_and_processor  # noqa: E402
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


# ---- 2. The fingerprint covers what is loaded


def _tampered_copy(saved_model):
    """The model's weights with its biggest tensor zeroed: what an attacker wants loaded."""
    weights = load_file(saved_model / "model.safetensors")
    name = max(weights, key=lambda k: weights[k].numel())
    weights[name] = torch.zeros_like(weights[name])
    return weights


def test_a_tampered_pytorch_model_bin_beside_good_safetensors_is_not_loaded(saved_model):
    torch.save(_tampered_copy(saved_model), saved_model / "pytorch_model.bin")
    with pytest.raises(ValueError, match="use_safetensors=False.*pytorch_model.bin"):
        BT2Model.from_pretrained(saved_model, use_safetensors=False)
    # without the switch the untouched safetensors load, and that is what is verified
    model = BT2Model.from_pretrained(saved_model)
    assert model.verified_fingerprint() == fingerprint_state_and_processor(model)


def test_a_variant_file_beside_good_safetensors_is_not_loaded(saved_model):
    save_file(_tampered_copy(saved_model), saved_model / "model.evil.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="variant='evil'.*model.<variant>.safetensors"):
        BT2Model.from_pretrained(saved_model, variant="evil")


def test_a_state_dict_passed_to_from_pretrained_is_refused(saved_model):
    with pytest.raises(ValueError, match="state_dict="):
        BT2Model.from_pretrained(saved_model, state_dict=_tampered_copy(saved_model))


def test_only_a_pickled_bin_is_never_loaded(saved_model, tmp_path):
    """A checkpoint whose safetensors were replaced by a .bin: nothing is unpickled, the load is refused."""
    torch.save(_tampered_copy(saved_model), saved_model / "pytorch_model.bin")
    (saved_model / "model.safetensors").unlink()
    with pytest.raises(BT2InputError, match="model.safetensors"):
        BT2Model.from_pretrained(saved_model)
