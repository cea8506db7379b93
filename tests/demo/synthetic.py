"""Small synthetic image sets of other names than Fashion-MNIST, written as IDX files, for the demo's tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# Ten texture classes a small CNN learns in a few dozen steps: stripes of two orientations and five periods, at a
# random phase (so no single pixel tells the class, which keeps an untrained model weak).
PERIODS = (2, 3, 4, 6, 9)
CLASS_NAMES = tuple(f"{'horizontal' if c % 2 == 0 else 'vertical'}-{PERIODS[c // 2]}px" for c in range(10))


def texture_images(labels: np.ndarray, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    grid = np.arange(size)
    images = np.empty((len(labels), size, size), dtype=np.uint8)
    for row, label in enumerate(labels):
        period = PERIODS[label // 2]
        wave = ((grid + rng.integers(0, period)) % period) < max(1, period // 2)
        stripes = np.broadcast_to(wave[:, None] if label % 2 == 0 else wave[None, :], (size, size))
        images[row] = np.clip(40 + 180 * stripes + rng.integers(0, 40, size=(size, size)), 0, 255)
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    """One gzipped IDX file of unsigned bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_texture_idx(
    directory: Path, train_per_class: int = 40, test_per_class: int = 12, class_names: bool = True
) -> Path:
    """Write the four IDX files (and ``class_names.txt``) of the texture set into ``directory`` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, per_class, seed in (("train", train_per_class, 0), ("t10k", test_per_class, 1)):
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", texture_images(labels, rng))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    if class_names:
        (directory / "class_names.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    return directory
