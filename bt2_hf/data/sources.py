"""What a data argument names: one resolver for every command that reads a dataset from a string.

``bt2 demo --data_dir``, ``bt2 verify --data``, ``bt2 train --dataset``, ``bt2 embed`` / ``bt2 index build`` /
``bt2 gallery`` data all take a string that is a local path or a Hub dataset id. :func:`resolve_data_source` decides
which layout it is, once, and returns a :class:`DataSource`; the readers (the IDX reader, the `datasets` loaders, the
gallery sources) read what it names and never decide again. Unknown input gets one :class:`DataSourceError` whose
message names what was given, the known layouts and the fix, whichever command received it.

The layouts, in the order a directory is tried:

- ``"idx"``: a directory of IDX files (``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``,
  optionally the ``t10k-`` test pair and a ``class_names.txt``);
- ``"saved_dataset"``: a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``);
- ``"imagefolder"``: a directory holding image files (one sub-directory per class, optionally under ``train/`` and
  ``test/``);
- ``"text_lines"``: a ``.txt`` file, one text per line; ``"jsonl"``: a ``.jsonl`` file, one JSON object per line;
- ``"hub"``: a Hub dataset id (``name`` or ``owner/name``) that is no local path. Resolving it never touches the
  network: loading is the caller's business.

>>> from bt2_hf.data.sources import resolve_data_source
>>> resolve_data_source("owner/some-dataset").kind
'hub'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BT2InputError
from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, is_fashion_mnist_dir

IDX, SAVED_DATASET, IMAGEFOLDER = "idx", "saved_dataset", "imagefolder"
TEXT_LINES, JSONL, HUB = "text_lines", "jsonl", "hub"
DATA_SOURCE_KINDS = (IDX, SAVED_DATASET, IMAGEFOLDER, TEXT_LINES, JSONL, HUB)
IMAGE_KINDS = (IDX, SAVED_DATASET, IMAGEFOLDER, HUB)
TEXT_FILE_KINDS = {".txt": TEXT_LINES, ".jsonl": JSONL}

# One line per layout, in the order of DATA_SOURCE_KINDS: every refusal lists the layouts the caller accepts.
_LAYOUTS = {
    IDX: "a directory of IDX files (train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz], optionally the "
    "t10k- pair and class_names.txt)",
    SAVED_DATASET: "a directory written by datasets' save_to_disk (with dataset_dict.json or state.json)",
    IMAGEFOLDER: "an imagefolder directory (image files in one sub-directory per class)",
    TEXT_LINES: "a .txt file (one text per line)",
    JSONL: 'a .jsonl file (one {"id": ..., "text": ...} object per line)',
    HUB: "a Hub dataset id (name or owner/name)",
}
_SAVED_DATASET_FILES = ("dataset_dict.json", "state.json", "dataset_info.json")
# Hub ids are "name" or "owner/name" of letters, digits, '-', '_', '.'; a string ending like a data file is a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_FILE_SUFFIXES = {".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".npz", ".npy", ".gz", ".zip",
                  ".tar", ".png", ".jpg", ".jpeg"}  # fmt: skip
# Image suffixes when PIL is not importable (PIL's own list is what `datasets`' imagefolder uses).
_FALLBACK_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DataSourceError(BT2InputError):
    """A data argument is none of the known layouts, or a layout the command cannot read.

    The message names what was given, the layouts the command accepts, and the fix; it is the same text whichever
    command received the argument. ``error.given`` is the argument as passed.
    """

    def __init__(self, problem: str, given: str, path: str | os.PathLike | None = None):
        self.given = given
        super().__init__(problem, path)


class MissingDataSourceError(DataSourceError, FileNotFoundError):
    """A data argument names a local path that does not exist (also a `FileNotFoundError`)."""


@dataclass(frozen=True)
class DataSource:
    """A resolved data argument: which layout it is and where it lives.

    Args:
        kind (`str`): one of ``"idx"``, ``"saved_dataset"``, ``"imagefolder"``, ``"text_lines"``, ``"jsonl"``,
            ``"hub"``.
        location (`str`): the local path (``~`` expanded, otherwise as given) or the Hub id.
        given (`str`): the argument as passed (for messages and records).
        class_names_file (`Path`, *optional*): an IDX directory's ``class_names.txt``, when it has one.
    """

    kind: str
    location: str
    given: str
    class_names_file: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.kind != HUB

    @property
    def path(self) -> Path:
        """The local path (a `ValueError` for a Hub id, which has none)."""
        if not self.is_local:
            raise ValueError(f"{self.given} is a Hub dataset id, not a local path.")
        return Path(self.location)

    @property
    def name(self) -> str:
        """The data set's own name: the directory's or file's name, or the last part of the Hub id."""
        return Path(self.location).name if self.is_local else self.location.rsplit("/", 1)[-1]

    def class_names(self) -> list[str] | None:
        """An IDX directory's class names (``class_names.txt``, one per non-blank line), or `None` without one."""
        if self.class_names_file is None:
            return None
        lines = self.class_names_file.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]


def describe_layouts(kinds: Iterable[str] = DATA_SOURCE_KINDS) -> str:
    """The known layouts among ``kinds``, as one sentence fragment (``a directory of IDX files (…); …``)."""
    return "; ".join(_LAYOUTS[kind] for kind in DATA_SOURCE_KINDS if kind in set(kinds))


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by ``datasets``' ``save_to_disk`` (a DatasetDict or one Dataset)."""
    path = Path(path)
    return any((path / name).is_file() for name in _SAVED_DATASET_FILES)


def _image_suffixes() -> set[str]:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL comes with datasets and torchvision-free installs alike
        return _FALLBACK_IMAGE_SUFFIXES
    return {suffix.lower() for suffix in Image.registered_extensions()} | _FALLBACK_IMAGE_SUFFIXES


def _holds_images(directory: Path) -> bool:
    # Stops at the first image file: a large imagefolder is not listed whole.
    suffixes = _image_suffixes()
    for _root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .cache, .git: not part of an imagefolder
        if any(Path(name).suffix.lower() in suffixes for name in files if not name.startswith(".")):
            return True
    return False


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub dataset id (``name`` or ``owner/name``) rather than of a local path."""
    return bool(_HUB_ID.fullmatch(name)) and Path(name).suffix.lower() not in _FILE_SUFFIXES


def _refuse(problem: str, given: str, fix: str, missing: bool = False) -> DataSourceError:
    # Every known layout, whatever the caller reads: the same bad argument gets the same message from every command.
    error = MissingDataSourceError if missing else DataSourceError
    return error(f"{given} {problem}. Known layouts: {describe_layouts()}. {fix}", given)


def _resolve_directory(path: Path, given: str) -> DataSource:
    if is_fashion_mnist_dir(path):
        names = path / "class_names.txt"
        return DataSource(IDX, str(path), given, names if names.is_file() else None)
    if is_saved_dataset(path):
        return DataSource(SAVED_DATASET, str(path), given)
    if _holds_images(path):
        return DataSource(IMAGEFOLDER, str(path), given)
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries:
        problem = "is an empty directory"
    else:
        shown = ", ".join(entries[:5]) + (f" … ({len(entries)} entries)" if len(entries) > 5 else "")
        problem = f"is a directory of none of the known layouts (it holds {shown})"
    fix = "Put the data in one of these layouts, or pass the directory that holds it."
    raise _refuse(problem, given, fix)


def resolve_data_source(name_or_path: str | os.PathLike, accept: Iterable[str] | None = None) -> DataSource:
    """Decide what a data argument is, from the local file system only (a Hub id is never looked up).

    Args:
        name_or_path (`str` or `os.PathLike`): a local directory or file, or a Hub dataset id.
        accept (iterable of `str`, *optional*): the kinds the caller reads (default: all of
            :data:`DATA_SOURCE_KINDS`); another kind is refused, naming the kinds accepted.

    Returns:
        :class:`DataSource`: the kind, the location and what the readers need.

    Raises:
        `MissingDataSourceError`: a local path that does not exist (also a `FileNotFoundError`).
        `DataSourceError`: an empty directory, a directory or a file of no known layout, or a kind not in ``accept``.
    """
    kinds = tuple(DATA_SOURCE_KINDS if accept is None else accept)
    unknown = [kind for kind in kinds if kind not in DATA_SOURCE_KINDS]
    if unknown:
        raise ValueError(f"Unknown data source kinds {unknown}; the kinds are {list(DATA_SOURCE_KINDS)}.")
    given = os.fspath(name_or_path)
    path = Path(given).expanduser()
    if path.is_dir():
        source = _resolve_directory(path, given)
    elif path.is_file():
        kind = TEXT_FILE_KINDS.get(path.suffix.lower())
        if kind is None:
            problem = f"is a {path.suffix or 'suffix-less'} file, which is none of the known layouts"
            raise _refuse(problem, given, "Convert it to one of these layouts.")
        source = DataSource(kind, str(path), given)
    elif isinstance(name_or_path, str) and looks_like_hub_id(given):
        if HUB not in kinds:
            raise MissingDataSourceError(
                f"{given} is no local path, and this command does not read Hub dataset ids. Pass one of: "
                f"{describe_layouts(kinds)}. To use a Hub dataset, save it first with "
                f"datasets.load_dataset({given!r}).save_to_disk(directory) and pass that directory.",
                given,
            )
        source = DataSource(HUB, given, given)
    else:
        # Fashion-MNIST is the default data set (the demo's): how to get it belongs to every "missing" message.
        fix = (
            "Check the path, or pass one of these instead. For Fashion-MNIST run `apt-get install "
            f"dataset-fashion-mnist` (IDX files under {DEFAULT_FASHION_MNIST_DIR}/)."
        )
        raise _refuse("does not exist", given, fix, missing=True)
    if source.kind not in kinds:
        what = _LAYOUTS[source.kind].split(" (")[0]
        raise DataSourceError(
            f"{given} is {what}, which this command does not read. Pass one of: {describe_layouts(kinds)}.", given
        )
    return source
