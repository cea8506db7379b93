"""Preprocessing saved next to the weights: an image processor for image backbones, a tokenizer for text ones.

The image processor is deliberately small and dependency-free (PIL / numpy / torch): resize, scale to [0, 1],
normalise. It is stored as ``preprocessor_config.json``, so ``BT2Model.from_pretrained`` gets back exactly the
preprocessing the model was trained with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .utils.io import atomic_write_json

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
OPEN_CLIP_TOKENIZER_FILE = "open_clip_tokenizer_config.json"


class BT2ImageProcessor:
    """Turns images (PIL, numpy ``HxW``/``HxWxC`` uint8 or float, torch ``CxHxW``/``BxCxHxW``) into ``pixel_values``.

    Args:
        image_size (`int` or `tuple[int, int]`, *optional*, defaults to 28): output height and width.
        num_channels (`int`, *optional*, defaults to 1): 1 (grayscale) or 3 (RGB); inputs are converted.
        image_mean (`float` or `list[float]`, *optional*, defaults to 0.5): per-channel mean after scaling to [0, 1].
        image_std (`float` or `list[float]`, *optional*, defaults to 0.5): per-channel standard deviation.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 28,
        num_channels: int = 1,
        image_mean: float | Sequence[float] = 0.5,
        image_std: float | Sequence[float] = 0.5,
    ):
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}.")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_size = (int(size[0]), int(size[1]))
        self.num_channels = int(num_channels)
        self.image_mean = _per_channel(image_mean, num_channels, "image_mean")
        self.image_std = _per_channel(image_std, num_channels, "image_std")

    def to_dict(self) -> dict[str, Any]:
        return {
            "processor_class": type(self).__name__,
            "image_size": list(self.image_size),
            "num_channels": self.num_channels,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        atomic_write_json(Path(save_directory) / IMAGE_PROCESSOR_FILE, self.to_dict())

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BT2ImageProcessor:
        config = {k: v for k, v in config.items() if k != "processor_class"}
        return cls(**config)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BT2ImageProcessor:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def __call__(self, images: Any, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        """Preprocess one image or a list of images into ``{"pixel_values": (B, C, H, W) float tensor}``."""
        if return_tensors != "pt":
            raise ValueError("BT2ImageProcessor only returns PyTorch tensors (return_tensors='pt').")
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            batch = [images[i] for i in range(images.shape[0])]
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            batch = [images[i] for i in range(images.shape[0])]
        elif isinstance(images, (list, tuple)):
            batch = list(images)
        else:
            batch = [images]
        if not batch:
            raise ValueError("No images to preprocess.")
        pixel_values = torch.stack([self._to_chw(image) for image in batch])
        pixel_values = F.interpolate(pixel_values, size=self.image_size, mode="bilinear", align_corners=False)
        mean = torch.tensor(self.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std).view(1, -1, 1, 1)
        return {"pixel_values": (pixel_values - mean) / std}

    def _to_chw(self, image: Any) -> torch.Tensor:
        """One image as a float (C, H, W) tensor in [0, 1] with this processor's channel count."""
        if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image, without importing PIL eagerly
            image = np.asarray(image.convert("L" if self.num_channels == 1 else "RGB"))
        if isinstance(image, np.ndarray):
            array = image
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            if tensor.ndim == 2:
                tensor = tensor.unsqueeze(0)
            elif tensor.ndim == 3 and tensor.shape[-1] in (1, 3, 4) and tensor.shape[0] not in (1, 3):
                tensor = tensor.permute(2, 0, 1)
        elif isinstance(image, torch.Tensor):
            tensor = image if image.ndim == 3 else image.unsqueeze(0)
        else:
            raise TypeError(
                f"Unsupported image type {type(image).__name__}; pass PIL images, numpy arrays or torch tensors."
            )
        if tensor.ndim != 3:
            raise ValueError(f"Expected an image of shape (H, W), (H, W, C) or (C, H, W), got {tuple(image.shape)}.")
        is_integer = not torch.is_floating_point(tensor)
        tensor = tensor.float()
        if is_integer:
            tensor = tensor / 255.0
        if tensor.shape[0] == 4:  # drop alpha
            tensor = tensor[:3]
        if tensor.shape[0] == self.num_channels:
            return tensor
        if self.num_channels == 3 and tensor.shape[0] == 1:
            return tensor.expand(3, -1, -1)
        if self.num_channels == 1 and tensor.shape[0] == 3:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            return (tensor * weights).sum(dim=0, keepdim=True)
        raise ValueError(f"Cannot convert an image with {tensor.shape[0]} channels to {self.num_channels}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"


class OpenCLIPTokenizer:
    """open_clip's tokenizer behind the transformers call convention (``{"input_ids": ...}``), saved by name."""

    def __init__(self, model_name: str | None = None, context_length: int = 77):
        from .utils.imports import require

        open_clip = require("open_clip", extra="open_clip")
        self.model_name = model_name
        self.context_length = int(context_length)
        if model_name:
            self._tokenizer = open_clip.get_tokenizer(model_name, context_length=self.context_length)
        else:
            self._tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)

    def __call__(
        self, texts: str | Sequence[str], return_tensors: str = "pt", **unused: Any
    ) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return {"input_ids": self._tokenizer(texts)}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        atomic_write_json(
            Path(save_directory) / OPEN_CLIP_TOKENIZER_FILE,
            {"model_name": self.model_name, "context_length": self.context_length},
        )

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> OpenCLIPTokenizer:
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))


def default_processor(config: Any, backbone_config: dict[str, Any]) -> Any:
    """The processor a freshly built model uses when none was given: derived from its (resolved) backbone config."""
    backbone = dict(backbone_config)
    if config.backbone_type == "open_clip_text":
        text_cfg = backbone.get("model_cfg", {}).get("text_cfg", {})
        return OpenCLIPTokenizer(backbone.get("model_name"), text_cfg.get("context_length", 77))
    if config.modality == "text":
        return None  # a transformers tokenizer needs vocabulary files: the user passes it
    if config.backbone_type == "open_clip_vision":
        vision_cfg = backbone.get("model_cfg", {}).get("vision_cfg", {})
        return BT2ImageProcessor(
            image_size=vision_cfg.get("image_size", 224),
            num_channels=3,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        )
    image_size = backbone.get("image_size", 28 if config.backbone_type == "small_cnn" else 224)
    return BT2ImageProcessor(image_size=image_size, num_channels=int(backbone.get("num_channels", 3)))


def load_processor(directory: str | os.PathLike, config: Any) -> Any:
    """Load the processor saved in a local model directory, or ``None`` when there is none."""
    directory = Path(directory)
    if (directory / IMAGE_PROCESSOR_FILE).is_file():
        return BT2ImageProcessor.from_json_file(directory / IMAGE_PROCESSOR_FILE)
    if (directory / OPEN_CLIP_TOKENIZER_FILE).is_file():
        return OpenCLIPTokenizer.from_json_file(directory / OPEN_CLIP_TOKENIZER_FILE)
    if config.modality == "text" and (directory / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(directory)
    return None


def _per_channel(value: float | Sequence[float], num_channels: int, name: str) -> list[float]:
    values = [float(value)] * num_channels if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != num_channels:
        raise ValueError(f"{name} needs {num_channels} values (one per channel), got {len(values)}.")
    return values
