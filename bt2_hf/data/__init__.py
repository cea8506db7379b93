"""Data for training: loaders of image classification datasets, class subsets, tensor transforms, fast loaders, and
the procedural image–caption scenes (instance-level text → image data that runs offline)."""

from __future__ import annotations

from .datasets import HFImageDataset, ImageClassificationData, from_hf_dataset, load_image_classification
from .device_loader import DeviceTensorDataLoader, ShardedDataLoader
from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from .scenes import SceneConfig, generate_scenes, load_scenes, scene_relevance
from .subsets import parse_class_subset
from .transforms import AugmentationParams, BatchAugmentation, ModelInputTransform

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "AugmentationParams",
    "BatchAugmentation",
    "DeviceTensorDataLoader",
    "HFImageDataset",
    "ImageClassificationData",
    "ModelInputTransform",
    "SceneConfig",
    "ShardedDataLoader",
    "from_hf_dataset",
    "generate_scenes",
    "load_fashion_mnist",
    "load_image_classification",
    "load_scenes",
    "parse_class_subset",
    "read_idx",
    "scene_relevance",
]
