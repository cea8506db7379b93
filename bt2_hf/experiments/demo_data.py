"""The demo's data: any image classification set, named after itself, with a training and a test split.

``bt2 demo --data_dir`` accepts:

- a directory of IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]`` and, optionally, the
  ``t10k-`` test pair), of any image size. With a ``class_names.txt`` next to them (one name per line) the set has
  that many classes; without it, it is a 10-class set such as Fashion-MNIST, MNIST or KMNIST, with the Fashion-MNIST
  names for a directory called ``fashion-mnist`` and the class ids otherwise;
- an ``imagefolder`` directory (one sub-directory per class, optionally under ``train/`` and ``test/``) or a
  directory written by ``datasets.Dataset.save_to_disk``: class names from its ``ClassLabel`` feature;
- a Hub dataset id (online).

When the source has no test split, a class-balanced fifth of the training split is held out as the test split (and
the results say so). The data set's name (the directory's name, the Hub id, or ``dataset_name``) names everything the
demo writes: titles, repo ids, cards.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.classification_data import ImageClassificationData
from ..data.datasets import from_hf_dataset, load_hf_dataset
from ..data.sources import IDX, IMAGE_KINDS, DataSource, resolve_data_source

logger = logging.getLogger(__name__)

# Names that deserve their usual spelling in titles (the directory of the Debian package is "fashion-mnist").
_DISPLAY_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "kmnist": "KMNIST", "emnist": "EMNIST"}
_TEST_SPLITS = ("test", "validation", "valid", "val")
HELD_OUT_TEST_FRACTION = 0.2


@dataclass
class DemoData:
    """The demo's two splits and the data set's names.

    Args:
        train (:class:`~bt2_hf.data.ImageClassificationData`): the training split (in memory).
        test (:class:`~bt2_hf.data.ImageClassificationData`): the split every number is reported on.
        name (`str`): the data set's name as shown in titles and cards (``"Fashion-MNIST"``).
        source (`str`): where it was read from.
        test_split (`str`): how the test split was obtained (``"test"``, or ``"held out: 20 % of train"``).
    """

    train: ImageClassificationData
    test: ImageClassificationData
    name: str
    source: str
    test_split: str = "test"

    @property
    def slug(self) -> str:
        """The name in repo-id form: lower case, runs of other characters as one ``-`` (``fashion-mnist``)."""
        return dataset_slug(self.name)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def num_channels(self) -> int:
        return int(self.train.images.shape[1])


def dataset_slug(name: str) -> str:
    """``name`` as a Hub repo-id component: lower case, ``[a-z0-9]`` and single dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"The data set name {name!r} has no letters or digits; pass --dataset_name.")
    return slug


def _display_name(raw: str) -> str:
    return _DISPLAY_NAMES.get(dataset_slug(raw), raw)


def split_off(
    data: ImageClassificationData, fraction: float, seed: int
) -> tuple[ImageClassificationData, ImageClassificationData]:
    """(rest, held out): a class-balanced ``fraction`` of ``data`` held out with a fixed seed (disjoint rows)."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in torch.unique(data.labels).tolist():
        rows = torch.nonzero(data.labels == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        held.append(rows[: max(1, int(round(fraction * len(rows))))])
    held_rows = torch.sort(torch.cat(held)).values
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[held_rows] = False
    return data._take(torch.nonzero(keep).flatten()), data._take(held_rows)


def _with_class_names(data: ImageClassificationData, names: list[str] | None) -> ImageClassificationData:
    num_classes = int(data.labels.max()) + 1 if len(data.labels) else 0
    names = list(names) if names is not None else [str(i) for i in range(max(num_classes, data.num_classes))]
    return ImageClassificationData(images=data.images, labels=data.labels, class_names=names, source=data.source)


def _read_named_idx(directory: Path, prefix: str, names: list[str]) -> ImageClassificationData:
    """One split of an IDX set whose ``class_names.txt`` says how many classes it has (any number, any image size)."""
    from ..data.fashion_mnist import find_idx_file, read_idx
    from ..errors import BT2InputError

    image_path = find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
    label_path = find_idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise BT2InputError(f"expected N×H×W uint8 images, got {images.dtype} of shape {images.shape}.", image_path)
    if labels.ndim != 1 or len(labels) != len(images):
        raise BT2InputError(f"expected one label per image ({len(images)} images), got {labels.shape}.", label_path)
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        raise BT2InputError(
            f"label {int(labels[bad[0]])} at row {int(bad[0])} is outside the {len(names)} classes named in "
            f"{directory / 'class_names.txt'}; add the missing names or fix the labels.",
            label_path,
        )
    return ImageClassificationData(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=names,
    )


def _load_idx_dir(source: DataSource) -> tuple[ImageClassificationData, ImageClassificationData | None]:
    """An IDX directory: with ``class_names.txt``, any number of classes; without, a 10-class (Fashion-)MNIST-style
    set read by the Fashion-MNIST reader (which refuses labels outside 0-9)."""
    from ..data.fashion_mnist import find_idx_file, load_fashion_mnist

    directory = source.path
    has_test = all(find_idx_file(directory, s) for s in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    names = source.class_names()
    if names is not None:
        train = _read_named_idx(directory, "train", names)
        return train, _read_named_idx(directory, "t10k", names) if has_test else None
    train = load_fashion_mnist(directory, "train")
    if dataset_slug(directory.name) != "fashion-mnist":  # MNIST, KMNIST …: the files carry no class names
        train = _with_class_names(train, None)
    test = None
    if has_test:
        test = _with_class_names(load_fashion_mnist(directory, "test"), train.class_names)
    return train, test


def _load_datasets(source: DataSource, image_size: int | None) -> tuple[ImageClassificationData, ...]:
    import datasets

    name_or_path = source.location
    loaded = load_hf_dataset(source)
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise ValueError(f"{name_or_path} has splits {list(loaded)}; the demo needs a 'train' split.")
    test_name = next((s for s in _TEST_SPLITS if s in loaded), None)
    first = loaded["train"]
    image_column = next((k for k, v in first.features.items() if isinstance(v, datasets.Image)), None)
    if image_column is None:
        raise ValueError(f"{name_or_path} has no image column (columns: {list(first.features)}).")
    sample = first[0][image_column]
    num_channels = 1 if getattr(sample, "mode", "L") in ("L", "1", "I", "I;16", "F") else 3
    size = image_size or int(min(sample.size))
    splits = [
        from_hf_dataset(loaded["train"], image_size=size, num_channels=num_channels, source=f"{name_or_path}:train")
    ]
    if test_name is not None:
        splits.append(
            from_hf_dataset(loaded[test_name], image_size=size, num_channels=num_channels,
                            source=f"{name_or_path}:{test_name}")
        )  # fmt: skip
    else:
        splits.append(None)
    return tuple(splits)


def load_demo_data(
    data_dir: str | Path | None = None,
    *,
    dataset_name: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> DemoData:
    """Read the demo's data from an IDX directory, an imagefolder / ``save_to_disk`` directory, or a Hub id.

    Args:
        data_dir (`str` or `Path`, *optional*): the source; defaults to the Debian package's Fashion-MNIST directory.
        dataset_name (`str`, *optional*): the name used in titles, repo ids and cards; defaults to the directory's
            name or the Hub id.
        image_size (`int`, *optional*): resize `datasets` images to this size (default: the first image's size).
        seed (`int`, *optional*, defaults to 0): seed of the held-out test split, when the source has none.

    Raises:
        `~bt2_hf.data.sources.DataSourceError`: ``data_dir`` is none of the known layouts (a
        `~bt2_hf.data.sources.MissingDataSourceError`, also a `FileNotFoundError`, when it does not exist, saying how
        to get Fashion-MNIST).
    """
    from ..data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR

    resolved = resolve_data_source(DEFAULT_FASHION_MNIST_DIR if data_dir is None else data_dir, accept=IMAGE_KINDS)
    source = resolved.given
    if resolved.kind == IDX:
        train, test = _load_idx_dir(resolved)
    else:
        train, test = _load_datasets(resolved, image_size)
    raw_name = resolved.name
    test_split = "test"
    if test is None:
        train, test = split_off(train, HELD_OUT_TEST_FRACTION, seed)
        test_split = f"held out: {HELD_OUT_TEST_FRACTION:.0%} of train, class-balanced, seed {seed}"
        logger.info("%s has no test split; %s.", source, test_split)
    if train.num_classes < 2:
        raise ValueError(f"{source} has {train.num_classes} class; the demo needs at least two.")
    name = dataset_name or _display_name(raw_name)
    dataset_slug(name)  # fails early on a name that cannot name a repo
    # What a checkpoint records as its training data: the data set's name, not a path of this machine.
    train.source, test.source = f"{name}:train", f"{name}:{'test' if test_split == 'test' else 'held-out test'}"
    return DemoData(train=train, test=test, name=name, source=source, test_split=test_split)


def class_counts(data: ImageClassificationData) -> np.ndarray:
    """Images per class id (for the results' description of the data)."""
    return np.bincount(data.labels.numpy(), minlength=data.num_classes)
