"""Independent training: cross-entropy only, no compatibility term. Trains the old model and the new' model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import classification_loss
from . import register_method
from .base import CompatibilityMethod, MethodConfig


@dataclass
class IndependentConfig(MethodConfig):
    """Configuration of independent training (label-smoothed cross-entropy, bt2-method §2)."""


@register_method
class IndependentMethod(CompatibilityMethod):
    """Plain classification training. Used for the old model (on the old classes) and the independent new model."""

    name = "independent"
    config_class = IndependentConfig
    requires = ()
    paper = {}

    def compute_loss(self, outputs, targets: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"classification_loss": classification_loss(outputs.logits, labels, self.config.label_smoothing)}
