"""A toy method in one file: independent training plus a uniformity term that spreads the embeddings apart.

``bt2 train --method uniform_independent --uniformity_weight 0.5`` (or ``train(..., method_config={...})``) runs it:
the config dataclass gives its settings (and their ``--help``), ``compute_loss`` its named loss terms; the trainer
sums those whose key ends in ``_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bt2_hf.losses import classification_loss
from bt2_hf.methods import CompatibilityMethod, MethodConfig, register_method


@dataclass
class UniformIndependentConfig(MethodConfig):
    """Args: uniformity_weight (`float`, *optional*, defaults to 0.5): weight of the uniformity term."""

    uniformity_weight: float = field(default=0.5, metadata={"help": "Weight of the uniformity term."})


@register_method
class UniformIndependentMethod(CompatibilityMethod):
    """Cross-entropy + ``uniformity_weight · log E exp(-2 ‖e_i − e_j‖²)`` over the batch (Wang & Isola, 2020)."""

    name = "uniform_independent"
    config_class = UniformIndependentConfig

    def compute_loss(self, outputs, targets: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        embeddings = outputs.embeddings.float()
        uniformity = torch.pdist(embeddings).pow(2).mul(-2).exp().mean().log()
        return {
            "classification_loss": classification_loss(outputs.logits, labels, self.config.label_smoothing),
            "uniformity_loss": self.config.uniformity_weight * uniformity,
        }
