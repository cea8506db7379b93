"""A small CNN for 28×28 / 32×32 images that trains quickly on a CPU (the demo's "old" model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import register_backbone
from .base import Backbone


@register_backbone("small_cnn")
class SmallCNN(Backbone):
    """Stacks of ``conv3×3 → BatchNorm → ReLU`` with a stride-2 convolution between stages, then global average pooling.

    ``backbone_config`` keys: ``num_channels`` (default 1), ``widths`` (default ``[16, 32, 64]``),
    ``blocks_per_stage`` (default 1), ``image_size`` (default 28; only used by the image processor).
    """

    poolings = ("default", "mean")
    size_agnostic = True  # global pooling: any image size works
    default_image_size = 28

    @classmethod
    def prefers_channels_last(cls, backbone_config: dict[str, Any]) -> bool:
        return True

    def __init__(self, backbone_config: dict[str, Any], pooling: str = "default"):
        backbone_config = {"num_channels": 1, "widths": [16, 32, 64], "blocks_per_stage": 1, "image_size": 28} | dict(
            backbone_config
        )
        super().__init__(backbone_config, pooling)
        widths = list(backbone_config["widths"])
        if not widths or any(int(w) <= 0 for w in widths):
            raise ValueError(f"small_cnn widths must be a non-empty list of positive ints, got {widths}.")
        layers: list[nn.Module] = []
        in_channels = int(backbone_config["num_channels"])
        for stage, width in enumerate(widths):
            for block in range(int(backbone_config["blocks_per_stage"])):
                stride = 2 if stage > 0 and block == 0 else 1
                layers += [
                    nn.Conv2d(in_channels, width, kernel_size=3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                in_channels = width
        self.features = nn.Sequential(*layers)
        self._hidden_size = in_channels

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    def forward(self, pixel_values: torch.Tensor, **unused: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values).mean(dim=(2, 3))
