"""The attack: one truncated or corrupt image in an imagefolder. Every command that decodes the folder (embed, index
build with a model, backfill) must end with one line naming the image's row and file, not a traceback, and must not
leave a manifest that claims the embedding finished."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bt2_hf import BT2Config, BT2Model
from bt2_hf.cli.main import main as bt2

REPO = Path(__file__).resolve().parents[2]
RGB_CNN = {"num_channels": 3, "widths": [4], "image_size": 16}
BAD_ROW, BAD_FILE = 4, ("b", "1.png")  # imagefolder rows: a/0, a/1, a/2, b/0, b/1, b/2


def _rgb_model(seed: int, embedding_dim: int = 8, **config) -> BT2Model:
    torch.manual_seed(seed)
    return BT2Model(
        BT2Config(backbone_type="small_cnn", backbone_config=RGB_CNN, embedding_dim=embedding_dim, **config)
    ).eval()


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / label / f"{index}.png")
    return root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_keeping_size(path: Path) -> None:
    # Same size, so the folder's listing hash (relative paths and sizes) still matches the gallery's dataset.
    data = path.read_bytes()
    half = len(data) // 2
    path.write_bytes(data[:half] + bytes(len(data) - half))


@pytest.fixture
def folder_and_model(tmp_path):
    model_dir = tmp_path / "model"
    _rgb_model(0).save_pretrained(model_dir)
    folder = _image_folder(tmp_path / "photos")
    return folder, model_dir


def _assert_one_line_naming_the_image(stderr: str, command: str, folder: Path) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"{command}:")]
    assert len(lines) == 1, stderr
    assert f"cannot read image {BAD_ROW} ({folder.joinpath(*BAD_FILE)})" in lines[0]
    assert "remove or re-save" in lines[0]


def test_embed_names_the_truncated_image_and_claims_nothing(folder_and_model, tmp_path, capsys):
    folder, model_dir = folder_and_model
    _truncate(folder.joinpath(*BAD_FILE))
    output = tmp_path / "emb"
    status = bt2(["embed", "--model", str(model_dir), "--data", str(folder), "--output", str(output), "--no_progress"])
    assert status == 2
    _assert_one_line_naming_the_image(capsys.readouterr().err, "bt2 embed", folder)
    assert not (output / "manifest.json").exists()


def test_streamed_embed_names_the_truncated_image(folder_and_model, tmp_path, capsys):
    folder, model_dir = folder_and_model
    _truncate(folder.joinpath(*BAD_FILE))
    output = tmp_path / "emb"
    status = bt2(["embed", "--model", str(model_dir), "--data", str(folder), "--output", str(output),
                  "--streaming", "--no_progress"])  # fmt: skip
    assert status == 2
    _assert_one_line_naming_the_image(capsys.readouterr().err, "bt2 embed", folder)
    assert not (output / "manifest.json").exists()


def test_index_build_from_a_model_names_the_truncated_image(folder_and_model, tmp_path, capsys):
    folder, model_dir = folder_and_model
    _truncate(folder.joinpath(*BAD_FILE))
    gallery = tmp_path / "gallery"
    status = bt2(["index", "build", "--model", str(model_dir), "--data", str(folder), "--output", str(gallery),
                  "--embeddings_output", str(tmp_path / "emb")])  # fmt: skip
    assert status == 2
    _assert_one_line_naming_the_image(capsys.readouterr().err, "bt2 index", folder)
    assert not gallery.exists()
    assert not (tmp_path / "emb" / "manifest.json").exists()


def test_backfill_names_an_image_corrupted_after_the_gallery_was_built(folder_and_model, tmp_path, capsys):
    folder, old_dir = folder_and_model
    old = BT2Model.from_pretrained(old_dir)
    new = _rgb_model(1, embedding_dim=12, compatible_dim=8)
    new.config.compatible_with = [{"name_or_path": str(old_dir), "fingerprint": old.config.fingerprint,
                                   "embedding_dim": 8, "method": "bt2"}]  # fmt: skip
    new.save_pretrained(tmp_path / "new")
    gallery = tmp_path / "gallery"
    assert bt2(["index", "build", "--model", str(old_dir), "--data", str(folder), "--output", str(gallery)]) == 0
    _corrupt_keeping_size(folder.joinpath(*BAD_FILE))
    capsys.readouterr()
    status = bt2(["backfill", "--index", str(gallery), "--model", str(tmp_path / "new"), "--data", str(folder),
                  "--fraction", "1", "--allow_unmeasured", "--no_progress"])  # fmt: skip
    assert status == 2
    _assert_one_line_naming_the_image(capsys.readouterr().err, "bt2 backfill", folder)


def test_a_real_error_is_not_blamed_on_an_image(folder_and_model, monkeypatch):
    # When every item decodes on its own, the batch's failure was not an image's: it is raised unchanged.
    from bt2_hf.galleries import UnreadableItemError, open_source

    class FailingReads:
        """The dataset, except that reading decoded rows fails for a reason that is no image's."""

        def __init__(self, dataset):
            self.dataset = dataset

        def __getattr__(self, name):
            return getattr(self.dataset, name)

        def __getitem__(self, key):
            raise MemoryError("out of memory")

    folder, _ = folder_and_model
    source = open_source(folder)
    monkeypatch.setattr(source, "dataset", FailingReads(source.dataset))
    for read in (lambda: source.items(0, 3), lambda: source.take([5, 1])):
        with pytest.raises(MemoryError) as raised:
            read()
        assert not isinstance(raised.value, UnreadableItemError)


def test_embed_in_a_subprocess_prints_no_traceback(folder_and_model, tmp_path):
    folder, model_dir = folder_and_model
    _truncate(folder.joinpath(*BAD_FILE))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", "bt2_hf.cli.main", "embed", "--model", str(model_dir), "--data", str(folder),
         "--output", str(tmp_path / "emb"), "--no_progress"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr
    _assert_one_line_naming_the_image(completed.stderr, "bt2 embed", folder)
    assert completed.stdout == ""
