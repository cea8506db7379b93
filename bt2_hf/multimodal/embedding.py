"""Embedding and evaluation helpers of image–text models: embed images and captions, class prototypes, text→image
retrieval metrics.

Text towers are trained by the one trainer (:func:`bt2_hf.training.train` with the ``independent_text``,
``bct_text`` and ``bt2_text`` methods of :mod:`bt2_hf.methods.text`); these helpers embed and evaluate them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.image_text import tokenize_texts
from ..modeling_bt2 import BT2Model

logger = logging.getLogger(__name__)

TEXT_TO_IMAGE_METRICS = ("recall@1", "recall@5", "recall@10", "map")


# ------------------------------------------------------------------------------------------------------- embeddings


@torch.no_grad()
def embed_images(
    model: BT2Model, images: torch.Tensor, batch_size: int = 512, show_progress: bool = False
) -> torch.Tensor:
    """Embed a uint8 image tensor ``(N, C, H, W)`` with an image model's own preprocessing (no augmentation).

    Returns:
        `torch.FloatTensor` of shape `(N, embedding_dim)` on the CPU, unit-norm rows.
    """
    from ..data.transforms import ModelInputTransform

    transform = ModelInputTransform.from_processor(model.processor)
    device = model.device
    was_training = model.training
    model.eval()
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="embed images", disable=not show_progress):
        pixel_values = transform(images[start : start + batch_size].to(device))
        chunks.append(model(pixel_values=pixel_values).embeddings.float().cpu())
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, model.config.embedding_dim)


@torch.no_grad()
def image_prototypes(model: BT2Model, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class means of an image model's embeddings (not re-normalised): BT²'s fixed pseudo-classifier ``W_o``.

    Args:
        model (:class:`~bt2_hf.BT2Model`): the frozen image model.
        images (`torch.ByteTensor` of shape `(N, C, H, W)`): its training images.
        labels (`torch.LongTensor` of shape `(N,)`): their classes; every class in ``range(num_classes)`` needs one.
        num_classes (`int`): number of classes.

    Returns:
        `torch.FloatTensor` of shape `(num_classes, embedding_dim)`.
    """
    from ..training.prototypes import compute_class_means

    embeddings = embed_images(model, images)
    labels = torch.as_tensor(labels, dtype=torch.long)
    return compute_class_means([(embeddings, labels)], num_classes, lambda x: x, embeddings.shape[1])


@torch.no_grad()
def embed_texts(
    model: BT2Model,
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
    if output not in ("embeddings", "compatible_embeddings", "features", "pooler_output"):
        raise ValueError(
            f"output must be embeddings, compatible_embeddings, features or pooler_output, got {output!r}."
        )
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        inputs = tokenize_texts(model.processor, texts[start : start + batch_size], max_length)
        outputs = model(**{k: v.to(model.device) for k, v in inputs.items()})
        chunks.append(getattr(outputs, output).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


# ------------------------------------------------------------------------------------------------------- evaluation


def evaluate_text_to_image(
    text_embeddings,
    gallery_embeddings,
    query_labels=None,
    gallery_labels=None,
    *,
    query_relevant: Sequence[Sequence] | None = None,
    gallery_ids: Sequence | None = None,
    metrics: Sequence[str] = TEXT_TO_IMAGE_METRICS,
    backend: str = "faiss",
) -> dict[str, float]:
    """Recall@K and mAP of text queries against an image gallery (any widths: the prefix rule aligns them).

    Relevance is either class-level (``query_labels`` / ``gallery_labels``: a class-level caption is relevant to
    every image of its class) or explicit (``query_relevant``: each caption's own image ids, with ``gallery_ids``).

    Args:
        text_embeddings (`array-like` of shape `(n, d_q)`): the captions' embeddings (the full BT² embedding: its
            first ``d_gallery`` dims are compared with an old gallery after re-normalisation).
        gallery_embeddings (`array-like` of shape `(N, d_g)`): the image gallery.
        query_labels, gallery_labels (`array-like`, *optional*): class labels.
        query_relevant (`Sequence[Sequence]`, *optional*): relevant gallery ids per query.
        gallery_ids (`Sequence`, *optional*): ids of the gallery rows.
        metrics (`Sequence[str]`, *optional*): defaults to Recall@1/5/10 and mAP.
        backend (`str`, *optional*, defaults to `"faiss"`): k-NN backend.

    Returns:
        `dict[str, float]`: fractions in [0, 1].

    >>> import numpy as np
    >>> texts = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, -0.2]])  # 3-d text tower, 2-d old gallery
    >>> gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> evaluate_text_to_image(texts, gallery, [0, 1], [0, 0, 1], metrics=["recall@1"])
    {'recall@1': 1.0}
    """
    from ..retrieval import RetrievalEvaluator

    evaluator = RetrievalEvaluator(metrics=list(metrics), backend=backend)
    result = evaluator.evaluate(
        np.asarray(text_embeddings, dtype=np.float32),
        np.asarray(gallery_embeddings, dtype=np.float32),
        query_labels,
        gallery_labels,
        query_relevant=query_relevant,
        gallery_ids=gallery_ids,
        same_items=False,
    )
    return dict(result.metrics)


def chance_recall_at_1(query_labels: Sequence[int], gallery_labels: Sequence[int]) -> float:
    """Expected Recall@1 of a random ranking with class-level relevance: the mean relevant fraction of the gallery."""
    gallery = np.asarray(gallery_labels)
    return float(np.mean([np.mean(gallery == label) for label in query_labels]))
