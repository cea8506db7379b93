"""Data loading (IDX, save_to_disk, imagefolder), class subsets, tensor augmentation and the sharded loaders."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from bt2_hf.data import (
    BatchAugmentation,
    DeviceTensorDataLoader,
    ImageClassificationData,
    ModelInputTransform,
    from_hf_dataset,
    load_fashion_mnist,
    load_image_classification,
    parse_class_subset,
    read_idx,
)


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_directory(tmp_path, compress):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), compress)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    train = load_fashion_mnist(tmp_path, "train")
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == list(range(10)) + [0, 1] and train.class_names[0] == "T-shirt/top"
    test = load_image_classification(str(tmp_path), "test")
    assert len(test) == 5
    assert read_idx(next(tmp_path.glob("train-labels*"))).shape == (12,)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*--data_dir"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_classification(str(tmp_path / "nope" / "data"))


def test_save_to_disk_dataset_and_class_subset(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    images = [Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)) for i in range(6)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    dataset = datasets.Dataset.from_dict({"img": images, "label": [0, 1, 2, 0, 1, 2]}, features=features)
    dataset.save_to_disk(str(tmp_path / "saved"))
    data = load_image_classification(str(tmp_path / "saved"))
    assert data.images.shape == (6, 3, 8, 8) and data.class_names == ["a", "b", "c"]
    subset = data.select_classes(parse_class_subset("0-1", data.num_classes))
    assert subset.labels.tolist() == [0, 1, 0, 1] and subset.class_subset == [0, 1] and subset.num_classes == 3
    lazy = from_hf_dataset(dataset, image_size=4, num_channels=1, in_memory=False)
    assert lazy.get_image(2).shape == (1, 4, 4) and not lazy.in_memory


def test_parse_class_subset():
    assert parse_class_subset("0-2,5") == [0, 1, 2, 5]
    assert parse_class_subset([3, 1, 1]) == [1, 3]
    assert parse_class_subset(None) is None
    with pytest.raises(ValueError, match="outside the dataset's 4 classes"):
        parse_class_subset("2-5", 4)
    with pytest.raises(ValueError, match="Cannot parse"):
        parse_class_subset("a-b")


def test_augmentation_is_seeded_and_sliceable():
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    augmentation = BatchAugmentation(padding=2)
    params = augmentation.sample(6, seed=3)
    full = augmentation(images, params)
    halves = torch.cat([augmentation(images[:3], params.slice(0, 3)), augmentation(images[3:], params.slice(3, 6))])
    assert torch.equal(full, halves) and full.dtype == torch.float32 and full.max() <= 1
    no_crop = BatchAugmentation(padding=0, horizontal_flip=False)
    assert torch.equal(no_crop(images, no_crop.sample(6, 0)), images.float() / 255)
    # Shift by (dy, dx) = (offset - padding): pixel (r, c) of the crop is pixel (r + dy, c + dx) of the image.
    p = params.slice(0, 1)
    dy, dx = int(p.offset_y) - 2, int(p.offset_x) - 2
    crop = augmentation(images[:1], p)[0, 0]
    if bool(p.flip):
        crop = crop.flip(-1)
    assert torch.allclose(crop[3, 3], images[0, 0, 3 + dy, 3 + dx].float() / 255)


def test_model_input_transform_matches_processor_settings():
    from bt2_hf import BT2ImageProcessor

    processor = BT2ImageProcessor(image_size=16, num_channels=3, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    transform = ModelInputTransform.from_processor(processor)
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    out = transform(images)
    expected = processor(images)["pixel_values"]
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_device_loader_shards_global_batches_and_resumes_mid_epoch():
    images = torch.zeros(20, 1, 2, 2, dtype=torch.uint8)
    labels = torch.arange(20)
    one = DeviceTensorDataLoader(images, labels, batch_size=6, seed=1)
    two = [DeviceTensorDataLoader(images, labels, 3, num_processes=2, process_index=r, seed=1) for r in range(2)]
    assert len(one) == len(two[0]) == 3
    batches_one = [b["index"] for b in one.iter_epoch(4)]
    batches_two = [[b["index"] for b in loader.iter_epoch(4)] for loader in two]
    for step in range(3):
        assert torch.equal(batches_one[step], torch.cat([batches_two[0][step], batches_two[1][step]]))
    resumed = [b["index"] for b in one.iter_epoch(4, start_batch=2)]
    assert len(resumed) == 1 and torch.equal(resumed[0], batches_one[2])
    assert not torch.equal(batches_one[0], next(one.iter_epoch(5))["index"])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DeviceTensorDataLoader(images, labels, batch_size=32)


def test_take_per_class_is_balanced():
    data = ImageClassificationData(labels=torch.arange(100) % 4, images=torch.zeros(100, 1, 2, 2, dtype=torch.uint8))
    small = data.take_per_class(20, seed=0)
    assert len(small) == 20 and torch.bincount(small.labels).tolist() == [5, 5, 5, 5]
