"""`POST /items` appends to the served gallery's files (its built files stay as they are) and the next search finds
the items; a compaction by another process (`bt2 gallery compact`) while it serves is picked up by the next write."""

from __future__ import annotations

import threading

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


def test_a_dual_write_does_not_wait_for_a_backfill_chunk_being_embedded(service, serving_data):
    """The job embeds a chunk without the gallery's mutation lock: a write lands meanwhile, and the chunk's commit
    counts it (every item once, the added ones never embedded by the backfill)."""
    from bt2_hf.serving.service import BackfillJob

    entered, release, embedded = threading.Event(), threading.Event(), []

    class HeldJob(BackfillJob):
        def _embedder(self):
            embed = super()._embedder()

            def held(rows):
                embedded.extend(np.asarray(rows).tolist())
                if not entered.is_set():  # the first chunk waits, mid-embedding, until the test lets it go
                    entered.set()
                    assert release.wait(60)
                return embed(rows)

            return held

    _, served = service.served("products")
    loaded = service.registry.get("new")
    spec = {"model": loaded.path, "data": str(serving_data), "split": None, "column": None, "id_column": None,
            "order": "random", "seed": 0, "batch_size": 50, "allow_unmeasured": False, "pause": 0.0}  # fmt: skip
    service.start_job(served, loaded, spec, job_class=HeldJob)
    assert entered.wait(60)
    rng = np.random.default_rng(3)
    new_vectors = _unit(rng.normal(size=(3, 12)))
    items = [{"id": 800 + i, "vectors": {"old": _unit(rng.normal(size=(1, 8)))[0].tolist(),
                                         "new": new_vectors[i].tolist()}} for i in range(3)]  # fmt: skip
    answer = {}
    writer = threading.Thread(target=lambda: answer.update(service.add_items("products", items)))
    writer.start()
    writer.join(30)
    finished_while_held = not writer.is_alive()
    release.set()
    writer.join(30)
    assert finished_while_held and answer["written"]["products_v1"] == {"added": [800, 801, 802], "count": 203}
    served.job.join(120)
    assert served.job.status == "complete", served.job.error
    store = served.store
    assert store.backfill_state["done"] == len(store) == 203 and store.backfilled_mask().all()
    assert sorted(embedded) == list(range(200))  # each built item embedded once, the added ones never
    np.testing.assert_allclose(store.backfill_vectors(np.arange(200, 203)), new_vectors, atol=1e-6)
    reopened = FaissGallery.open(store.directory)
    assert reopened.backfill_state["done"] == 203 and reopened.backfilled_mask().all()
    assert sorted(reopened.ids_of(np.arange(203))) == list(range(200)) + [800, 801, 802]
