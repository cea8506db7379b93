"""Fashion-MNIST from its four standard IDX files (the Debian package ``dataset-fashion-mnist`` or any directory)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import BT2InputError
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
# split → (images, labels) IDX file stems, each found with or without .gz (find_idx_file)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its stored shape, in native byte order.

    Raises:
        `BT2InputError`: the file is truncated, not gzip/IDX, or its header disagrees with its size (the message
        names the file and what is wrong).
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (EOFError, OSError, zlib.error) as error:  # truncated or corrupted gzip stream (BadGzipFile is an OSError)
        if isinstance(error, FileNotFoundError):
            raise
        raise BT2InputError(
            f"cannot decompress it ({type(error).__name__}: {error}); the download is truncated or corrupted. "
            "Fetch the file again.",
            path,
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise BT2InputError(
            f"not an IDX file: {len(data)} bytes, expected a 4-byte magic number 00 00 <type> <ndim> first.", path
        )
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES:
        raise BT2InputError(
            f"unknown IDX data type 0x{dtype_code:02x} (known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}).", path
        )
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_size:
        raise BT2InputError(
            f"the IDX header declares {ndim} dimension(s), which needs {header_size} header bytes, but the file has "
            f"{len(data)} bytes; the file is truncated or not an IDX file.",
            path,
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = math.prod(shape) * dtype.itemsize  # exact (a corrupted header can overflow int64)
    payload = data[header_size:]
    if len(payload) != expected:
        raise BT2InputError(
            f"the header says shape {tuple(shape)} ({expected} bytes of data) but the file holds {len(payload)}; "
            "it is truncated or corrupted. Fetch it again.",
            path,
        )
    # IDX stores multi-byte values big-endian; torch only takes native byte order.
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (also the ``t10k-images.idx3-ubyte`` spelling)."""
    for name in (stem, f"{stem}.gz", stem.replace("-idx", ".idx"), f"{stem.replace('-idx', '.idx')}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def is_fashion_mnist_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds the training IDX files of (Fashion-)MNIST."""
    directory = Path(directory)
    return directory.is_dir() and all(find_idx_file(directory, stem) for stem in IDX_FILES["train"])


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, split: str = "train") -> ImageClassificationData:
    """Load a Fashion-MNIST split into memory as uint8 images ``(N, 1, 28, 28)`` and int64 labels.

    Args:
        data_dir (`str` or `os.PathLike`, *optional*): a directory with the four standard IDX files (``.gz`` or
            not); defaults to the Debian package's ``/usr/share/datasets/fashion-mnist``.
        split (`str`, *optional*, defaults to `"train"`): ``"train"`` or ``"test"``.

    Raises:
        FileNotFoundError: when the files are missing, with how to get them.
    """
    if split not in IDX_FILES:
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test', got {split!r}.")
    directory = Path(data_dir or DEFAULT_FASHION_MNIST_DIR)
    paths = [find_idx_file(directory, stem) for stem in IDX_FILES[split]]
    if not all(paths):
        missing = [f"{stem}[.gz]" for stem, path in zip(IDX_FILES[split], paths) if path is None]
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found in {directory} (missing {', '.join(missing)}). Install them with "
            "`apt-get install dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist/), or pass "
            "--data_dir pointing to a directory with the four standard IDX files."
        )
    images = read_idx(paths[0])
    labels = read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise BT2InputError(
            f"expected N×H×W uint8 images (IDX type 0x08, 3 dimensions), got {images.dtype} of shape {images.shape}.",
            paths[0],
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise BT2InputError(
            f"expected one label per image ({len(images)} images in {paths[0].name}), got shape {labels.shape}.",
            paths[1],
        )
    bad = np.flatnonzero((labels < 0) | (labels >= len(FASHION_MNIST_CLASSES)))
    if len(bad):
        raise BT2InputError(
            f"label {int(labels[bad[0]])} at row {int(bad[0])} ({len(bad)} bad in all) is outside the "
            f"{len(FASHION_MNIST_CLASSES)} Fashion-MNIST classes 0-{len(FASHION_MNIST_CLASSES) - 1}; the file is "
            "corrupted or belongs to another dataset.",
            paths[1],
        )
    return ImageClassificationData(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=list(FASHION_MNIST_CLASSES),
        source=f"fashion_mnist:{directory}:{split}",
    )
