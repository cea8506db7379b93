"""Data for training: loaders of image classification datasets, class subsets, tensor transforms, fast loaders,
captions for classification sets (:mod:`~bt2_hf.data.captions`), and the one resolver of data arguments
(:mod:`~bt2_hf.data.sources`)."""

from __future__ import annotations

from .datasets import HFImageDataset, ImageClassificationData, from_hf_dataset, load_image_classification
from .device_loader import DeviceTensorDataLoader, ShardedDataLoader
from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from .sources import DataSource, DataSourceError, resolve_data_source
from .subsets import parse_class_subset
from .transforms import AugmentationParams, BatchAugmentation, ModelInputTransform

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "AugmentationParams",
    "DataSource",
    "DataSourceError",
    "BatchAugmentation",
    "DeviceTensorDataLoader",
    "HFImageDataset",
    "ImageClassificationData",
    "ModelInputTransform",
    "ShardedDataLoader",
    "from_hf_dataset",
    "load_fashion_mnist",
    "load_image_classification",
    "parse_class_subset",
    "read_idx",
    "resolve_data_source",
]
