"""kill -9 of a serving process in the middle of its backfill: the restarted service resumes the backfill where the
last batch committed, and every item written through the API before the kill is there, once."""

from __future__ import annotations

import base64
import io
import json
import signal
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from bt2_hf import BT2Model
from bt2_hf.galleries import FaissGallery, open_source

from .conftest import WRITE, ServerProcess


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def progress(url):
    return httpx.get(url + "/galleries", timeout=30).json()["galleries"][0]["backfill"]


@pytest.mark.slow
def test_kill_9_during_a_backfill_then_restart_resumes_and_keeps_written_items(gallery_root, serving_models,
                                                                              serving_data):  # fmt: skip
    models = ["--model", f"new={serving_models['new']}", "--model", f"old={serving_models['old']}"]
    server = ServerProcess(gallery_root, *models, "--backfill_with", "new", "--backfill_data", serving_data,
                           "--backfill_batch_size", "4", "--backfill_pause", "0.05")  # fmt: skip
    written = {}
    try:
        deadline = time.monotonic() + 60
        while progress(server.url)["done"] < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        for key in (700, 701, 702):
            written[key] = png(key)
            item = {"id": key, "image_base64": base64.b64encode(written[key]).decode(), "path": f"upload/{key}"}
            answer = httpx.post(server.url + "/items", headers=WRITE, json={"items": [item]}, timeout=60)
            assert answer.status_code == 200 and answer.json()["written"]["products_v1"]["added"] == [key], answer.text
        before = progress(server.url)
        assert 0 < before["done"] < before["count"]  # killed in the middle
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
    finally:
        server.stop()

    killed = FaissGallery.open(gallery_root / "products_v1")  # whole after the kill: hashes and sizes check out
    assert killed.backfill_state["done"] < len(killed) == 203
    jobs = json.loads((gallery_root / ".bt2-serve" / "backfill_jobs.json").read_text())
    assert list(jobs) == ["products_v1"]

    # Restarted without any backfill flag: the recorded job resumes by itself.
    server = ServerProcess(gallery_root, *models)
    try:
        assert progress(server.url)["status"] in ("running", "complete")
        deadline = time.monotonic() + 120
        while progress(server.url)["status"] != "complete" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert progress(server.url) == {**progress(server.url), "status": "complete", "done": 203, "count": 203}
        for key, data in written.items():
            hits = httpx.post(server.url + "/search", files={"image": ("q.png", data, "image/png")},
                              data={"k": "3", "model": "old"}, timeout=30).json()["hits"]  # fmt: skip
            assert hits[0]["id"] == key and hits[0]["path"] == f"upload/{key}"
    finally:
        server.stop()

    gallery = FaissGallery.open(gallery_root / "products_v1")
    ids = gallery.ids_of(np.arange(len(gallery)))
    assert sorted(ids) == list(range(200)) + [700, 701, 702]
    assert gallery.backfilled_mask().all() and sorted(gallery.backfill_order().tolist()) == list(range(203))
    # Every row carries the new model's embedding of its own item, whatever batch or process wrote it.
    new = BT2Model.from_pretrained(serving_models["new"])
    expected = new.encode(images=open_source(serving_data, split="train").items(0, 200)).numpy()
    np.testing.assert_allclose(gallery.backfill_vectors(np.arange(200)), expected, atol=1e-5)
    uploads = [Image.open(io.BytesIO(written[key])).convert("RGB") for key in (700, 701, 702)]
    np.testing.assert_allclose(gallery.backfill_vectors(np.arange(200, 203)), new.encode(images=uploads).numpy(),
                               atol=1e-5)  # fmt: skip
    assert not json.loads((gallery_root / ".bt2-serve" / "backfill_jobs.json").read_text())
