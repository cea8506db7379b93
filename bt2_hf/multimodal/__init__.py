"""Beyond image→image: captions for classification sets and a BT² text tower that searches an old image gallery.

- :mod:`~bt2_hf.multimodal.captions`: class-name templates → captions, image–text `datasets`, (image_id, caption) rows.
- :mod:`~bt2_hf.multimodal.text_tower`: the text-tower losses (:class:`BT2TextTowerLoss`, :class:`AlignedTextTowerLoss`),
  a compact training loop, embedding helpers and text→image evaluation.
- :mod:`~bt2_hf.multimodal.experiment`: the Fashion-MNIST experiment (``python -m bt2_hf.multimodal.experiment``).
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
from .text_tower import (
    TEXT_TO_IMAGE_METRICS,
    AlignedTextTowerConfig,
    AlignedTextTowerLoss,
    BT2TextTowerConfig,
    BT2TextTowerLoss,
    TextTowerTrainingArguments,
    build_text_tower,
    chance_recall_at_1,
    embed_images,
    embed_texts,
    evaluate_text_to_image,
    image_prototypes,
    train_text_tower,
)

__all__ = [
    "DEFAULT_CAPTION_TEMPLATES",
    "TEXT_TO_IMAGE_METRICS",
    "AlignedTextTowerConfig",
    "AlignedTextTowerLoss",
    "BT2TextTowerConfig",
    "BT2TextTowerLoss",
    "TextTowerTrainingArguments",
    "build_image_text_dataset",
    "build_text_tower",
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
    "train_text_tower",
]
