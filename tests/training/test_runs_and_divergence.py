"""Runs own their checkpoints (issue 11, repro 1) and a diverging run saves nothing non-finite (repro 6)."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import CNN, quick_args, synthetic_data

from bt2_hf import BT2Model
from bt2_hf.training import DataArguments, ModelArguments, train
from bt2_hf.training.checkpointing import RUN_FILE, list_checkpoints


def _train(output_dir, data, **overrides):
    args = quick_args(
        output_dir, "independent", **{"max_steps": 6, "save_steps": 1, "save_total_limit": 2, **overrides}
    )
    return train(ModelArguments(backbone_config=CNN, embedding_dim=8), DataArguments(), args, train_data=data)


def _run_id(path):
    return json.loads((path / "trainer_state.json").read_text())["run_id"]


def test_overwrite_moves_the_old_run_aside_and_latest_resumes_this_run(tmp_path):
    data = synthetic_data(n=48)
    out = tmp_path / "run"
    _train(out, data, stop_after_steps=5, seed=1)  # first run: checkpoints 4 and 5 (limit 2)
    first_run = json.loads((out / RUN_FILE).read_text())["run_id"]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-5"]

    # A second run with another seed replaces the directory, stopped ("killed") after its checkpoint 2.
    _train(out, data, stop_after_steps=2, seed=2, overwrite_output_dir=True)
    second_run = json.loads((out / RUN_FILE).read_text())["run_id"]
    assert second_run != first_run
    checkpoints = list_checkpoints(out)
    assert [p.name for p in checkpoints] == ["checkpoint-1", "checkpoint-2"]  # its own, none pruned by the old run's
    assert {_run_id(p) for p in checkpoints} == {second_run}
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and [p.name for p in list_checkpoints(aside[0])] == ["checkpoint-4", "checkpoint-5"]

    # latest = the second run's checkpoint-2; the finished run equals one uninterrupted run with seed 2.
    _train(out, data, seed=2, resume_from_checkpoint="latest")
    resumed = BT2Model.from_pretrained(out)
    _train(tmp_path / "straight", data, seed=2)
    straight = BT2Model.from_pretrained(tmp_path / "straight")
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), name
    assert {_run_id(p) for p in list_checkpoints(out)} == {second_run}
    assert not any(p.name.startswith("run.replaced-") for p in tmp_path.iterdir())  # removed once the run completed


def test_latest_never_picks_another_runs_checkpoint(tmp_path):
    data = synthetic_data(n=48)
    out = tmp_path / "run"
    _train(out, data, stop_after_steps=3, seed=1)
    # A foreign checkpoint with a higher step (e.g. copied in by hand) is not "latest" for this run.
    foreign = out / "checkpoints" / "checkpoint-9"
    foreign.mkdir()
    (foreign / "trainer_state.json").write_text(json.dumps({"global_step": 9, "run_id": "someone-else"}))
    from bt2_hf.training.checkpointing import read_run, resolve_checkpoint

    assert resolve_checkpoint(out, "latest", read_run(out)["run_id"]).name == "checkpoint-3"


def test_non_finite_loss_stops_at_the_step_with_the_term(tmp_path):
    data = synthetic_data(n=48)
    images, labels = data
    images = images.float()
    images[5] = float("nan")  # one NaN image reaches the loss in the first batches
    with pytest.raises(FloatingPointError, match=r"diverged at step \d+: (\w*loss|grad_norm) = nan"):
        _train(tmp_path / "run", (images, labels), max_steps=3, save_steps=0, seed=0)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_overflowing_update_is_never_saved(tmp_path):
    # One SGD step at lr 1e38 (finite, with a strong weight decay) turns finite gradients into infinite weights;
    # the loss and gradient were finite, so only the pre-save check can refuse them.
    data = synthetic_data(n=48)
    with pytest.raises(FloatingPointError, match=r"after step 1 the weight .* non-finite"):
        _train(
            tmp_path / "run", data, max_steps=1, save_steps=0, learning_rate=1e38, optimizer="sgd", weight_decay=100.0
        )
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert list_checkpoints(tmp_path / "run") == []


@pytest.mark.parametrize("learning_rate", [float("inf"), float("nan"), -1e-3])
def test_non_finite_learning_rate_is_refused_before_anything_is_written(tmp_path, learning_rate):
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        _train(tmp_path / "run", synthetic_data(n=48), learning_rate=learning_rate)
    assert not (tmp_path / "run").exists()


def test_overwrite_keeps_a_previous_directory_that_holds_user_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    _train(out, synthetic_data(n=48), max_steps=2, overwrite_output_dir=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "my_notes.txt").read_text() == "mine"
