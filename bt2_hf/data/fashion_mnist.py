"""Fashion-MNIST from its four standard IDX files (the Debian package ``dataset-fashion-mnist`` or any directory)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .classification_data import ImageClassificationData

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{dtype_code:02x}.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    payload = data[4 + 4 * ndim :]
    if len(payload) != expected:
        raise ValueError(f"{path}: expected {expected} bytes of data for shape {shape}, found {len(payload)}.")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (also the ``t10k-images.idx3-ubyte`` spelling)."""
    for name in (stem, f"{stem}.gz", stem.replace("-idx", ".idx"), f"{stem.replace('-idx', '.idx')}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def is_fashion_mnist_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds the training IDX files of (Fashion-)MNIST."""
    directory = Path(directory)
    return directory.is_dir() and all(find_idx_file(directory, stem) for stem in _FILES["train"])


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, split: str = "train") -> ImageClassificationData:
    """Load a Fashion-MNIST split into memory as uint8 images ``(N, 1, 28, 28)`` and int64 labels.

    Args:
        data_dir (`str` or `os.PathLike`, *optional*): a directory with the four standard IDX files (``.gz`` or
            not); defaults to the Debian package's ``/usr/share/datasets/fashion-mnist``.
        split (`str`, *optional*, defaults to `"train"`): ``"train"`` or ``"test"``.

    Raises:
        FileNotFoundError: when the files are missing, with how to get them.
    """
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test', got {split!r}.")
    directory = Path(data_dir or DEFAULT_FASHION_MNIST_DIR)
    paths = [find_idx_file(directory, stem) for stem in _FILES[split]]
    if not all(paths):
        missing = [f"{stem}[.gz]" for stem, path in zip(_FILES[split], paths) if path is None]
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found in {directory} (missing {', '.join(missing)}). Install them with "
            "`apt-get install dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist/), or pass "
            "--data_dir pointing to a directory with the four standard IDX files."
        )
    images = read_idx(paths[0])
    labels = read_idx(paths[1])
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{paths[0]} / {paths[1]}: expected N×28×28 images and N labels.")
    return ImageClassificationData(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=list(FASHION_MNIST_CLASSES),
        source=f"fashion_mnist:{directory}:{split}",
    )
