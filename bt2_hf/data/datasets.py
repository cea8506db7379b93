"""Image classification data for training: in-memory tensors, or a lazily decoded `datasets` dataset.

Every source ends up as an :class:`ImageClassificationData`: uint8 images ``(N, C, H, W)`` (in memory) or a
map-style dataset giving one such image per index, int64 labels in the dataset's own label space, and class names.
Sources, as :func:`~bt2_hf.data.sources.resolve_data_source` names them: Fashion-MNIST IDX files, a directory
written by ``Dataset.save_to_disk``, an ``imagefolder`` directory (one sub-directory per class), or a Hub dataset id
(when online).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .classification_data import ImageClassificationData
from .fashion_mnist import load_fashion_mnist
from .sources import HUB, IDX, IMAGE_KINDS, IMAGEFOLDER, SAVED_DATASET, DataSource, resolve_data_source
from .sources import is_saved_dataset as is_saved_dataset  # its home is sources.py; still importable from here

logger = logging.getLogger(__name__)


class HFImageDataset(torch.utils.data.Dataset):
    """A `datasets.Dataset` seen as uint8 ``(C, H, W)`` tensors of a fixed size (decoded per item, in workers).

    Args:
        dataset (`datasets.Dataset`): the split.
        image_column (`str`): the column holding images.
        image_size (`int`): output height and width (images are resized, bilinear).
        num_channels (`int`): 1 or 3.
    """

    def __init__(self, dataset: Any, image_column: str, image_size: int, num_channels: int):
        self.dataset = dataset
        self.image_column = image_column
        self.image_size = image_size
        self.num_channels = num_channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return pil_to_uint8(self.dataset[int(index)][self.image_column], self.num_channels, self.image_size)


def pil_to_uint8(image: Any, num_channels: int, image_size: int | None) -> torch.Tensor:
    """A PIL image (or array) as a uint8 ``(C, H, W)`` tensor with ``num_channels`` channels, optionally resized."""
    if hasattr(image, "convert"):
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size))
        image = image.convert("L" if num_channels == 1 else "RGB")
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8))  # a copy: PIL buffers are read-only
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    if tensor.shape[0] != num_channels:
        tensor = tensor[:1].expand(3, -1, -1).contiguous() if num_channels == 3 else tensor[:1]
    if image_size is not None and tuple(tensor.shape[1:]) != (image_size, image_size):
        tensor = F.interpolate(tensor[None].float(), size=(image_size, image_size), mode="bilinear")[0]
        tensor = tensor.round().clamp(0, 255).to(torch.uint8)
    return tensor


def load_hf_dataset(source: DataSource, streaming: bool = False) -> Any:
    """The `datasets` object a resolved source names: a ``Dataset``, a ``DatasetDict`` or their streamed forms.

    Args:
        source (:class:`~bt2_hf.data.sources.DataSource`): a ``"saved_dataset"``, ``"imagefolder"`` or ``"hub"``
            source (see :func:`~bt2_hf.data.sources.resolve_data_source`).
        streaming (`bool`, *optional*, defaults to `False`): stream an imagefolder or a Hub dataset instead of
            indexing it first (a ``save_to_disk`` directory is memory-mapped either way).
    """
    import datasets

    if source.kind == SAVED_DATASET:
        return datasets.load_from_disk(source.location)
    if source.kind == IMAGEFOLDER:
        return datasets.load_dataset("imagefolder", data_dir=source.location, streaming=streaming)
    if source.kind == HUB:
        return datasets.load_dataset(source.location, streaming=streaming)
    raise ValueError(f"{source.given} is a {source.kind!r} source, which `datasets` does not load; use its reader.")


def load_hf_split(name_or_path: str | DataSource, split: str) -> Any:
    """A `datasets.Dataset` split from a ``save_to_disk`` directory, an imagefolder directory or a Hub id.

    Args:
        name_or_path (`str` or :class:`~bt2_hf.data.sources.DataSource`): resolved with
            :func:`~bt2_hf.data.sources.resolve_data_source` when a string.
        split (`str`): the split of a ``DatasetDict``.
    """
    import datasets

    source = name_or_path
    if not isinstance(source, DataSource):
        source = resolve_data_source(name_or_path, accept=(SAVED_DATASET, IMAGEFOLDER, HUB))
    loaded = load_hf_dataset(source)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{source.given} has splits {list(loaded)}, not {split!r}; set the split name.")
        loaded = loaded[split]
    return loaded


def from_hf_dataset(
    dataset: Any,
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    num_channels: int = 3,
    in_memory: bool = True,
    source: str = "datasets",
) -> ImageClassificationData:
    """Convert a `datasets.Dataset` of images and class labels.

    Args:
        dataset (`datasets.Dataset`): the split.
        image_column (`str`, *optional*): defaults to the first ``Image`` feature (``image``, ``img`` …).
        label_column (`str`, *optional*): defaults to the first ``ClassLabel`` feature (``label``, ``fine_label`` …).
        image_size (`int`, *optional*): resize every image to this size (needed when sizes differ).
        num_channels (`int`, *optional*, defaults to 3): 1 or 3.
        in_memory (`bool`, *optional*, defaults to `True`): decode everything now into one uint8 tensor; otherwise
            decode on the fly (large datasets).
    """
    import datasets

    features = dataset.features
    if image_column is None:
        image_column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
    if label_column is None:
        label_column = next((k for k, v in features.items() if isinstance(v, datasets.ClassLabel)), None)
    for role, column in (("image", image_column), ("label", label_column)):
        if column is None or column not in features:
            raise ValueError(
                f"Cannot find the {role} column of the dataset (columns: {list(features)}); set --{role}_column."
            )
    label_feature = features[label_column]
    labels = torch.tensor(dataset[label_column], dtype=torch.long)
    if isinstance(label_feature, datasets.ClassLabel):
        class_names = list(label_feature.names)
    else:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    if not in_memory:
        if image_size is None:
            raise ValueError("Decoding images on the fly needs a fixed image_size to batch them.")
        lazy = HFImageDataset(dataset, image_column, image_size, num_channels)
        return ImageClassificationData(labels=labels, dataset=lazy, class_names=class_names, source=source)
    images = [pil_to_uint8(item, num_channels, image_size) for item in dataset[image_column]]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(f"Images have different sizes {sorted(shapes)[:3]}…; set image_size to resize them.")
    return ImageClassificationData(labels=labels, images=torch.stack(images), class_names=class_names, source=source)


def load_image_classification(
    dataset: str,
    split: str = "train",
    data_dir: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    num_channels: int = 3,
    in_memory: bool = True,
) -> ImageClassificationData:
    """Load one split of an image classification dataset.

    Args:
        dataset (`str`): ``"fashion_mnist"`` (IDX files in ``data_dir``, defaulting to the Debian package's
            directory), a directory (Fashion-MNIST IDX files, ``save_to_disk`` output or an imagefolder), or a Hub id.
        split (`str`, *optional*, defaults to `"train"`): the split (Fashion-MNIST: ``train``/``test``).
        data_dir (`str`, *optional*): directory of the Fashion-MNIST IDX files.
        image_column, label_column (`str`, *optional*): columns of a `datasets` dataset (auto-detected by default).
        image_size (`int`, *optional*): resize images of a `datasets` dataset to this size.
        num_channels (`int`, *optional*, defaults to 3): channels of images decoded from a `datasets` dataset.
        in_memory (`bool`, *optional*, defaults to `True`): keep the decoded images in one tensor.

    >>> from bt2_hf.data import load_image_classification
    >>> train = load_image_classification("fashion_mnist", "train")  # doctest: +SKIP
    >>> train.images.shape, train.num_classes  # doctest: +SKIP
    (torch.Size([60000, 1, 28, 28]), 10)
    """
    if dataset in ("fashion_mnist", "fashion-mnist"):
        return load_fashion_mnist(data_dir, "test" if split in ("test", "validation", "eval") else split)
    if data_dir and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data_dir {data_dir} does not exist; pass an existing directory.")
    source = resolve_data_source(dataset, accept=IMAGE_KINDS)
    if source.kind == IDX:
        return load_fashion_mnist(source.path, "test" if split in ("test", "validation", "eval") else split)
    hf_split = load_hf_split(source, split)
    return from_hf_dataset(
        hf_split, image_column, label_column, image_size, num_channels, in_memory, source=f"{dataset}:{split}"
    )
