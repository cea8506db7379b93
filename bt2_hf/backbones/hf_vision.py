"""transformers vision encoders (ResNet, ViT, ConvNeXt, CLIP vision, …) as BT² backbones."""

from __future__ import annotations

import logging
from typing import Any

import torch

from . import register_backbone
from ._hf_common import HFBackbone

logger = logging.getLogger(__name__)

# Architectures whose `pooler_output` is the natural image embedding; the others use the [CLS] token.
_POOLER_BY_DEFAULT = {
    "resnet",
    "convnext",
    "convnextv2",
    "clip_vision_model",
    "regnet",
    "efficientnet",
    "mobilenet_v2",
    "mobilevit",
}
# Architectures whose last hidden state is a (B, C, H, W) feature map (CvT without a class token in its last stage):
# the spatial mean is the embedding.
_MEAN_BY_DEFAULT = {"cvt"}


@register_backbone("hf_vision")
class HFVisionBackbone(HFBackbone):
    """Any transformers vision model from its config dict (``ViTConfig(...).to_dict()`` and so on).

    Poolings: ``"pooler"`` (the model's ``pooler_output``), ``"cls"`` (first token of ``last_hidden_state``, ViT
    style), ``"mean"`` (mean over tokens or spatial positions). ``"default"`` picks ``pooler`` for CNNs, MobileViT and
    CLIP vision, ``mean`` for CvT (its output is a feature map), ``cls`` for ViT-like models.
    """

    modality = "image"
    main_input_name = "pixel_values"
    poolings = ("default", "pooler", "cls", "mean")

    @classmethod
    def prefers_channels_last(cls, backbone_config: dict[str, Any]) -> bool:
        return backbone_config.get("model_type") in ("resnet", "convnext", "regnet", "efficientnet")

    def default_pooling(self, model_type: str) -> str:
        if model_type in _MEAN_BY_DEFAULT:
            return "mean"
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

    def pretrained_processor(self, name_or_path: str, **hub_kwargs: Any) -> Any:
        """The checkpoint's own image processor settings (size, crop, resampling, mean/std) as a BT2ImageProcessor."""
        from transformers import AutoImageProcessor

        from ..processing import BT2ImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path, **hub_kwargs)
        except (OSError, ValueError) as error:
            logger.warning(
                "%s has no image processor (%s); using mean/std 0.5 at the model's image size. Set model.processor "
                "to the preprocessing the backbone was trained with.",
                name_or_path,
                str(error).splitlines()[0],
            )
            return None
        converted = BT2ImageProcessor.from_image_processor(
            processor, source=f"{name_or_path} ({type(processor).__name__})"
        )
        channels = int(self.backbone_config.get("num_channels", 3))
        if channels != converted.num_channels:
            converted = BT2ImageProcessor.from_dict({**converted.to_dict(), "num_channels": channels,
                                                     "image_mean": converted.image_mean[:channels],
                                                     "image_std": converted.image_std[:channels]})  # fmt: skip
        return converted
