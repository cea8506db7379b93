"""The worked examples of docs/ARCHITECTURE.md: a toy backbone, head and method, each one file plus its registration,
work through the whole library (config → model → save / reload → encode; the trainer)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from bt2_hf import BT2Config, BT2Model

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toys():
    return {name: _load(name) for name in ("toy_backbone", "toy_head", "toy_method")}


def test_the_toy_backbone_and_head_build_save_reload_and_encode(tmp_path, toys):
    from bt2_hf.backbones import list_backbones
    from bt2_hf.heads import list_heads

    assert "pooled_mlp" in list_backbones() and "mlp" in list_heads()
    config = BT2Config(backbone_type="pooled_mlp", backbone_config={"hidden_size": 24}, head_type="mlp",
                       head_config={"hidden_dim": 20}, embedding_dim=12, num_classes=3)  # fmt: skip
    torch.manual_seed(0)
    model = BT2Model(config).eval()
    assert isinstance(model.head, toys["toy_head"].MLPHead) and model.head.mlp[0].out_features == 20
    assert model.processor.image_size == (28, 28)  # the backbone's default_image_size
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    expected = model.encode(images=images)
    assert expected.shape == (5, 12)
    torch.testing.assert_close(expected.norm(dim=1), torch.ones(5))
    model.save_pretrained(tmp_path / "toy")
    reloaded = BT2Model.from_pretrained(tmp_path / "toy")
    assert reloaded.config.head_config == {"hidden_dim": 20}
    assert reloaded.config.fingerprint == model.config.fingerprint
    torch.testing.assert_close(reloaded.encode(images=images), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="hidden_dim must be positive"):
        BT2Config(backbone_type="pooled_mlp", head_type="mlp", head_config={"hidden_dim": 0})
    with pytest.raises(ValueError, match="Unknown head_type 'nope'.*mlp"):
        BT2Config(head_type="nope")


def test_the_toy_method_trains_the_toy_backbone(tmp_path, toys):
    from bt2_hf.training import BT2TrainingArguments, DataArguments, ModelArguments, train

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 4
    images = torch.randint(0, 64, (64, 1, 28, 28), generator=generator, dtype=torch.uint8)
    for c in range(4):
        images[labels == c, :, c * 7 : c * 7 + 7, :] += 180
    output = train(
        ModelArguments(backbone_type="pooled_mlp", backbone_config={"hidden_size": 16}, embedding_dim=8),
        DataArguments(),
        BT2TrainingArguments(
            output_dir=str(tmp_path / "run"),
            method="uniform_independent",
            max_steps=20,
            per_device_train_batch_size=16,
            learning_rate=0.02,
            disable_tqdm=True,
            logging_steps=20,
        ),  # fmt: skip
        method_config={"uniformity_weight": 0.25},
        train_data=(images, labels),
    )
    model = BT2Model.from_pretrained(output)
    assert model.config.training["method"] == "uniform_independent"
    assert model.config.training["method_config"]["uniformity_weight"] == 0.25
    import json

    log = json.loads((output / "training_log.json").read_text())
    assert {"classification_loss", "uniformity_loss"} <= set(log[-1])
    # it learned the four brightness bands: nearest class mean in embedding space is right on the training data
    embeddings = model.encode(images=images)
    means = torch.stack([embeddings[labels == c].mean(0) for c in range(4)])
    accuracy = ((embeddings @ means.T).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9
