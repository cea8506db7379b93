"""Beyond image→image: captions for classification sets and a BT² text tower that searches an old image gallery.

- :mod:`~bt2_hf.multimodal.captions`: class-name templates → captions, image–text `datasets`, (image_id, caption) rows.
- :mod:`~bt2_hf.multimodal.embedding`: embedding helpers (images, captions, class prototypes) and text→image
  evaluation. Text towers train through the one trainer (``bt2 train --method bt2_text``, :mod:`bt2_hf.methods.text`).
- The Fashion-MNIST text-tower experiment that uses them is :mod:`bt2_hf.experiments.text_tower` (``bt2 text-tower``).
"""

from __future__ import annotations

from .captions import (
    DEFAULT_CAPTION_TEMPLATES,
    build_image_text_dataset,
    caption_name,
    class_captions,
    flatten_captions,
    render_caption,
    split_templates,
)
from .embedding import (
    TEXT_TO_IMAGE_METRICS,
    chance_recall_at_1,
    embed_images,
    embed_texts,
    evaluate_text_to_image,
    image_prototypes,
)

__all__ = [
    "DEFAULT_CAPTION_TEMPLATES",
    "TEXT_TO_IMAGE_METRICS",
    "build_image_text_dataset",
    "caption_name",
    "chance_recall_at_1",
    "class_captions",
    "embed_images",
    "embed_texts",
    "evaluate_text_to_image",
    "flatten_captions",
    "image_prototypes",
    "render_caption",
    "split_templates",
]
