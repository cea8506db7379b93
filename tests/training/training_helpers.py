"""Helpers of the training tests: synthetic data and quick training arguments."""

from __future__ import annotations

import torch

from bt2_hf.training import BT2TrainingArguments

CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}
NUM_CLASSES = 4


def synthetic_data(n: int = 96, seed: int = 0, channels: int = 1, size: int = 28):
    """uint8 images whose brightness pattern depends on the class, so a few steps already learn something."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = torch.randint(0, 96, (n, channels, size, size), generator=generator)
    for c in range(NUM_CLASSES):
        images[labels == c, :, c * 6 : c * 6 + 6, :] += 150
    return images.clamp(0, 255).to(torch.uint8), labels


def quick_args(output_dir, method: str, **overrides) -> BT2TrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        method=method,
        per_device_train_batch_size=16,
        max_steps=3,
        logging_steps=1,
        disable_tqdm=True,
        learning_rate=1e-2,
    )
    values.update(overrides)
    return BT2TrainingArguments(**values)
