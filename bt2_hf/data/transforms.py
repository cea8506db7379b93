"""Batch transforms on tensors (CPU or GPU): training augmentation, then each model's own preprocessing.

The pipeline is split in two so that the frozen reference models see *the same augmented images* as the model being
trained, each through its own processor settings (size, channels, mean/std):

1. :class:`BatchAugmentation` — uint8 ``(B, C, H, W)`` → float in [0, 1], random crop with zero padding and
   horizontal flip. Its randomness is drawn for the whole *global* batch from a seed, so every process, and a resumed
   run, draws exactly the same crops.
2. :class:`ModelInputTransform` — float [0, 1] images → ``pixel_values`` for one model (channels, resize, normalise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class AugmentationParams:
    """Per-sample crop offsets and flips of one batch."""

    offset_y: torch.Tensor  # (B,) int64 in [0, 2·padding]
    offset_x: torch.Tensor  # (B,)
    flip: torch.Tensor  # (B,) bool

    def slice(self, start: int, end: int) -> AugmentationParams:
        return AugmentationParams(self.offset_y[start:end], self.offset_x[start:end], self.flip[start:end])


class BatchAugmentation:
    """Light training augmentation on a batch: random crop after zero padding, random horizontal flip.

    Args:
        padding (`int`, *optional*, defaults to 4): pixels of zero padding before the random crop (0 disables it).
        horizontal_flip (`bool`, *optional*, defaults to `True`): flip half of the images left–right.
    """

    def __init__(self, padding: int = 4, horizontal_flip: bool = True):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}.")
        self.padding = int(padding)
        self.horizontal_flip = bool(horizontal_flip)

    def sample(self, batch_size: int, seed: int) -> AugmentationParams:
        """Draw the parameters of a batch of ``batch_size`` from ``seed`` (on the CPU, so every device agrees)."""
        generator = torch.Generator().manual_seed(int(seed))
        offsets = torch.randint(0, 2 * self.padding + 1, (2, batch_size), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        if not self.horizontal_flip:
            flip = torch.zeros_like(flip)
        return AugmentationParams(offsets[0], offsets[1], flip)

    def __call__(self, images: torch.Tensor, params: AugmentationParams | None) -> torch.Tensor:
        """Augment ``images`` (uint8 or float in [0, 1], ``(B, C, H, W)``); ``params=None`` only converts to float."""
        images = to_float01(images)
        if params is None:
            return images
        batch, _, height, width = images.shape
        if self.padding:
            padded = F.pad(images, (self.padding,) * 4)
            rows = params.offset_y.to(images.device)[:, None] + torch.arange(height, device=images.device)  # (B, H)
            cols = params.offset_x.to(images.device)[:, None] + torch.arange(width, device=images.device)  # (B, W)
            batch_index = torch.arange(batch, device=images.device)[:, None, None]
            # Advanced indexing gathers one crop per sample in a single kernel: (B, H, W, C) → (B, C, H, W).
            images = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.horizontal_flip:
            flip = params.flip.to(images.device)[:, None, None, None]
            images = torch.where(flip, images.flip(-1), images)
        return images.contiguous()


def to_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1]; float images are returned as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


class ModelInputTransform:
    """Turn float [0, 1] image batches into one model's ``pixel_values``, following its processor settings.

    Args:
        image_size (`tuple[int, int]`): the model's input size.
        num_channels (`int`): 1 or 3.
        image_mean, image_std (`list[float]`): per-channel normalisation.
        channels_last (`bool`, *optional*, defaults to `False`): return a channels-last tensor (faster CNNs on GPU).
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        num_channels: int,
        image_mean: list[float],
        image_std: list[float],
        channels_last: bool = False,
    ):
        self.image_size = tuple(int(s) for s in image_size)
        self.num_channels = int(num_channels)
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1)
        self.channels_last = channels_last
        self.processor = None  # set by from_processor: then the processor's own maths is applied

    @classmethod
    def from_processor(cls, processor, channels_last: bool = False) -> ModelInputTransform:
        """Build from a :class:`~bt2_hf.BT2ImageProcessor` (``model.processor``): training then resizes, crops and
        normalises with the processor's own ``transform``, exactly what ``encode`` and the pipeline do."""
        if processor is None or not hasattr(processor, "transform"):
            raise ValueError(
                "Training on images needs the model's image processor (model.processor, a BT2ImageProcessor); "
                "this model has none."
            )
        transform = cls(
            processor.image_size, processor.num_channels, processor.image_mean, processor.image_std, channels_last
        )
        transform.processor = processor
        return transform

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = to_float01(images)
        if self.processor is not None:
            pixel_values = self.processor.transform(images)
            if self.channels_last:
                pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            return pixel_values
        channels = images.shape[1]
        if channels != self.num_channels:
            if self.num_channels == 3 and channels == 1:
                images = images.expand(-1, 3, -1, -1)
            elif self.num_channels == 1 and channels == 3:
                weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
                images = (images * weights).sum(dim=1, keepdim=True)
            else:
                raise ValueError(f"Cannot convert {channels}-channel images to {self.num_channels} channels.")
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        pixel_values = (images - self.mean.to(images.device)) / self.std.to(images.device)
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values
