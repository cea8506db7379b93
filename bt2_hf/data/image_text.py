"""Image–text rows for training text towers and image–text pairs: an image, its caption, optionally a class label
and a precomputed old-model embedding of the image.

Every source ends up as an :class:`ImageTextData`: one row per caption (an image with several captions gives several
rows sharing the image), whose images are an :class:`~bt2_hf.data.ImageClassificationData` (in memory, or decoded
lazily), so the training loop's batch order, sharding and exact resume are those of image training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .classification_data import ImageClassificationData
from .datasets import HFImageDataset, load_hf_split, pil_to_uint8

TEXT_COLUMNS = ("text", "caption", "captions", "sentence", "sentences")


@dataclass
class ImageTextData:
    """Rows of (image, caption[, label][, old target]).

    Args:
        images (:class:`~bt2_hf.data.ImageClassificationData`): one image per row (rows that share an image index
            the same stored image) with the row's label (0 when the data has no labels).
        texts (`list[str]`): one caption per row.
        has_labels (`bool`, *optional*, defaults to `False`): whether ``images.labels`` are real class labels.
        old_targets (`torch.FloatTensor` of shape `(rows, d_old)`, *optional*): the old image model's embeddings of
            the rows' images, precomputed (a column of the data set); used instead of running the old model.
        has_images (`bool`, *optional*, defaults to `True`): `False` when the data set has no image column (then
            ``old_targets`` is required and ``images`` holds 1-pixel placeholders).
        source (`str`, *optional*): where the data came from (recorded in the checkpoint).
    """

    images: ImageClassificationData
    texts: list[str]
    has_labels: bool = False
    old_targets: torch.Tensor | None = None
    has_images: bool = True
    source: str = "in-memory"

    def __post_init__(self) -> None:
        self.texts = [str(t) for t in self.texts]
        if len(self.texts) != len(self.images):
            raise ValueError(f"{len(self.texts)} captions but {len(self.images)} images.")
        if self.old_targets is not None:
            self.old_targets = torch.as_tensor(self.old_targets, dtype=torch.float32)
            if self.old_targets.ndim != 2 or len(self.old_targets) != len(self.texts):
                raise ValueError(
                    f"The precomputed old targets must have shape (rows, d_old) = ({len(self.texts)}, d), got "
                    f"{tuple(self.old_targets.shape)}."
                )
        if not self.has_images and self.old_targets is None:
            raise ValueError("Image–text data without images needs precomputed old targets (old_target_column).")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def labels(self) -> torch.Tensor | None:
        return self.images.labels if self.has_labels else None

    @property
    def num_classes(self) -> int:
        """Classes of the labels, 0 for data without labels (the trained tower then gets no classifier)."""
        return self.images.num_classes if self.has_labels else 0

    @property
    def class_names(self) -> list[str] | None:
        return self.images.class_names if self.has_labels else None

    def take(self, rows: torch.Tensor) -> ImageTextData:
        """The rows ``rows`` (a LongTensor of row indices)."""
        return ImageTextData(
            images=self.images._take(rows), texts=[self.texts[int(r)] for r in rows], has_labels=self.has_labels,
            old_targets=None if self.old_targets is None else self.old_targets[rows], has_images=self.has_images,
            source=self.source,
        )  # fmt: skip

    def select_classes(self, class_ids: Sequence[int] | None) -> ImageTextData:
        """Keep the rows of ``class_ids`` (labels keep their ids)."""
        if class_ids is None:
            return self
        if not self.has_labels:
            raise ValueError("class_subset needs labelled data; this image–text data has no label column.")
        keep = torch.isin(self.images.labels, torch.tensor(list(class_ids), dtype=torch.long))
        selected = self.take(torch.nonzero(keep).flatten())
        selected.images.class_subset = sorted(class_ids)
        return selected

    def take_samples(self, max_samples: int | None, seed: int = 0) -> ImageTextData:
        """At most ``max_samples`` rows, drawn with a fixed seed (class-balanced when labelled)."""
        if max_samples is None or max_samples >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        if self.has_labels:
            labels = self.images.labels
            present = torch.unique(labels)
            per_class = max(1, max_samples // len(present))
            order = torch.cat([order[labels[order] == c][:per_class] for c in present.tolist()])
        return self.take(torch.sort(order[:max_samples]).values)


def from_hf_image_text(
    dataset: Any,
    image_column: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    old_target_column: str | None = None,
    image_size: int | None = None,
    num_channels: int = 3,
    in_memory: bool = True,
    source: str = "datasets",
) -> ImageTextData:
    """Convert a `datasets.Dataset` with an image and a caption column (``text`` or ``caption`` by default).

    A caption column holding a list of captions per image gives one row per caption. The label column defaults to
    the first ``ClassLabel`` feature (none: unlabelled data); ``old_target_column`` holds precomputed old-model
    embeddings of the images (a list of floats per row).

    Args:
        dataset (`datasets.Dataset`): the split.
        image_column (`str`, *optional*): defaults to the first ``Image`` feature.
        text_column (`str`, *optional*): defaults to the first of ``text``, ``caption``, ``captions``, ``sentence``,
            ``sentences``.
        label_column (`str`, *optional*): class labels (optional).
        old_target_column (`str`, *optional*): precomputed old image embeddings (optional).
        image_size (`int`, *optional*): resize every image to this size.
        num_channels (`int`, *optional*, defaults to 3): 1 or 3.
        in_memory (`bool`, *optional*, defaults to `True`): decode the images now, or on the fly.
    """
    import datasets

    features = dataset.features
    columns = list(features)
    if image_column is None:
        image_column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMNS if c in features), None)
    if label_column is None:
        label_column = next((k for k, v in features.items() if isinstance(v, datasets.ClassLabel)), None)
    if text_column is None or text_column not in features:
        raise ValueError(
            f"Cannot find the caption column of the dataset (columns: {columns}); name it text or caption, or set "
            "--text_column."
        )
    for role, column in (("image", image_column), ("label", label_column), ("old target", old_target_column)):
        if column is not None and column not in features:
            raise ValueError(f"The {role} column {column!r} is not in the dataset (columns: {columns}).")
    if image_column is None and old_target_column is None:
        raise ValueError(
            f"The dataset has no image column (columns: {columns}): set --image_column, or give the old model's "
            "embeddings of the images as a column (--old_target_column)."
        )
    texts, image_rows = [], []
    for row, value in enumerate(dataset[text_column]):
        captions = value if isinstance(value, (list, tuple)) else [value]
        texts += [str(c) for c in captions]
        image_rows += [row] * len(captions)
    if not texts:
        raise ValueError(f"The dataset {source} has no captions.")
    image_rows = torch.tensor(image_rows, dtype=torch.long)
    labels = torch.zeros(len(texts), dtype=torch.long)
    class_names = ["0"]
    if label_column is not None:
        labels = torch.tensor(dataset[label_column], dtype=torch.long)[image_rows]
        feature = features[label_column]
        class_names = (
            list(feature.names) if isinstance(feature, datasets.ClassLabel)
            else [str(i) for i in range(int(labels.max()) + 1)]
        )  # fmt: skip
    old_targets = None
    if old_target_column is not None:
        old_targets = torch.tensor(dataset[old_target_column], dtype=torch.float32)[image_rows]
    if image_column is None:
        placeholders = torch.zeros(len(texts), 1, 1, 1, dtype=torch.uint8)
        images = ImageClassificationData(labels=labels, images=placeholders, class_names=class_names, source=source)
    elif in_memory:
        decoded = [pil_to_uint8(item, num_channels, image_size) for item in dataset[image_column]]
        shapes = {tuple(image.shape) for image in decoded}
        if len(shapes) > 1:
            raise ValueError(f"Images have different sizes {sorted(shapes)[:3]}…; set image_size to resize them.")
        stacked = torch.stack(decoded)[image_rows]
        images = ImageClassificationData(labels=labels, images=stacked, class_names=class_names, source=source)
    else:
        if image_size is None:
            raise ValueError("Decoding images on the fly needs a fixed image_size to batch them.")
        lazy = HFImageDataset(dataset, image_column, image_size, num_channels)
        images = ImageClassificationData(
            labels=labels, dataset=lazy, class_names=class_names, source=source, indices=image_rows
        )
    return ImageTextData(
        images=images, texts=texts, has_labels=label_column is not None, old_targets=old_targets,
        has_images=image_column is not None, source=source,
    )  # fmt: skip


def load_image_text(dataset: str, split: str = "train", **kwargs: Any) -> ImageTextData:
    """One split of an image–text data set: a ``save_to_disk`` directory or a Hub id (see :func:`from_hf_image_text`
    for the keyword arguments)."""
    return from_hf_image_text(load_hf_split(dataset, split), source=f"{dataset}:{split}", **kwargs)


def tokenize_texts(processor: Any, texts: Sequence[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    """Tokenise captions once with a text tower's processor: ``input_ids`` (and ``attention_mask`` …) padded to the
    longest caption (an open_clip tokenizer pads to its context length).

    Args:
        processor: a transformers tokenizer or :class:`~bt2_hf.processing.OpenCLIPTokenizer` (``model.processor``).
        texts (`Sequence[str]`): the captions.
        max_length (`int`, *optional*, defaults to 64): tokens per caption (longer ones are truncated).
    """
    if processor is None:
        raise ValueError(
            "The text tower has no tokenizer: start it from a pretrained checkpoint (init_from) that has one, or use "
            "an open_clip text tower (its tokenizer ships with open_clip)."
        )
    try:
        encoded = processor(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    except TypeError:  # open_clip tokenizers pad to a fixed context length and take no such options
        encoded = processor(list(texts), return_tensors="pt")
    return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
