"""The pipelines' shared pieces: a finished stage is reused only when its recorded settings match, the split embedder
is the model's own ``encode``, and the card section is written once (tiny CNNs, a few steps, in-memory images)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bt2_hf import BT2Model
from bt2_hf.data import ImageClassificationData
from bt2_hf.experiments.cards import CardSection, write_pipeline_card
from bt2_hf.experiments.embedding import embed_split
from bt2_hf.experiments.stages import StageSettingsError, StageSpec, run_stage, stage_arguments

CNN = {"num_channels": 1, "widths": [4, 8], "image_size": 12}


def three_bands(n: int, seed: int) -> ImageClassificationData:
    """Three classes of 12×12 images told apart by which third of the image is bright."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 60, (n, 1, 12, 12), generator=generator, dtype=torch.uint8)
    for c in range(3):
        images[labels == c, :, 4 * c : 4 * c + 4, :] += 150
    return ImageClassificationData(images=images, labels=labels, class_names=["a", "b", "c"])


def old_stage(output_dir: Path, **changes) -> StageSpec:
    spec = StageSpec(
        name="old", output_dir=output_dir, method="independent", backbone_type="small_cnn", backbone_config=CNN,
        steps=2, seed=0, batch_size=16, learning_rate=1e-3, embedding_dim=8, class_subset="0-1", disable_tqdm=True,
    )  # fmt: skip
    return replace(spec, **changes)


def bt2_stage(output_dir: Path, old: Path, independent: Path, **changes) -> StageSpec:
    spec = StageSpec(
        name="bt2", output_dir=output_dir, method="bt2", backbone_type="small_cnn", backbone_config=CNN, steps=2,
        seed=0, batch_size=16, learning_rate=1e-3, old_model=str(old), independent_model=str(independent),
        method_config={"extra_dim": 4, "old_match_weight": 5.0}, disable_tqdm=True,
    )  # fmt: skip
    return replace(spec, **changes)


def run_id(directory: Path) -> str:
    return json.loads((directory / "run.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def data() -> ImageClassificationData:
    return three_bands(48, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> dict[str, Path]:
    """An old model, an independent model and a BT² step trained against both."""
    root = tmp_path_factory.mktemp("stages")
    old = run_stage(old_stage(root / "old"), train_data=data)
    independent = run_stage(old_stage(root / "independent", name="independent", class_subset=None), train_data=data)
    bt2 = run_stage(bt2_stage(root / "bt2", old, independent), train_data=data)
    return {"old": old, "independent": independent, "bt2": bt2}


def test_arguments_carry_the_spec_and_keep_the_trainer_defaults_for_unset_fields(tmp_path):
    model_args, data_args, training_args, method_config = stage_arguments(
        old_stage(tmp_path / "old", logit_scale=16.0, max_train_samples=30)
    )
    assert (model_args.backbone_type, model_args.backbone_config, model_args.embedding_dim) == (
        "small_cnn",
        CNN,
        8,
    )
    assert (model_args.logit_scale, model_args.old_model, model_args.init_from_independent) == (16.0, None, False)
    assert (data_args.class_subset, data_args.max_train_samples, data_args.dataset) == ("0-1", 30, "fashion_mnist")
    assert (training_args.output_dir, training_args.method, training_args.max_steps) == (
        str(tmp_path / "old"),
        "independent",
        2,
    )
    assert (training_args.per_device_train_batch_size, training_args.seed, training_args.overwrite_output_dir) == (
        16,
        0,
        True,
    )
    assert (training_args.logging_steps, training_args.mixed_precision, method_config) == (10, None, None)


def test_a_finished_stage_with_the_same_settings_is_reused(trained, data):
    before = {name: run_id(path) for name, path in trained.items()}
    fingerprint = BT2Model.from_pretrained(trained["bt2"]).config.fingerprint
    again = run_stage(bt2_stage(trained["bt2"], trained["old"], trained["independent"]), train_data=data)
    assert again == trained["bt2"]
    assert run_id(trained["bt2"]) == before["bt2"]  # no new training run
    assert BT2Model.from_pretrained(again).config.fingerprint == fingerprint
    # a tuple in the spec is the list saved in config.json: still the same settings
    widths_as_tuple = {**CNN, "widths": (4, 8)}
    assert run_stage(old_stage(trained["old"], backbone_config=widths_as_tuple), train_data=data) == trained["old"]
    assert run_id(trained["old"]) == before["old"]


def test_a_changed_setting_is_refused_naming_each_difference_and_the_fix(trained, data):
    before = run_id(trained["bt2"])
    changed = bt2_stage(
        trained["bt2"], trained["old"], trained["independent"], learning_rate=3e-3,
        method_config={"extra_dim": 4, "old_match_weight": 7.0},
    )  # fmt: skip
    with pytest.raises(StageSettingsError) as refused:
        run_stage(changed, train_data=data, reuse_fix="pass --again")
    message = str(refused.value)
    assert message.startswith(f"{trained['bt2']} holds a model trained with other settings than bt2 asks for now (")
    assert "learning_rate: saved 0.001, asked 0.003" in message
    assert "method_config.old_match_weight: saved 5.0, asked 7.0" in message
    assert "extra_dim" not in message  # only what differs
    assert message.endswith("Fix: pass --again.")
    assert isinstance(refused.value, ValueError)
    with pytest.raises(StageSettingsError, match=r"class_subset: saved \[0, 1\], asked \[0, 1, 2\]"):
        run_stage(old_stage(trained["old"], class_subset="0-2"), train_data=data)
    assert run_id(trained["bt2"]) == before  # nothing was trained or touched


def test_retrain_changed_retrains_and_a_retrained_reference_invalidates_its_dependants(tmp_path, data):
    old = run_stage(old_stage(tmp_path / "old"), train_data=data)
    independent = run_stage(old_stage(tmp_path / "independent", class_subset=None), train_data=data)
    bt2 = run_stage(bt2_stage(tmp_path / "bt2", old, independent), train_data=data)
    first_old = BT2Model.from_pretrained(old).config.fingerprint

    run_stage(old_stage(old, seed=1), train_data=data, retrain_changed=True)
    retrained = BT2Model.from_pretrained(old).config
    assert retrained.training["seed"] == 1 and retrained.fingerprint != first_old

    # The BT² step's own settings did not change, but the old model it was trained against did.
    with pytest.raises(StageSettingsError, match=rf"old_model fingerprint: saved '{first_old}', asked "):
        run_stage(bt2_stage(bt2, old, independent), train_data=data)
    run_stage(bt2_stage(bt2, old, independent), train_data=data, retrain_changed=True)
    against = BT2Model.from_pretrained(bt2).config.training["trained_against"]["fingerprint"]
    assert against == retrained.fingerprint


def test_reuse_false_always_trains(tmp_path, data):
    old = run_stage(old_stage(tmp_path / "old"), train_data=data)
    first = run_id(old)
    run_stage(old_stage(old), train_data=data, reuse=False)
    assert run_id(old) != first


def test_embed_split_is_the_models_encode(trained, data):
    model = BT2Model.from_pretrained(trained["bt2"])
    expected = model.encode(images=data.images, batch_size=512).numpy()
    from_path = embed_split(trained["bt2"], data.images)
    from_model = embed_split(model, data.images, batch_size=512, device="cpu")
    assert from_path.shape == (48, 12) and from_path.dtype == expected.dtype
    assert (from_path == expected).all() and (from_model == expected).all()


def test_card_section_is_placed_after_the_summary_and_replaced_on_a_rerun(trained):
    section = CardSection(pipeline="demo", name="verdict", heading="Demo verdict", text="First verdict.")
    card = write_pipeline_card(trained["old"], repo_id="org/old", section=section)
    text = card.read_text()
    assert text.index("<!-- bt2_hf:end -->") < text.index("## Demo verdict\n\nFirst verdict.\n<!-- bt2_demo:end -->")
    assert text.index("<!-- bt2_demo:end -->") < text.index("<!-- bt2_hf:begin compatible-with -->")
    write_pipeline_card(trained["old"], repo_id="org/old", section=replace(section, text="second"))
    text = card.read_text()
    assert text.count("<!-- bt2_demo:begin verdict -->") == 1 and "second" in text and "First verdict" not in text
    assert "# org/old" in text
