"""transformers vision encoders (ResNet, ViT, ConvNeXt, CLIP vision, …) as BT² backbones."""

from __future__ import annotations

import torch

from . import register_backbone
from ._hf_common import HFBackbone

# Architectures whose `pooler_output` is the natural image embedding; the others use the [CLS] token.
_POOLER_BY_DEFAULT = {
    "resnet",
    "convnext",
    "convnextv2",
    "clip_vision_model",
    "regnet",
    "efficientnet",
    "mobilenet_v2",
}


@register_backbone("hf_vision")
class HFVisionBackbone(HFBackbone):
    """Any transformers vision model from its config dict (``ViTConfig(...).to_dict()`` and so on).

    Poolings: ``"pooler"`` (the model's ``pooler_output``), ``"cls"`` (first token of ``last_hidden_state``, ViT
    style), ``"mean"`` (mean over tokens or spatial positions). ``"default"`` picks ``pooler`` for CNNs and CLIP vision,
    ``cls`` for ViT-like models.
    """

    modality = "image"
    main_input_name = "pixel_values"
    poolings = ("default", "pooler", "cls", "mean")

    def default_pooling(self, model_type: str) -> str:
        return "pooler" if model_type in _POOLER_BY_DEFAULT else "cls"

    def forward(self, pixel_values: torch.Tensor, **unused: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=pixel_values)
        if self.pooling == "pooler":
            return outputs.pooler_output.flatten(1)
        hidden = outputs.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        # mean: (B, C, H, W) feature maps from CNNs, (B, T, H) token sequences from transformers.
        return hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)
