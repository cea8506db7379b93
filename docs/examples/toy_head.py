"""A toy head in one file: a two-layer MLP head whose hidden width is its own setting (``BT2Config.head_config``).

``BT2Config(head_type="mlp", head_config={"hidden_dim": 64}, embedding_dim=16)`` builds it. ``widths`` states the
embedding and compatible widths the config implies; ``from_config`` builds the module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bt2_hf.heads import HeadOutput, LinearHead, register_head, unit_rows


@register_head("mlp")
class MLPHead(nn.Module):
    """Linear → GELU → linear → L2 norm, plus a bias-free classifier on the embedding."""

    default_nonlinearity = "none"

    @classmethod
    def widths(cls, values: dict[str, Any]) -> tuple[int, int]:
        if int(values.get("hidden_dim", 64)) <= 0:
            raise ValueError(f"hidden_dim must be positive, got {values['hidden_dim']}.")
        return LinearHead.widths(values)  # the same width rule as a linear head

    @classmethod
    def from_config(cls, config: Any, input_dim: int) -> MLPHead:
        hidden_dim = int(config.head_config.get("hidden_dim", 64))
        return cls(input_dim, hidden_dim, config.embedding_dim, config.num_classes, config.logit_scale)

    def __init__(self, input_dim: int, hidden_dim: int, embedding_dim: int, num_labels: int, logit_scale: float):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.logit_scale = logit_scale
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embedding_dim))
        self.classifier = nn.Linear(embedding_dim, num_labels, bias=False) if num_labels > 0 else None

    def forward(self, pooled: torch.Tensor) -> HeadOutput:
        embeddings = unit_rows(self.mlp(pooled))
        logits = self.logit_scale * self.classifier(embeddings) if self.classifier is not None else None
        return HeadOutput(embeddings=embeddings, compatible_embeddings=embeddings, features=embeddings, logits=logits)
