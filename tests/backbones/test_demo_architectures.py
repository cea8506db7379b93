"""Every new architecture the demo can train (ViT, CvT, MobileViT) is a complete Hugging Face model: it builds from its
config, saves, reloads with its fingerprint verified, and gives one embedding through ``encode``, ``AutoModel`` +
``AutoImageProcessor`` and ``pipeline("image-feature-extraction")``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, pipeline

from bt2_hf import BT2Config, BT2Model
from bt2_hf.experiments.demo import NEW_ARCHITECTURES, DemoSize, _new_backbone_config
from bt2_hf.fingerprint import fingerprint_model


def tiny_size(architecture: str) -> DemoSize:
    return replace(DemoSize.tiny(), new_architecture=architecture, vit_hidden_size=32, vit_heads=2, vit_layers=2)


@pytest.mark.parametrize("architecture", NEW_ARCHITECTURES)
def test_the_architecture_round_trips_through_every_surface(tmp_path, architecture):
    torch.manual_seed(0)
    config = BT2Config(
        backbone_type="hf_vision",
        backbone_config=_new_backbone_config(tiny_size(architecture), image_size=28, num_channels=1),
        head_type="basis_transformation",
        feature_dim=16,
        old_embedding_dim=8,
        extra_dim=4,
        num_classes=10,
    )
    model = BT2Model(config).eval()
    assert model.backbone.model.config.model_type == architecture
    # the processor keeps the data's size: CvT and MobileViT must not resize 28×28 images to 224×224
    assert tuple(model.processor.image_size) == (28, 28)
    model.save_pretrained(tmp_path)
    reloaded = BT2Model.from_pretrained(tmp_path)
    assert reloaded.config.fingerprint == fingerprint_model(model)  # the weights and preprocessing that were saved
    assert reloaded.verified_fingerprint() == reloaded.config.fingerprint

    images = [np.random.default_rng(i).integers(0, 256, size=(28, 28), dtype=np.uint8) for i in range(3)]
    expected = reloaded.encode(images=images)
    assert expected.shape == (3, 20)
    torch.testing.assert_close(expected.norm(dim=-1), torch.ones(3))
    auto_model, auto_processor = AutoModel.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)
    with torch.no_grad():
        through_auto = auto_model(**auto_processor(images)).embeddings
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    through_pipeline = torch.tensor([row[0] for row in extractor([_pil(image) for image in images])])
    torch.testing.assert_close(through_auto, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(through_pipeline.float(), expected, atol=1e-5, rtol=0)


def test_an_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="new_architecture must be one of"):
        _new_backbone_config(replace(DemoSize(), new_architecture="resnet"), 28, 1)


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)
