"""Tiny real models and datasets for the gallery tests (no download, a few seconds each), and a Milvus server."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
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


class MilvusLiteServer:
    """milvus-lite's gRPC Milvus server (``python -m milvus_lite server``) in a subprocess on a free loopback port.

    pymilvus reaches it at ``uri`` (``http://127.0.0.1:PORT``) exactly as it reaches a Milvus server: the galleries'
    server path runs for real. It is not a Milvus cluster (one process, milvus-lite's engine).
    """

    def __init__(self, data_dir: Path, timeout: float = 60.0):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(data_dir) / "server.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "milvus_lite", "server", "--data-dir", str(Path(data_dir) / "data"), "--host", "127.0.0.1",
             "--port", str(self.port)], env=subprocess_env(), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            self._wait_until_it_answers(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_it_answers(self, timeout: float) -> None:
        from pymilvus import MilvusClient, MilvusException

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"The Milvus server exited with {self.process.returncode}: {self.log()}")
            try:
                MilvusClient(self.uri, timeout=2).list_collections()
                return
            except MilvusException:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"The Milvus server did not answer within {timeout:.0f} s: {self.log()}"
                    ) from None
                time.sleep(0.1)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A Milvus server for the session (milvus-lite's gRPC server on a free loopback port), stopped at the end.

    Tests share it: each uses collections and aliases of its own names.
    """
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as error:
        pytest.skip(f"{error.name} is not installed: pip install 'bt2_hf[milvus]' to run the Milvus server tests")
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def embeddings(saved_models, idx_dir, tmp_path_factory):
    """The old model's float32 embedding shards of the whole IDX set (a Milvus or faiss gallery's source)."""
    from bt2_hf.galleries import embed_dataset

    model = BT2Model.from_pretrained(saved_models["old"])
    return embed_dataset(model, idx_dir, tmp_path_factory.mktemp("emb") / "emb", split="all", dtype="float32",
                         show_progress=False)  # fmt: skip
