"""A toy backbone in one file: average-pool the image to a small grid, then one linear layer.

Registering it is all it takes: ``BT2Config(backbone_type="pooled_mlp", ...)`` builds it, ``bt2 train`` trains it,
and a saved model reloads with ``from_pretrained`` (in a process that imported this file). The class attributes are
the facts the library asks a backbone (modality, processor size, sentence-transformers support, memory format).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bt2_hf.backbones import Backbone, register_backbone


@register_backbone("pooled_mlp")
class PooledMLPBackbone(Backbone):
    """``backbone_config``: ``num_channels`` (default 1), ``grid`` (default 7), ``hidden_size`` (default 32)."""

    modality = "image"
    default_image_size = 28
    size_agnostic = True  # adaptive pooling: any image size works

    def __init__(self, backbone_config: dict[str, Any], pooling: str = "default"):
        backbone_config = {"num_channels": 1, "grid": 7, "hidden_size": 32} | dict(backbone_config)
        super().__init__(backbone_config, pooling)
        grid, channels = int(backbone_config["grid"]), int(backbone_config["num_channels"])
        self.grid = grid
        self.linear = nn.Linear(channels * grid * grid, int(backbone_config["hidden_size"]))

    @property
    def hidden_size(self) -> int:
        return self.linear.out_features

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(pixel_values, self.grid).flatten(1)
        return F.relu(self.linear(pooled))
