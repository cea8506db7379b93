"""Fixtures of the reliability tests: a tiny saved image model."""

from __future__ import annotations

import pytest
import torch

from bt2_hf import BT2Config, BT2Model

CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}


def tiny_model(seed: int = 0, **processor) -> BT2Model:
    torch.manual_seed(seed)
    model = BT2Model(BT2Config(backbone_type="small_cnn", backbone_config=CNN, embedding_dim=8, num_classes=3)).eval()
    if processor:
        from bt2_hf.processing import BT2ImageProcessor

        model.processor = BT2ImageProcessor(image_size=28, num_channels=1, **processor)
    return model


@pytest.fixture
def saved_model(tmp_path):
    path = tmp_path / "model"
    tiny_model().save_pretrained(path)
    return path
