"""A gallery root served by bt2 serve: an old tiny CNN's gallery of an IDX data set, and a new model measured against it."""

from __future__ import annotations

import os
import subprocess
import time

import httpx
import numpy as np
import pytest

from bt2_hf import BT2Model
from bt2_hf.galleries import FaissGallery, open_source
from bt2_hf.galleries.aliases import GalleryRoot
from tests.galleries.conftest import (
    PYTHON,
    REPO,
    free_port,
    milvus_server,  # noqa: F401 - the session's Milvus server fixture
    subprocess_env,
    tiny_model,
    write_idx,
)
from tests.galleries.test_text import text_tower

TOKEN = "test-token"
WRITE = {"Authorization": f"Bearer {TOKEN}"}


def measured_entry(old, dim, *, query):
    """A measured, passing entry as `bt2 verify` writes it, bound to ``query`` and sealed with its content hash."""
    from bt2_hf.compatibility import seal_entry

    return seal_entry({"query_fingerprint": query.config.fingerprint, "name_or_path": str(old.config.name_or_path),
                       "fingerprint": old.config.fingerprint, "embedding_dim": dim, "method": "bt2",
                       "status": "measured", "dataset": {"name": "idx", "split": "test", "size": 120,
                                                         "sha256": "0" * 64},
                       "metrics": {"old/old": {"top1": 60.0, "mAP": 30.0}, "new/old": {"top1": 62.0, "mAP": 31.0}},
                       "criterion": {"metrics": ["top1", "mAP"], "passed": True}})  # fmt: skip


@pytest.fixture(scope="session")
def serving_models(tmp_path_factory):
    """old (8-d), new (12-d, its 8-d prefix measured against old), other (8-d, unrelated): saved folders."""
    root = tmp_path_factory.mktemp("serving-models")
    tiny_model(0).save_pretrained(root / "old")
    old = BT2Model.from_pretrained(root / "old")
    tiny_model(1, embedding_dim=12, compatible_dim=8).save_pretrained(root / "new")
    new = BT2Model.from_pretrained(root / "new")
    new.config.compatible_with = [measured_entry(old, 8, query=new)]
    new.save_pretrained(root / "new")
    tiny_model(2).save_pretrained(root / "other")
    return {"old": root / "old", "new": root / "new", "other": root / "other"}


@pytest.fixture(scope="session")
def serving_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("serving-idx")
    write_idx(root, rng.integers(0, 256, (200, 28, 28)), rng.integers(0, 10, 200), "train")
    return root


@pytest.fixture(scope="session")
def built_gallery(serving_models, serving_data, tmp_path_factory):
    """The old model's flat gallery of the 200 training images (ids 0..199, labels, paths), built once."""
    source = open_source(serving_data, split="train")
    old = BT2Model.from_pretrained(serving_models["old"])
    directory = tmp_path_factory.mktemp("serving-built") / "products_v1"
    FaissGallery.from_model(directory, old, source.items(0, len(source)), source.ids(), labels=source.labels(),
                            label_names=source.label_names(), paths=[f"train/{i}" for i in range(len(source))])  # fmt: skip
    return directory


@pytest.fixture
def gallery_root(built_gallery, tmp_path):
    """A fresh root holding a copy of the gallery and the alias ``products`` → ``products_v1``."""
    import shutil

    root = tmp_path / "galleries"
    root.mkdir()
    shutil.copytree(built_gallery, root / "products_v1")
    GalleryRoot(root).create_alias("products", "products_v1")
    return root


@pytest.fixture
def service(gallery_root, serving_models):
    """A service over ``gallery_root`` with the new and the old model (its background jobs stopped afterwards)."""
    from bt2_hf.serving import GalleryService

    service = GalleryService(gallery_root, models=[f"new={serving_models['new']}", f"old={serving_models['old']}"])
    yield service
    service.stop_jobs()


def text_gallery(tmp_path, captions: list[str]):
    """A tiny text tower saved as ``tmp_path / "tower"`` and a gallery root holding ``captions``, a faiss gallery of
    ``captions`` embedded by it (ids ``t0``, ``t1``, …; the captions as paths): ``(tower, root)``."""
    text_tower(0, 8).save_pretrained(tmp_path / "tower")
    tower = BT2Model.from_pretrained(tmp_path / "tower")
    root = tmp_path / "galleries"
    root.mkdir()
    FaissGallery.from_model(
        root / "captions", tower, captions, [f"t{i}" for i in range(len(captions))], paths=captions
    )
    return tower, root


def backfill_part(service, model_path, data_dir, fraction: float, next_rows: slice):
    """Backfill ``fraction`` of the served ``products`` gallery with the model at ``model_path`` (batches of 50,
    committed under the gallery's write lock), and embed the rows of the backfill order at ``next_rows`` in that
    order: ``(gallery, store, model, rows, vectors)`` for a test to commit next."""
    from bt2_hf.galleries import backfill
    from bt2_hf.serving.service import CommitsUnderWriteLock

    model = BT2Model.from_pretrained(model_path)
    _, gallery = service.served("products")
    store = gallery.store
    backfill(CommitsUnderWriteLock(store, gallery.rw), model, str(data_dir), fraction=fraction, batch_size=50,
             show_progress=False)  # fmt: skip
    rows = store.backfill_order()[next_rows]
    vectors = model.encode(images=open_source(data_dir, split="train").take(np.sort(rows))).numpy()
    return gallery, store, model, rows, vectors[np.argsort(np.argsort(rows))]


class ServerProcess:
    """``bt2 serve`` in a subprocess on a free loopback port."""

    def __init__(self, root, *args, log_dir=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the log goes beside the galleries, or into log_dir when the root is no folder (a Milvus URI)
        self.log = open(os.path.join(log_dir or root, f"serve-{self.port}.log"), "w")
        self.process = subprocess.Popen([PYTHON, "-m", "bt2_hf.cli.main", "serve", str(root), "--port",
                                         str(self.port), "--token", TOKEN, *map(str, args)], cwd=REPO,
                                        env=subprocess_env(), stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bt2 serve exited with {self.process.returncode}: {open(self.log.name).read()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("bt2 serve did not answer within 90 s")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
