"""Gallery sources: any image or text dataset seen as ``len`` items with stable ids, read by position range.

A source gives random access by position (``items(start, stop)``), the ids of a range, a content hash that
identifies the dataset in manifests, and its modality. Positions are what shards, indexes and backfills refer to;
the hash lets a backfill or a resumed embedding refuse a dataset that is not the one the gallery was made from.

Supported:

- a directory of (Fashion-)MNIST IDX files (``split``: ``train``, ``test`` or ``all``);
- a directory written by ``datasets.Dataset.save_to_disk`` (memory-mapped Arrow: large datasets never load whole);
- an ``imagefolder`` directory (one sub-directory per class), optionally streamed (``streaming=True``);
- a text file: ``.txt`` (one item per line) or ``.jsonl`` (``{"id": ..., "text": ...}`` per line).

Which of these a string names is decided once, by :func:`bt2_hf.data.sources.resolve_data_source`; a string that is
none of them is refused with the resolver's message (the same one ``bt2 demo`` and ``bt2 verify`` give).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.sources import (
    IDX,
    IMAGEFOLDER,
    JSONL,
    SAVED_DATASET,
    TEXT_LINES,
    DataSource,
    DataSourceError,
    resolve_data_source,
)
from ..errors import BT2InputError

IMAGE, TEXT = "image", "text"
# What a gallery can be built from: local data only (a Hub dataset is saved with save_to_disk first).
GALLERY_SOURCE_KINDS = (IDX, SAVED_DATASET, IMAGEFOLDER, TEXT_LINES, JSONL)


class GallerySourceError(ValueError):
    """A dataset cannot be read as a gallery source (missing path, unknown format, missing column)."""


class GalleryDataSourceError(DataSourceError, GallerySourceError):
    """A dataset argument the data-source resolver refuses (missing, of no known layout, or a Hub id).

    It carries the resolver's message unchanged, so a bad argument reads the same from every command; it is also a
    `GallerySourceError`, so code that catches gallery source errors keeps catching it.
    """


class UnreadableItemError(BT2InputError, GallerySourceError):
    """One item of a dataset cannot be decoded (a truncated or corrupt image file).

    The message names the item's position (its row in the dataset), its id when that differs, and its file, and says
    what to do. It is both a `BT2InputError` (``error.path`` is the file, when the item has one) and a
    `GallerySourceError`, so every command that reports bad datasets reports it as one line.

    Args:
        position (`int`): the item's row in the dataset.
        item_id: the item's id.
        path (`str`, *optional*): the item's file.
        cause (`Exception`): what the decoder raised.
    """

    def __init__(self, position: int, item_id, path: str | None, cause: Exception):
        self.position, self.item_id = position, item_id
        where = ", ".join(part for part in (f"id {item_id!r}" if item_id != position else "", path or "") if part)
        reason = str(cause) or type(cause).__name__
        super().__init__(
            f"cannot read image {position}{f' ({where})' if where else ''}: {reason}; remove or re-save that file, "
            "then rerun (the dataset has changed: an embedding or gallery of it needs a new output directory)",
            path=path,
        )


def _hash_files(paths, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


class GallerySource:
    """Base class: ``len(source)`` items, each with an id, read by position ranges.

    Subclasses set ``modality`` (``"image"`` or ``"text"``), ``name`` and implement :meth:`items`, :meth:`ids` and
    :meth:`fingerprint`.
    """

    modality: str = IMAGE
    name: str = "in-memory"

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def items(self, start: int, stop: int) -> Any:
        """Items ``start..stop-1``: a uint8 ``(B, C, H, W)`` tensor, a list of PIL images, or a list of strings."""
        raise NotImplementedError  # pragma: no cover

    def take(self, positions) -> Any:
        """Items at arbitrary positions (a backfill reads them in its own order), in the order given."""
        items = [self.items(int(p), int(p) + 1) for p in positions]
        if items and isinstance(items[0], torch.Tensor):
            return torch.cat(items)
        return [item for chunk in items for item in chunk]

    def ids(self, start: int = 0, stop: int | None = None) -> list:
        """The ids of positions ``start..stop-1`` (JSON-serialisable: ints or strings)."""
        stop = len(self) if stop is None else stop
        return list(range(start, stop))

    def fingerprint(self) -> str:
        """A hash of the dataset's content (or of its file listing for large image folders)."""
        raise NotImplementedError  # pragma: no cover

    def labels(self) -> np.ndarray | None:
        """Each item's class id (int64), or ``None`` when the dataset has no labels; read without decoding items."""
        return None

    def label_names(self) -> list[str] | None:
        """The class names by id, when the dataset names them."""
        return None

    def paths(self) -> list[str] | None:
        """Each item's file path (or ``None`` when the dataset has no files), for search results."""
        return None

    def describe(self) -> dict:
        return {"name": self.name, "modality": self.modality, "count": len(self), "hash": self.fingerprint()}


class TensorSource(GallerySource):
    """In-memory uint8 images ``(N, C, H, W)`` (or ``(N, H, W)``) with optional ids.

    Args:
        images (`torch.Tensor` or `np.ndarray`): the images.
        ids (`list`, *optional*): one id per image; defaults to the row numbers.
        name (`str`, *optional*): recorded in manifests.
    """

    def __init__(
        self,
        images,
        ids: list | None = None,
        name: str = "in-memory",
        fingerprint: str | None = None,
        labels=None,
        label_names: list[str] | None = None,
    ):
        images = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise GallerySourceError(f"Expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}.")
        if ids is not None and len(ids) != len(images):
            raise GallerySourceError(f"{len(ids)} ids for {len(images)} images: give one id per image.")
        self.images, self._ids, self.name, self._fingerprint = images, ids, name, fingerprint
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self._labels is not None and len(self._labels) != len(images):
            raise GallerySourceError(f"{len(self._labels)} labels for {len(images)} images: give one label per image.")
        self._label_names = list(label_names) if label_names is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def items(self, start: int, stop: int) -> torch.Tensor:
        return self.images[start:stop]

    def take(self, positions) -> torch.Tensor:
        return self.images[torch.as_tensor(np.asarray(positions, dtype=np.int64))]

    def ids(self, start: int = 0, stop: int | None = None) -> list:
        stop = len(self) if stop is None else stop
        return list(self._ids[start:stop]) if self._ids is not None else list(range(start, stop))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256(self.images.contiguous().numpy().tobytes())
            digest.update(json.dumps(self.ids()).encode())
            self._fingerprint = "sha256:" + digest.hexdigest()
        return self._fingerprint

    def labels(self) -> np.ndarray | None:
        return self._labels

    def label_names(self) -> list[str] | None:
        return self._label_names


class IDXSource(TensorSource):
    """Fashion-MNIST / MNIST IDX files of a directory; ``split="all"`` puts train then test (ids ``train/i``)."""

    def __init__(self, directory: str | os.PathLike | DataSource, split: str = "train"):
        from ..data.fashion_mnist import IDX_FILES, find_idx_file, read_idx

        source = directory if isinstance(directory, DataSource) else _resolve(directory, (IDX,))
        directory = source.path
        splits = ["train", "test"] if split == "all" else [split]
        if any(s not in IDX_FILES for s in splits):
            raise GallerySourceError(f"An IDX directory has splits 'train', 'test' (or 'all'), not {split!r}.")
        images, ids, files, labels = [], [], [], []
        for name in splits:
            path = find_idx_file(directory, IDX_FILES[name][0])
            if path is None:
                raise GallerySourceError(
                    f"No {IDX_FILES[name][0]}[.gz] in {directory}; pass a directory of IDX files."
                )
            array = read_idx(path)
            images.append(torch.from_numpy(array.copy()))
            ids += [f"{name}/{i}" for i in range(len(array))] if split == "all" else list(range(len(array)))
            files.append(path)
            label_path = find_idx_file(directory, IDX_FILES[name][1])
            label_array = read_idx(label_path) if label_path is not None else None
            labels.append(label_array if label_array is not None and len(label_array) == len(array) else None)
        all_labels = None if any(part is None for part in labels) else np.concatenate(labels).astype(np.int64)
        # Without class_names.txt an IDX directory is (Fashion-)MNIST-style: which of the two is not written down,
        # so labels stay numbers rather than risk naming digits as garments.
        names = source.class_names()
        super().__init__(torch.cat(images), ids, name=f"idx:{directory.name}:{split}", labels=all_labels,
                         label_names=names)  # fmt: skip
        self._fingerprint = _hash_files(files)


class HFDatasetSource(GallerySource):
    """A `datasets` dataset (map-style, memory-mapped; or iterable when streamed) of images or texts.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): the split.
        column (`str`, *optional*): the image or text column; defaults to the first ``Image`` feature, else ``text``.
        id_column (`str`, *optional*): a column of ids; defaults to ``id`` when present, else the row numbers.
        name (`str`): recorded in manifests.
        fingerprint (`str`, *optional*): the dataset's hash when known from its files.
    """

    def __init__(self, dataset, column=None, id_column=None, name="datasets", fingerprint=None, ids=None):
        import datasets

        features = dataset.features or {}
        if column is None:
            column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
            column = column or next((k for k in ("text", "caption", "sentence") if k in features), None)
        if column is None or (features and column not in features):
            raise GallerySourceError(
                f"Cannot find the image or text column of {name} (columns: {list(features)}); pass column=..."
            )
        self.modality = IMAGE if isinstance(features.get(column), datasets.Image) else TEXT
        if id_column is None and "id" in features:
            id_column = "id"
        self.dataset, self.column, self.id_column, self.name = dataset, column, id_column, name
        self.streaming = isinstance(dataset, datasets.IterableDataset)
        self._fingerprint = fingerprint
        self._ids = ids
        if self._ids is None and (self.streaming or id_column):
            # Ids (and, when streaming, the length) come from one pass over the id column only: no decoding.
            if id_column:
                self._ids = (
                    list(dataset.select_columns([id_column])[id_column])
                    if not self.streaming
                    else [row[id_column] for row in dataset.select_columns([id_column])]
                )
            else:
                self._ids = list(range(sum(1 for _ in dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False)))))  # fmt: skip

    def __len__(self) -> int:
        return len(self._ids) if self._ids is not None else len(self.dataset)

    def ids(self, start: int = 0, stop: int | None = None) -> list:
        stop = len(self) if stop is None else stop
        return list(self._ids[start:stop]) if self._ids is not None else list(range(start, stop))

    def items(self, start: int, stop: int) -> list:
        if self.streaming:
            decoded = []
            try:
                for row in self.dataset.skip(start).take(stop - start):
                    decoded.append(row[self.column])
            except Exception as error:
                # The stream stops at the first item it cannot decode: the next position is that item.
                self._raise_unreadable([start + len(decoded)], error)
            return decoded
        try:
            return list(self.dataset[start:stop][self.column])
        except Exception as error:
            self._raise_unreadable(range(start, stop), error)

    def take(self, positions) -> list:
        if self.streaming:
            raise GallerySourceError(
                f"{self.name} is streamed: a backfill reads items in its own order; open it without streaming."
            )
        positions = [int(p) for p in positions]
        try:
            return list(self.dataset[positions][self.column])
        except Exception as error:
            self._raise_unreadable(positions, error)

    def _raise_unreadable(self, positions, error: Exception):
        """Re-raise a failed batch decode as an :class:`UnreadableItemError` naming the first item that fails.

        `datasets` decodes a batch as one call and its error names neither the row nor the file, so the batch's
        items are decoded again one at a time with the column's own feature. When every one of them decodes, the
        failure was not an item's (a real bug, a full disk): the original error is raised unchanged.
        """
        import datasets

        feature = (self.dataset.features or {}).get(self.column)
        if self.modality != IMAGE or not isinstance(feature, datasets.Image) or not feature.decode:
            raise error
        undecoded = self.dataset.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))
        positions = list(positions)
        if self.streaming:
            cells = [row[self.column] for row in undecoded.skip(positions[0]).take(1)]
        else:
            cells = list(undecoded[positions][self.column])
        for position, cell in zip(positions, cells):
            try:
                feature.decode_example(cell)
            except Exception as cause:
                path = (cell or {}).get("path") if isinstance(cell, dict) else None
                raise UnreadableItemError(position, self.ids(position, position + 1)[0], path, cause) from error
        raise error

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = "datasets:" + str(getattr(self.dataset, "_fingerprint", None) or self.name)
        return self._fingerprint

    def _label_column(self) -> str | None:
        import datasets

        features = self.dataset.features or {}
        return next((k for k in ("label", "labels") if isinstance(features.get(k), datasets.ClassLabel)), None)

    def labels(self) -> np.ndarray | None:
        column = self._label_column()
        if column is None or self.streaming:
            return None
        return np.asarray(self.dataset.select_columns([column])[column], dtype=np.int64)

    def label_names(self) -> list[str] | None:
        column = self._label_column()
        return list(self.dataset.features[column].names) if column else None

    def paths(self) -> list[str] | None:
        import datasets

        if self.modality != IMAGE or self.streaming:
            return None
        # The image column undecoded: its file paths, without reading a pixel.
        raw = self.dataset.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))
        paths = [(cell or {}).get("path") for cell in raw[self.column]]
        return paths if any(paths) else None


class TextFileSource(GallerySource):
    """Texts from a ``.txt`` file (one per line, ids = line numbers) or ``.jsonl`` (``id`` and ``text`` keys)."""

    modality = TEXT

    def __init__(self, path: str | os.PathLike | DataSource):
        source = path if isinstance(path, DataSource) else _resolve(path, (TEXT_LINES, JSONL))
        path = source.path
        lines = path.read_text(encoding="utf-8").splitlines()
        if source.kind == JSONL:
            rows = [json.loads(line) for line in lines if line.strip()]
            if any("text" not in row for row in rows):
                raise GallerySourceError(f"Every line of {path} needs a 'text' key (and optionally 'id').")
            self.texts = [row["text"] for row in rows]
            self._ids = [row.get("id", i) for i, row in enumerate(rows)]
        else:
            self.texts, self._ids = lines, list(range(len(lines)))
        self.name, self._fingerprint = f"text:{path.name}", _hash_files([path])

    def __len__(self) -> int:
        return len(self.texts)

    def items(self, start: int, stop: int) -> list[str]:
        return self.texts[start:stop]

    def take(self, positions) -> list[str]:
        return [self.texts[int(p)] for p in positions]

    def ids(self, start: int = 0, stop: int | None = None) -> list:
        stop = len(self) if stop is None else stop
        return self._ids[start:stop]

    def fingerprint(self) -> str:
        return self._fingerprint

    def paths(self) -> list[str] | None:
        # a text item's "path" is its line: enough to find it in the file
        return [f"{self.name.removeprefix('text:')}:{position + 1}" for position in range(len(self))]


def _listing_hash(directory: Path) -> str:
    # Hashing every image of a large folder would read it all once more; the relative paths and sizes identify it.
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory).as_posix()}\0{path.stat().st_size}\n".encode())
    return "listing-sha256:" + digest.hexdigest()


def _resolve(data: str | os.PathLike, kinds: tuple[str, ...]) -> DataSource:
    try:
        return resolve_data_source(data, accept=kinds)
    except DataSourceError as error:
        raise GalleryDataSourceError(error.problem, error.given) from None


def open_source(
    data: str | os.PathLike | DataSource | GallerySource,
    split: str | None = None,
    column: str | None = None,
    id_column: str | None = None,
    streaming: bool = False,
) -> GallerySource:
    """Open a dataset as a :class:`GallerySource`.

    Args:
        data (`str` or `os.PathLike`): an IDX directory, a ``save_to_disk`` directory, an imagefolder, or a ``.txt`` /
            ``.jsonl`` file, as :func:`~bt2_hf.data.sources.resolve_data_source` names it (or its
            :class:`~bt2_hf.data.sources.DataSource`); a :class:`GallerySource` is returned as is.
        split (`str`, *optional*): IDX: ``train`` (default), ``test`` or ``all``; `datasets`: the split of a
            ``DatasetDict`` (default: ``train``).
        column (`str`, *optional*): the image or text column of a `datasets` dataset.
        id_column (`str`, *optional*): the id column of a `datasets` dataset.
        streaming (`bool`, *optional*, defaults to `False`): stream an imagefolder instead of indexing it first.

    Raises:
        `GalleryDataSourceError`: ``data`` is missing, of no known layout, or a Hub id (the resolver's message).
    """
    if isinstance(data, GallerySource):
        return data
    source = data if isinstance(data, DataSource) else _resolve(data, GALLERY_SOURCE_KINDS)
    if source.kind in (TEXT_LINES, JSONL):
        return TextFileSource(source)
    if source.kind == IDX:
        return IDXSource(source, split or "train")
    if source.kind not in (SAVED_DATASET, IMAGEFOLDER):
        raise GallerySourceError(f"{source.given} is a {source.kind!r} source; a gallery is built from local data.")
    import datasets

    from ..data.datasets import load_hf_dataset

    path = source.path
    fingerprint = _listing_hash(path) if source.kind == IMAGEFOLDER else None  # of the files as they were found
    loaded = load_hf_dataset(source, streaming=streaming)
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        split = split or ("train" if "train" in loaded else next(iter(loaded)))
        if split not in loaded:
            raise GallerySourceError(f"{source.given} has splits {list(loaded)}, not {split!r}.")
        loaded = loaded[split]
    return HFDatasetSource(loaded, column, id_column, name=f"datasets:{path.name}:{split}", fingerprint=fingerprint)
