"""Fuzz the readers with seeded random truncations and byte flips (issue 11).

Every malformed IDX, npz, gallery manifest or model config either still reads (a flip that keeps the file valid) or
fails with bt2_hf's one input error class, naming the file; never a raw ``EOFError`` / ``struct.error`` /
``zipfile.BadZipFile`` / ``AssertionError``, and nothing is written next to it.
"""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from bt2_hf.cli.eval import load_embedding_file
from bt2_hf.cli.index import load_config, load_embeddings
from bt2_hf.data.fashion_mnist import read_idx
from bt2_hf.errors import BT2InputError
from bt2_hf.galleries import FaissGallery

CASES_PER_FORMAT = 60


def _mutations(data: bytes, rng: np.random.Generator):
    """Truncations (including to 0 and 1 byte) and 1-4 random byte flips, reproducible from the seed."""
    for _ in range(CASES_PER_FORMAT):
        if rng.random() < 0.4:
            yield data[: int(rng.integers(0, len(data)))]
        else:
            mutated = bytearray(data)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 5))):
                mutated[position] ^= int(rng.integers(1, 256))
            yield bytes(mutated)


def _fuzz(path, data: bytes, read, seed: int) -> dict[str, int]:
    """Write each mutation to ``path``, read it; count clean reads and clear errors, fail on anything else."""
    rng = np.random.default_rng(seed)
    directory = path.parent
    path.write_bytes(data)
    before = sorted(p.name for p in directory.iterdir())
    outcome = {"read": 0, "refused": 0}
    for case, mutated in enumerate(_mutations(data, rng)):
        path.write_bytes(mutated)
        try:
            read(path)
            outcome["read"] += 1
        except BT2InputError as error:
            assert str(path) in str(error), (case, str(error))
            outcome["refused"] += 1
        # (any other exception type fails the test with its traceback and the case number in the locals)
        assert sorted(p.name for p in directory.iterdir()) == before, case
    assert outcome["refused"] > CASES_PER_FORMAT // 3, outcome
    return outcome


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.tobytes()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
def test_fuzz_idx(tmp_path, compressed):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    data = _idx_bytes(images, 0x08)
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "ok-idx3-ubyte", data)), images)
    if compressed:
        data = gzip.compress(data)
    name = "train-images-idx3-ubyte" + (".gz" if compressed else "")
    _fuzz(tmp_path / name, data, read_idx, seed=1 + compressed)


def test_idx_big_endian_values_read_in_native_order(tmp_path):
    values = np.arange(-3, 3, dtype=">i4").reshape(2, 3)
    read = read_idx(_write(tmp_path / "x-idx2-int", _idx_bytes(values, 0x0C)))
    assert read.dtype.isnative and read.tolist() == values.tolist()


def test_fuzz_npz_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "source.npz"
    np.savez(source, embeddings=rng.standard_normal((8, 4)).astype(np.float32), labels=np.arange(8) % 2)
    data = source.read_bytes()
    source.unlink()
    work = tmp_path / "work"
    work.mkdir()
    _fuzz(work / "model.npz", data, load_embedding_file, seed=3)
    _fuzz(work / "gallery.npz", data, load_embeddings, seed=4)


def test_fuzz_gallery_manifest(tmp_path):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((12, 4)).astype(np.float32)
    encoder = {"fingerprint": "sha256:" + "a" * 64, "embedding_dim": 4}
    FaissGallery.build(tmp_path / "gallery", gallery, [f"id-{i}" for i in range(12)], encoder=encoder,
                       labels=np.arange(12) % 3)  # fmt: skip
    manifest = tmp_path / "gallery" / "manifest.json"
    _fuzz(manifest, manifest.read_bytes(), lambda path: FaissGallery.open(path.parent), seed=5)


def test_fuzz_model_config(tmp_path):
    config = tmp_path / "model" / "config.json"
    config.parent.mkdir()
    data = json.dumps({"fingerprint": "sha256:" + "a" * 64, "embedding_dim": 64, "compatible_with": []}).encode()
    _fuzz(config, data, lambda path: load_config(str(path.parent)), seed=6)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_truncated_gz_and_short_header_name_the_file(tmp_path):
    from bt2_hf.data.fashion_mnist import load_fashion_mnist
    from tests.conftest import write_fashion_like_idx

    directory = write_fashion_like_idx(tmp_path / "fashion")
    images = directory / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-300])  # a download cut short
    with pytest.raises(BT2InputError, match="truncated or corrupted") as error:
        load_fashion_mnist(directory, "train")
    assert str(images) in str(error.value)
    short = _write(tmp_path / "short-idx1-ubyte", bytes([0, 0, 8, 1, 0, 0]))  # 6 bytes: the header is cut
    with pytest.raises(BT2InputError, match="declares 1 dimension"):
        read_idx(short)
