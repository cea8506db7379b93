"""``embed_dataset`` / ``bt2 embed``: shards with ids and a manifest, 2 processes = 1, resumable after kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from bt2_hf import BT2Model
from bt2_hf.cli.embed import main as embed_main
from bt2_hf.galleries import EmbeddingDirectory, EmbeddingDirectoryError, TensorSource, embed_dataset, open_source
from bt2_hf.galleries.shards import shard_path

from .conftest import PYTHON, REPO, free_port, subprocess_env, tiny_model


def test_embed_idx_all_splits_matches_encode(saved_models, idx_dir, tmp_path):
    model = BT2Model.from_pretrained(saved_models["old"])
    result = embed_dataset(model, idx_dir, tmp_path / "emb", split="all", dtype="float32", shard_size=64,
                           batch_size=32, show_progress=False)  # fmt: skip
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["count"] == 180 and manifest["num_shards"] == 3 and manifest["dimension"] == 8
    assert manifest["model"]["fingerprint"] == model.config.fingerprint and manifest["dtype"] == "float32"
    assert manifest["dataset"]["hash"].startswith("sha256:") and manifest["dataset"]["count"] == 180
    ids = result.ids()
    assert ids[:2] == ["train/0", "train/1"] and ids[150] == "test/0" and len(set(ids)) == 180
    source = open_source(idx_dir, split="all")
    expected = model.encode(images=source.items(0, 180), batch_size=32).numpy()
    np.testing.assert_allclose(result.vectors(), expected, atol=1e-6)
    result.verify()


def test_float16_shards_and_datasets_folder(saved_models, tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(20)]
    datasets.Dataset.from_dict({"image": images, "id": [f"img-{i}" for i in range(20)]},
                               features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")})
                               ).save_to_disk(str(tmp_path / "ds"))  # fmt: skip
    model = BT2Model.from_pretrained(saved_models["old"])
    result = embed_dataset(model, tmp_path / "ds", tmp_path / "emb", shard_size=8, show_progress=False)
    vectors = next(result.shards())[0]
    assert vectors.dtype == np.float16 and result.ids() == [f"img-{i}" for i in range(20)]
    expected = model.encode(images=images).numpy()
    np.testing.assert_allclose(result.vectors(), expected, atol=2e-3)


def test_other_model_cannot_resume_a_directory(saved_models, idx_dir, tmp_path):
    embed_dataset(BT2Model.from_pretrained(saved_models["old"]), idx_dir, tmp_path / "emb", show_progress=False)
    with pytest.raises(EmbeddingDirectoryError, match="another run .*model"):
        embed_dataset(BT2Model.from_pretrained(saved_models["other"]), idx_dir, tmp_path / "emb", show_progress=False)
    assert embed_main(["--model", str(saved_models["other"]), "--data", str(idx_dir), "--output",
                       str(tmp_path / "emb")]) == 2  # fmt: skip


def test_unfinished_directory_is_not_read(tmp_path):
    model = tiny_model(0)
    (tmp_path / "emb").mkdir()
    with pytest.raises(EmbeddingDirectoryError, match="embed a dataset there first"):
        EmbeddingDirectory(tmp_path / "emb")
    with pytest.raises(ValueError, match="holds images but the model encodes"):
        model.backbone.modality = "text"  # a stand-in for a text tower
        embed_dataset(model, TensorSource(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)), tmp_path / "x")


def _shards(directory):
    result = EmbeddingDirectory(directory)
    return result.ids(), result.vectors()


@pytest.mark.multiprocess
def test_two_processes_write_the_same_embeddings_as_one(saved_models, idx_dir, tmp_path):
    common = ["--model", str(saved_models["old"]), "--data", str(idx_dir), "--split", "all", "--dtype", "float32",
              "--shard-size", "32", "--batch-size", "16", "--no-progress"]  # fmt: skip
    assert embed_main([*common, "--output", str(tmp_path / "one")]) == 0
    command = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "bt2_hf.cli.embed", *common, "--output", str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["num_processes"] == 2 and manifest["num_shards"] == 6
    ids_one, vectors_one = _shards(tmp_path / "one")
    ids_two, vectors_two = _shards(tmp_path / "two")
    assert ids_one == ids_two
    np.testing.assert_allclose(vectors_one, vectors_two, atol=1e-6)


@pytest.mark.slow
def test_resume_after_kill_9_keeps_finished_shards_and_writes_each_item_once(saved_models, tmp_path):
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    from .conftest import write_idx

    write_idx(data, rng.integers(0, 256, (600, 28, 28)), rng.integers(0, 10, 600))
    output = tmp_path / "emb"
    command = [PYTHON, "-m", "bt2_hf.cli.embed", "--model", str(saved_models["old"]), "--data", str(data),
               "--output", str(output), "--dtype", "float32", "--shard-size", "4", "--batch-size", "4",
               "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not shard_path(output, 3).exists():
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    finished = sorted(output.glob("shard-?????.npy"))
    assert 4 <= len(finished) < 150 and not (output / "manifest.json").exists()
    before = {path.name: path.stat().st_ino for path in finished}
    with pytest.raises(EmbeddingDirectoryError, match="did not finish"):
        EmbeddingDirectory(output)
    resumed = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Shards finished before the kill were not rewritten (same inode), the others were written once each.
    assert {name: (output / name).stat().st_ino for name in before} == before
    ids, vectors = _shards(output)
    assert ids == list(range(600))
    assert not list(output.glob(".*.tmp"))
    model = BT2Model.from_pretrained(saved_models["old"])
    expected = model.encode(images=open_source(data).items(0, 600), batch_size=4).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
