"""Text → image retrieval metrics: captions (any text tower) searching an image gallery (any widths: the prefix rule
aligns them), with class-level or explicit relevance; and the chance level of class-level Recall@1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TEXT_TO_IMAGE_METRICS = ("recall@1", "recall@5", "recall@10", "map")


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
    from .evaluator import RetrievalEvaluator

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
