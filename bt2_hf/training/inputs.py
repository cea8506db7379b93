"""What a training run reads: its rows (image–label data or image–text rows, after the class subset and sample
cap), the batch loaders over them, and the seed of each batch's augmentation.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.datasets import ImageClassificationData, load_image_classification
from ..data.device_loader import DeviceTensorDataLoader, ShardedDataLoader
from ..data.image_text import ImageTextData, load_image_text
from ..data.subsets import parse_class_subset
from .arguments import DataArguments

# Seeds of the no-grad passes, kept apart from the training epochs' seeds (epoch e uses seed + e).
PROTOTYPE_EPOCH = -1
PRECOMPUTE_EPOCH = -2


def augmentation_seed(seed: int, epoch: int, batch_index: int) -> int:
    """A distinct, reproducible seed per (epoch, micro-batch): resume and any process count draw the same crops."""
    return (seed * 1_000_003 + (epoch + 3) * 100_003 + batch_index) % (2**62)


def load_image_text_rows(data_args: DataArguments, train_data: Any, seed: int, method) -> ImageTextData:
    if train_data is None:
        if data_args.dataset in ("fashion_mnist", "fashion-mnist"):
            raise ValueError(
                f"Method {method.name!r} trains a {method.modality} tower on image–text data: pass --dataset with a "
                "`datasets` folder (save_to_disk) or Hub id holding an image and a text/caption column."
            )
        data = load_image_text(
            data_args.dataset, data_args.train_split, image_column=data_args.image_column,
            text_column=data_args.text_column, label_column=data_args.label_column,
            old_target_column=data_args.old_target_column, image_size=data_args.image_size,
            num_channels=data_args.num_channels, in_memory=data_args.in_memory,
        )  # fmt: skip
    elif isinstance(train_data, ImageTextData):
        data = train_data
    else:
        raise TypeError(f"Method {method.name!r} trains on image–text data: train_data must be an ImageTextData.")
    if method.requires_labels and not data.has_labels:
        raise ValueError(f"Method {method.name!r} needs class labels; the data has no label column.")
    if data.class_names is not None:
        data = data.select_classes(parse_class_subset(data_args.class_subset, data.num_classes))
    elif data_args.class_subset:
        raise ValueError("class_subset needs labelled data; this image–text data has no label column.")
    data = data.take_samples(data_args.max_train_samples, seed=seed)
    if len(data) == 0:
        raise ValueError("No training rows left after the class subset / max_train_samples selection.")
    return data


def load_train_data(data_args: DataArguments, train_data: Any, seed: int, method=None):
    if method is not None and method.modality != "image":
        return load_image_text_rows(data_args, train_data, seed, method)
    if train_data is None:
        data = load_image_classification(
            data_args.dataset,
            data_args.train_split,
            data_dir=data_args.data_dir,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            image_size=data_args.image_size,
            num_channels=data_args.num_channels,
            in_memory=data_args.in_memory,
        )
    elif isinstance(train_data, ImageClassificationData):
        data = train_data
    elif isinstance(train_data, (tuple, list)) and len(train_data) == 2:
        data = ImageClassificationData(images=train_data[0], labels=train_data[1])
    else:
        raise TypeError("train_data must be an ImageClassificationData or an (images, labels) pair of tensors.")
    subset = parse_class_subset(data_args.class_subset, data.num_classes)
    data = data.select_classes(subset)
    data = data.take_per_class(data_args.max_train_samples, seed=seed)
    if len(data) == 0:
        raise ValueError("No training samples left after the class subset / max_train_samples selection.")
    return data


def make_loader(data: ImageClassificationData, batch_size: int, accelerator, args, seed: int, *, sharded: bool,
                 shuffle: bool, drop_last: bool):  # fmt: skip
    num_processes = accelerator.num_processes if sharded else 1
    process_index = accelerator.process_index if sharded else 0
    on_device = args.data_on_device if args.data_on_device is not None else data.in_memory
    if data.in_memory:
        device = accelerator.device if on_device else torch.device("cpu")
        return DeviceTensorDataLoader(
            data.images, data.labels, batch_size, device, num_processes, process_index, shuffle, seed, drop_last
        )
    return ShardedDataLoader(
        data, batch_size, num_processes, process_index, shuffle, seed, drop_last, args.num_workers, accelerator.device
    )
