"""`POST /items` appends to the served gallery's files (its built files stay as they are) and the next search finds
the items; a compaction by another process (`bt2 gallery compact`) while it serves is picked up by the next write."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from bt2_hf.cli.gallery import main as gallery_main
from bt2_hf.galleries import FaissGallery
from bt2_hf.serving import create_app

from .conftest import TOKEN, WRITE


def _built_files(directory) -> dict:
    return {name: ((directory / name).stat().st_ino, (directory / name).stat().st_mtime_ns)
            for name in ("vectors.npy", "ids.npy", "index.faiss", "labels.npy", "paths.npy")}  # fmt: skip


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_items_are_appended_searched_at_once_and_survive_a_compaction(service, gallery_root, capsys):
    client = TestClient(create_app(service, token=TOKEN))
    directory = gallery_root / "products_v1"
    built = _built_files(directory)
    vectors = _unit(np.random.default_rng(7).normal(size=(5, 8)))

    def add(keys):
        items = [{"id": key, "vectors": {"old": vectors[key - 700].tolist()}, "path": f"new/{key}"} for key in keys]
        answer = client.post("/items", headers=WRITE, json={"gallery": "products", "items": items})
        assert answer.status_code == 200, answer.text
        return answer.json()["written"]["products_v1"]

    def top(key):
        answer = client.post("/search", json={"gallery": "products", "vector": vectors[key - 700].tolist(), "k": 1})
        return answer.json()["hits"][0]

    assert add([700]) == {"added": [700], "count": 201}
    assert add([700, 701, 702]) == {"added": [701, 702], "count": 203}  # a retried item is skipped
    assert _built_files(directory) == built  # appended, not rewritten
    for key in (700, 701, 702):
        assert top(key)["id"] == key and top(key)["path"] == f"new/{key}"
    on_disk = FaissGallery.open(directory)
    assert len(on_disk) == 203 and on_disk.manifest["appended"]["count"] == 3

    # Another process folds the appended items into the files while the service serves the gallery.
    assert gallery_main(["compact", str(directory)]) == 0
    capsys.readouterr()
    assert FaissGallery.open(directory).base_count == 203
    assert top(701)["id"] == 701  # the service's open gallery still answers (the same rows)
    assert add([703, 704, 701]) == {"added": [703, 704], "count": 205}  # the next write reopens the compacted files
    for key in range(700, 705):
        assert top(key)["id"] == key
    reopened = FaissGallery.open(directory)
    assert reopened.base_count == 203 and len(reopened) == 205 and reopened.check() == []
    assert sorted(reopened.ids_of(np.arange(205))) == list(range(200)) + list(range(700, 705))
