"""The fixed pseudo-classifier ``W_o``: per-class means of the frozen old model's embeddings over the new data."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

logger = logging.getLogger(__name__)


class EmptyClassError(ValueError):
    """A class of the new training set has no sample, so its prototype would be 0/0 (bt2-method §6, pitfall 2)."""


@torch.no_grad()
def compute_class_means(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    embed: Callable[[torch.Tensor], torch.Tensor],
    embedding_dim: int,
    device: torch.device | str = "cpu",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    class_names: list[str] | None = None,
) -> torch.Tensor:
    """Mean embedding per class: ``W_o[c] = mean_{x: y=c} embed(x)`` (not re-normalised, as in the research code).

    Args:
        batches (iterable of `(images, labels)`): this process's share of the new training set.
        num_classes (`int`): classes of the new model; every one must have at least one sample.
        embed (`callable`): images → ``(B, d_old)`` unit embeddings (the frozen old model).
        embedding_dim (`int`): ``d_old``.
        device (`torch.device`, *optional*): where the sums are kept.
        reduce (`callable`, *optional*): sums a tensor over processes (``accelerator.reduce(t, "sum")``).
        class_names (`list[str]`, *optional*): names for the error message.

    Returns:
        `torch.Tensor` of shape `(num_classes, d_old)`, float32.

    Raises:
        EmptyClassError: when a class has no sample (names the class).
    """
    # Every process allocates the sums up front: one may have no batch at all, yet must join the reduction.
    sums = torch.zeros(num_classes, embedding_dim, device=device)
    counts = torch.zeros(num_classes, device=device)
    for images, labels in batches:
        embeddings = embed(images).float().to(device)
        labels = labels.to(embeddings.device)
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"Labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}.")
        sums.index_add_(0, labels, embeddings)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
    if reduce is not None:
        sums, counts = reduce(sums), reduce(counts)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        names = [f"{c} ({class_names[c]})" if class_names and c < len(class_names) else str(c) for c in empty]
        raise EmptyClassError(
            f"Class {', '.join(names)} has no training sample, so the old model's prototype for it (W_o, the mean "
            "embedding of the class) is undefined. Train the compatible model on data that covers every class of the "
            "new model, or lower the model's number of classes."
        )
    return sums / counts[:, None]
