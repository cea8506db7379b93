"""An embedding directory: fixed-size shards of vectors with their item ids, and a manifest.

Layout::

    plan.json                    written first: model, dataset, count, dtype, shard size (checked on resume)
    shard-00000.npy              vectors of items [0, shard_size) (fp16 or fp32, memory-mappable)
    shard-00000.ids.npy          their ids (int64 or unicode; no pickle)
    ...
    labels.npy, paths.npy        optional, by position: class ids and file paths when the dataset has them
    manifest.json                written last, when every shard exists: the plan + per-shard sha256 + throughput
                                 (+ ``items``: the optional files, class names and their sha256)

Shard ``s`` always holds positions ``[s * shard_size, (s + 1) * shard_size)`` of the dataset, whichever process
wrote it: the files do not depend on the number of processes, a finished shard is never written again, and no item
can be in two shards. Each file is written to a temporary name and renamed; the ids file goes first, so a shard
whose vector file exists is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..utils.io import atomic_write_bytes, atomic_write_json

PLAN_NAME = "plan.json"
MANIFEST_NAME = "manifest.json"
SHARD_FORMAT = 1


class EmbeddingDirectoryError(ValueError):
    """An embedding directory is incomplete, inconsistent, or belongs to another model or dataset."""


def shard_path(directory: Path, shard: int) -> Path:
    return Path(directory) / f"shard-{shard:05d}.npy"


def ids_path(directory: Path, shard: int) -> Path:
    return Path(directory) / f"shard-{shard:05d}.ids.npy"


def ids_array(ids: list) -> np.ndarray:
    """Ids as a numpy array that loads without pickle: int64 when all are ints, unicode strings otherwise."""
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return np.asarray(ids, dtype=np.int64)
    return np.asarray([str(i) for i in ids], dtype=np.str_)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`~bt2_hf.utils.io.atomic_write_bytes`: a reader never sees half an array."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def write_shard(directory: Path, shard: int, vectors: np.ndarray, ids: list) -> None:
    atomic_save_npy(ids_path(directory, shard), ids_array(ids))
    atomic_save_npy(shard_path(directory, shard), vectors)


def shard_complete(directory: Path, shard: int, expected_rows: int) -> bool:
    vectors, ids = shard_path(directory, shard), ids_path(directory, shard)
    if not vectors.exists() or not ids.exists():
        return False
    try:
        return len(np.load(vectors, mmap_mode="r")) == expected_rows == len(np.load(ids, mmap_mode="r"))
    except (ValueError, OSError):  # a truncated file from a crash outside our writes: redo the shard
        return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingDirectory:
    """A finished embedding directory, read shard by shard (memory-mapped) or as a whole.

    >>> from bt2_hf.galleries import EmbeddingDirectory
    >>> embeddings = EmbeddingDirectory("gallery_embeddings/")  # doctest: +SKIP
    >>> embeddings.manifest["model"]["fingerprint"], len(embeddings), embeddings.dimension  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        manifest_file = self.directory / MANIFEST_NAME
        if not manifest_file.exists():
            hint = (
                "the embedding run did not finish: run the same `bt2 embed` command again to complete it"
                if (self.directory / PLAN_NAME).exists()
                else "embed a dataset there first with `bt2 embed`"
            )
            raise EmbeddingDirectoryError(f"{self.directory} has no {MANIFEST_NAME}: {hint}.")
        try:
            self.manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as error:
            raise EmbeddingDirectoryError(
                f"{manifest_file} is not valid JSON ({error}); re-run `bt2 embed`."
            ) from None
        missing = [s for s in range(self.manifest["num_shards"]) if not shard_path(self.directory, s).exists()]
        if missing:
            raise EmbeddingDirectoryError(
                f"{self.directory} lacks shards {missing[:5]}: the directory was changed after embedding; re-run "
                "`bt2 embed`."
            )

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    def shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(vectors, ids)`` of each shard in order, vectors memory-mapped."""
        for shard in range(self.manifest["num_shards"]):
            yield (
                np.load(shard_path(self.directory, shard), mmap_mode="r"),
                np.load(ids_path(self.directory, shard), allow_pickle=False),
            )

    def ids(self) -> list:
        return [i for _, ids in self.shards() for i in ids.tolist()]

    def vectors(self, dtype=np.float32) -> np.ndarray:
        """All vectors in one array (loads them: use :meth:`shards` for galleries larger than memory)."""
        return np.concatenate([np.asarray(v, dtype=dtype) for v, _ in self.shards()])

    @property
    def label_names(self) -> list[str] | None:
        return (self.manifest.get("items") or {}).get("label_names")

    def _item_file(self, key: str) -> np.ndarray | None:
        name = (self.manifest.get("items") or {}).get(key)
        if not name:
            return None
        array = np.load(self.directory / name, allow_pickle=False)
        if len(array) != len(self):
            raise EmbeddingDirectoryError(f"{self.directory / name} holds {len(array)} rows for {len(self)} items; "
                                          "re-run `bt2 embed` into a new directory.")  # fmt: skip
        return array

    def labels(self) -> np.ndarray | None:
        """Each item's class id, by position (``None`` when the dataset had no labels)."""
        return self._item_file("labels")

    def paths(self) -> list[str] | None:
        """Each item's file path, by position (``None`` when the dataset had no files)."""
        array = self._item_file("paths")
        return None if array is None else array.tolist()

    def verify(self) -> None:
        """Check every shard against the sha256 recorded in the manifest."""
        for shard, entry in enumerate(self.manifest["shards"]):
            if file_sha256(shard_path(self.directory, shard)) != entry["sha256"]:
                raise EmbeddingDirectoryError(
                    f"Shard {shard} of {self.directory} does not match its manifest sha256; re-run `bt2 embed`."
                )
        for name, digest in ((self.manifest.get("items") or {}).get("sha256") or {}).items():
            if file_sha256(self.directory / name) != digest:
                raise EmbeddingDirectoryError(f"{self.directory / name} does not match its manifest sha256; re-run "
                                              "`bt2 embed` into a new directory.")  # fmt: skip


def write_manifest(directory: Path, plan: dict, extra: dict) -> dict:
    shards = [
        {"file": shard_path(directory, s).name, "ids": ids_path(directory, s).name,
         "sha256": file_sha256(shard_path(directory, s))}
        for s in range(plan["num_shards"])
    ]  # fmt: skip
    manifest = dict(plan, shards=shards, **extra)
    atomic_write_json(Path(directory) / MANIFEST_NAME, manifest)
    return manifest
