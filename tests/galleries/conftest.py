"""Tiny real models and datasets for the gallery tests (no download, a few seconds each)."""

from __future__ import annotations

import os
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bt2_hf import BT2Config, BT2Model

REPO = Path(__file__).resolve().parents[2]
CNN = {"widths": [4, 8]}


def write_idx(directory: Path, images: np.ndarray, labels: np.ndarray, split: str = "train") -> Path:
    """Write images and labels as the standard IDX files of one split."""
    stems = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / stems[0], "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", *images.shape) + images.astype(np.uint8).tobytes())
    with open(directory / stems[1], "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", len(labels)) + labels.astype(np.uint8).tobytes())
    return directory


def tiny_model(seed: int, embedding_dim: int = 8, **config) -> BT2Model:
    torch.manual_seed(seed)
    return BT2Model(
        BT2Config(backbone_type="small_cnn", backbone_config=CNN, embedding_dim=embedding_dim, **config)
    ).eval()


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """An old model (8-d) and a new model (12-d) declaring the old one at an 8-d prefix, saved."""
    root = tmp_path_factory.mktemp("models")
    old = tiny_model(0)
    old.save_pretrained(root / "old")
    new = tiny_model(1, embedding_dim=12, compatible_dim=8)
    new.config.compatible_with = [{"name_or_path": str(root / "old"), "fingerprint": old.config.fingerprint,
                                   "embedding_dim": 8, "method": "bt2"}]  # fmt: skip
    new.save_pretrained(root / "new")
    other = tiny_model(2)
    other.save_pretrained(root / "other")
    return {"old": root / "old", "new": root / "new", "other": root / "other"}


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A Fashion-MNIST-like IDX directory: 150 train + 30 test images of 28×28."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("idx")
    write_idx(root, rng.integers(0, 256, (150, 28, 28)), rng.integers(0, 10, 150), "train")
    write_idx(root, rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30), "test")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict:
    # One thread per process: the tests start several on a small shared machine.
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


PYTHON = sys.executable
