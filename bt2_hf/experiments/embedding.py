"""Embed a split with a saved (or loaded) model: the one way the experiments turn images and captions into vectors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def embed_split(
    model_or_path: Any, images: Any, batch_size: int = 512, device: str | torch.device | None = None
) -> np.ndarray:
    """Embed every image of a split with a model's own preprocessing (:meth:`~bt2_hf.BT2Model.encode`).

    Args:
        model_or_path (:class:`~bt2_hf.BT2Model`, `str` or `Path`): a loaded model, or a checkpoint directory or Hub
            id to load (its fingerprint is verified on load).
        images: what :meth:`~bt2_hf.BT2Model.encode` accepts, typically a uint8 ``(N, C, H, W)`` tensor.
        batch_size (`int`, *optional*, defaults to 512): images per forward pass (the numbers do not depend on it
            beyond float rounding).
        device (`str` or `torch.device`, *optional*): where to run; defaults to the model's device (the CPU for a
            model loaded here).

    Returns:
        `np.ndarray` of shape `(N, embedding_dim)`, float32, unit-norm rows, in the order of ``images``.
    """
    if isinstance(model_or_path, (str, Path)):
        from ..modeling_bt2 import BT2Model

        model = BT2Model.from_pretrained(model_or_path)
    else:
        model = model_or_path
    return model.encode(images=images, batch_size=batch_size, device=device).numpy()


@torch.no_grad()
def embed_texts(
    model: Any,
    texts: Sequence[str],
    batch_size: int = 256,
    output: str = "embeddings",
    max_length: int = 64,
) -> torch.Tensor:
    """Embed captions with a text tower.

    Args:
        model (:class:`~bt2_hf.BT2Model`): a text model.
        texts (`Sequence[str]`): captions.
        batch_size (`int`, *optional*, defaults to 256): captions per forward pass.
        output (`str`, *optional*, defaults to `"embeddings"`): ``"embeddings"`` (the full embedding: its prefix
            searches the old gallery), ``"compatible_embeddings"`` or ``"features"`` (BT²'s ``f``, in the independent
            text tower's space: searches the new-model gallery); ``"pooler_output"`` is the backbone's output
            before the head.
        max_length (`int`, *optional*, defaults to 64): tokens per caption.

    Returns:
        `torch.FloatTensor` of shape `(len(texts), width)` on the CPU.
    """
    return model.encode(texts=list(texts), batch_size=batch_size, output=output, max_length=max_length)
