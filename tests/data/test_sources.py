"""The one resolver of data arguments: real layouts on disk → their kind, bad input → one message for every caller."""

from __future__ import annotations

import gzip
import json
import re
import socket
import struct

import numpy as np
import pytest
from PIL import Image

from bt2_hf.data import load_image_classification
from bt2_hf.data.datasets import load_hf_split
from bt2_hf.data.sources import (
    DATA_SOURCE_KINDS,
    IMAGE_KINDS,
    DataSource,
    DataSourceError,
    MissingDataSourceError,
    resolve_data_source,
)
from bt2_hf.errors import BT2InputError
from bt2_hf.experiments.demo_data import load_demo_data
from bt2_hf.galleries import GallerySourceError, open_source
from bt2_hf.galleries.sources import IDXSource, TextFileSource

KNOWN_LAYOUTS = "Known layouts: a directory of IDX files"


def _write_idx(path, array: np.ndarray) -> None:
    # The IDX format: two zero bytes, the type (0x08: unsigned bytes), the number of dimensions, big-endian sizes.
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _idx_dir(root, class_names: bool = False, name: str = "glyphs"):
    directory = root / name
    directory.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(directory / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 8, 8)))
    _write_idx(directory / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    if class_names:
        (directory / "class_names.txt").write_text("\n".join(f"glyph {i}" for i in range(10)), encoding="utf-8")
    return directory


def _saved_dataset(root):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = [Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)) for _ in range(6)]
    dataset = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(6)]}, features=features)
    dataset.save_to_disk(str(root / "letters"))
    return root / "letters"


def _imagefolder(root):
    rng = np.random.default_rng(2)
    for name in ("cat", "dog"):
        (root / "pets" / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                root / "pets" / name / f"{index}.png"
            )
    return root / "pets"


def _text_lines(root):
    (root / "captions.txt").write_text("a red shoe\na blue coat\n", encoding="utf-8")
    return root / "captions.txt"


def _jsonl(root):
    rows = [{"id": "q1", "text": "a red shoe"}, {"id": "q2", "text": "a blue coat"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return root / "queries.jsonl"


def _empty_dir(root):
    (root / "empty").mkdir()
    return root / "empty"


def _csv(root):
    (root / "table.csv").write_text("image,label\n", encoding="utf-8")
    return root / "table.csv"


def _dir_of_csvs(root):
    (root / "tables").mkdir()
    (root / "tables" / "train.csv").write_text("image,label\n", encoding="utf-8")
    return root / "tables"


def _t10k_only(root):
    # Test files without the training pair: not an IDX directory (and no images either).
    directory = root / "half"
    directory.mkdir()
    _write_idx(directory / "t10k-images-idx3-ubyte.gz", np.zeros((2, 8, 8)))
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros(2))
    return directory


GOOD = [
    (_idx_dir, "idx"),
    (lambda root: _idx_dir(root, class_names=True), "idx"),
    (_saved_dataset, "saved_dataset"),
    (_imagefolder, "imagefolder"),
    (_text_lines, "text_lines"),
    (_jsonl, "jsonl"),
]
BAD = [
    (lambda root: root / "nope" / "data", MissingDataSourceError, "does not exist"),
    (_empty_dir, DataSourceError, "is an empty directory"),
    (_csv, DataSourceError, r"is a \.csv file, which is none of the known layouts"),
    (_dir_of_csvs, DataSourceError, r"is a directory of none of the known layouts \(it holds train\.csv\)"),
    (_t10k_only, DataSourceError, "is a directory of none of the known layouts"),
]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: resolving must read the local file system only."""

    def refuse(*args, **kwargs):
        raise AssertionError("the resolver tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(("build", "kind"), GOOD)
def test_each_layout_on_disk_resolves_to_its_kind(tmp_path, build, kind, no_network):
    path = build(tmp_path)
    source = resolve_data_source(str(path))
    assert (source.kind, source.location, source.given, source.name) == (kind, str(path), str(path), path.name)
    assert resolve_data_source(path) == source  # a Path resolves as its string does
    assert source.is_local and source.path == path


def test_idx_class_names_come_with_the_source(tmp_path):
    plain = resolve_data_source(_idx_dir(tmp_path, name="plain"))
    named = resolve_data_source(_idx_dir(tmp_path, class_names=True, name="named"))
    assert (plain.class_names_file, plain.class_names()) == (None, None)
    assert named.class_names_file.name == "class_names.txt"
    assert named.class_names() == [f"glyph {i}" for i in range(10)]


@pytest.mark.parametrize("hub_id", ["owner/some-dataset", "fashion_mnist_corrupted", "org.name/data_set.v2"])
def test_a_hub_id_resolves_without_the_network(tmp_path, monkeypatch, hub_id, no_network):
    monkeypatch.chdir(tmp_path)  # no local path of that name
    source = resolve_data_source(hub_id)
    assert (source.kind, source.location, source.is_local) == ("hub", hub_id, False)
    assert source.name == hub_id.rsplit("/", 1)[-1]
    with pytest.raises(ValueError, match="Hub dataset id, not a local path"):
        _ = source.path


def test_a_local_directory_wins_over_a_hub_id_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _imagefolder(tmp_path)
    assert resolve_data_source("pets").kind == "imagefolder"


@pytest.mark.parametrize("given", ["./owner/name", "a/b/c", "~/no-such-dir-for-bt2", "missing.jsonl", "with space"])
def test_what_cannot_be_a_hub_id_is_a_missing_path(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingDataSourceError, match=f"^{given} does not exist. {KNOWN_LAYOUTS}"):
        resolve_data_source(given)


@pytest.mark.parametrize(("build", "error", "problem"), BAD)
def test_bad_input_is_one_error_naming_it_the_layouts_and_the_fix(tmp_path, build, error, problem, no_network):
    given = str(build(tmp_path))
    with pytest.raises(error) as caught:
        resolve_data_source(given)
    message = str(caught.value)
    assert isinstance(caught.value, BT2InputError) and caught.value.given == given
    assert message.startswith(given + " ")
    assert re.search(problem, message)
    for layout in ("IDX files", "save_to_disk", "imagefolder", ".txt file", ".jsonl file", "Hub dataset id"):
        assert layout in message
    assert "Check the path" in message or "Put the data" in message or "Convert it" in message
    # The same message whatever the caller reads: the known layouts are all listed, not only the accepted ones.
    for accept in (IMAGE_KINDS, ("text_lines", "jsonl")):
        with pytest.raises(error) as again:
            resolve_data_source(given, accept=accept)
        assert str(again.value) == message


def test_a_missing_path_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_data_source(tmp_path / "nope")


def test_a_missing_path_says_how_to_get_the_default_data_set(tmp_path):
    with pytest.raises(MissingDataSourceError, match="apt-get install dataset-fashion-mnist"):
        resolve_data_source(tmp_path / "fashion-mnist")


def test_a_kind_the_caller_does_not_read_is_refused_naming_what_it_reads(tmp_path):
    text = str(_text_lines(tmp_path))
    with pytest.raises(DataSourceError) as caught:
        resolve_data_source(text, accept=IMAGE_KINDS)
    message = str(caught.value)
    assert message.startswith(f"{text} is a .txt file, which this command does not read. Pass one of:")
    assert "IDX files" in message and "Hub dataset id" in message and "a .jsonl file" not in message
    with pytest.raises(ValueError, match="Unknown data source kinds"):
        resolve_data_source(text, accept=("csv",))
    assert set(IMAGE_KINDS) < set(DATA_SOURCE_KINDS)


def test_data_source_is_frozen():
    source = DataSource("hub", "owner/name", "owner/name")
    with pytest.raises(AttributeError):
        source.kind = "idx"


# Each caller asks the resolver: the same bad argument gives the same message from all of them.


def _message(call, given) -> str:
    with pytest.raises(BT2InputError) as caught:
        call(given)
    assert isinstance(caught.value, DataSourceError)
    return str(caught.value)


@pytest.mark.parametrize(("build", "error", "problem"), BAD)
def test_demo_verify_and_gallery_callers_give_the_resolvers_message(tmp_path, build, error, problem):
    given = str(build(tmp_path))
    with pytest.raises(DataSourceError) as caught:
        resolve_data_source(given)
    expected = str(caught.value)
    assert _message(load_demo_data, given) == expected  # bt2 demo --data_dir
    assert _message(load_image_classification, given) == expected  # bt2 verify / train / eval --data
    assert _message(lambda g: load_hf_split(g, "train"), given) == expected  # image–text rows
    assert _message(open_source, given) == expected  # bt2 embed / index build / gallery backfill
    with pytest.raises(GallerySourceError):  # code catching gallery source errors still catches it
        open_source(given)


def test_callers_refuse_a_kind_they_do_not_read_through_the_resolver(tmp_path, monkeypatch):
    text = str(_text_lines(tmp_path))
    expected = f"{text} is a .txt file, which this command does not read."
    assert _message(load_demo_data, text).startswith(expected)
    assert _message(load_image_classification, text).startswith(expected)
    with pytest.raises(DataSourceError, match="is a directory of IDX files, which this command does not read"):
        TextFileSource(_idx_dir(tmp_path))
    with pytest.raises(DataSourceError, match=r"is a \.txt file, which this command does not read"):
        IDXSource(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GallerySourceError, match="does not read Hub dataset ids.*save_to_disk"):
        open_source("owner/some-dataset")


def test_callers_read_what_the_resolver_names(tmp_path):
    idx = _idx_dir(tmp_path, class_names=True)
    assert load_demo_data(idx).train.class_names[3] == "glyph 3"
    gallery_idx = open_source(resolve_data_source(idx))  # a resolved source is taken as is
    assert (len(gallery_idx), gallery_idx.label_names()[3]) == (20, "glyph 3")
    assert open_source(_imagefolder(tmp_path)).label_names() == ["cat", "dog"]
    assert len(load_image_classification(str(_saved_dataset(tmp_path)), "train")) == 6
    assert open_source(_jsonl(tmp_path)).ids() == ["q1", "q2"]
    assert open_source(_text_lines(tmp_path)).items(0, 2) == ["a red shoe", "a blue coat"]
