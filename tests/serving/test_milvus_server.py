"""bt2 serve over galleries on a Milvus server reached by URI (milvus-lite's gRPC server, the ``milvus_server``
fixture): searches checked against a brute-force search of the stored vectors, refusals, a backfill run by the
service, cutover and rollback through Milvus aliases; and the real ``bt2 serve URI`` process seeing a cutover made
by another process."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from bt2_hf import BT2Model
from bt2_hf.galleries import open_source
from bt2_hf.galleries.aliases import MilvusAliases
from bt2_hf.galleries.embed import model_identity

from .conftest import TOKEN, WRITE, ServerProcess

pytest.importorskip("pymilvus")


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Ids (= rows here) of the top k by cosine (ties: lower row first)."""
    scores = unit(vectors) @ unit(query)
    return np.lexsort((np.arange(len(scores)), -np.round(scores, 6)))[:k].tolist()


def old_gallery_on_server(uri: str, collection: str, alias: str, serving_models, serving_data) -> np.ndarray:
    """The old model's gallery of the 200 training images (ids 0..199) as ``collection``, named by ``alias``;
    returns the stored vectors."""
    from bt2_hf.galleries.milvus_store import MilvusGallery

    old = BT2Model.from_pretrained(serving_models["old"])
    source = open_source(serving_data, split="train")
    vectors = old.encode(images=source.items(0, len(source))).numpy()
    MilvusGallery.build(uri, collection, vectors, list(range(len(source))), encoder=model_identity(old))
    MilvusAliases(uri).create_alias(alias, collection)
    return vectors


def test_service_on_a_milvus_uri_searches_backfills_cuts_over_and_rolls_back(
    milvus_server, serving_models, serving_data
):
    from fastapi.testclient import TestClient

    from bt2_hf.serving import GalleryService, create_app

    uri = milvus_server.uri
    old_vectors = old_gallery_on_server(uri, "shop_v1", "shop", serving_models, serving_data)
    service = GalleryService(uri, models=[f"new={serving_models['new']}", f"old={serving_models['old']}",
                                          f"other={serving_models['other']}"])  # fmt: skip
    client = TestClient(create_app(service, token=TOKEN))
    try:
        query = np.random.default_rng(0).normal(size=8)
        answer = client.post("/search", json={"gallery": "shop", "vector": query.tolist(), "k": 7})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [hit["id"] for hit in body["hits"]] == brute_force(old_vectors, query, 7)
        assert body["alias"] == "shop" and body["directory"] == "shop_v1" and body["admission"] == "same_model"

        # A new-model image query searches the old vectors with its measured 8-d prefix, re-normalised.
        new = BT2Model.from_pretrained(serving_models["new"])
        image = png(7)
        prefix = new.encode(images=[Image.open(io.BytesIO(image)).convert("RGB")]).numpy()[0][:8]
        answer = client.post("/search", files={"image": ("q.png", image, "image/png")},
                             data={"gallery": "shop", "k": "5", "model": "new"}).json()  # fmt: skip
        assert answer["prefix_dim"] == 8 and answer["admission"] == "measured"
        assert [hit["id"] for hit in answer["hits"]] == brute_force(old_vectors, prefix, 5)
        refused = client.post("/search", files={"image": ("q.png", image, "image/png")},
                              data={"gallery": "shop", "model": "other"})  # fmt: skip
        assert refused.status_code == 403 and "not admitted" in refused.json()["detail"]
        missing = client.post("/search", json={"gallery": "nowhere", "vector": query.tolist()})
        assert missing.status_code == 404 and "shop" in missing.json()["detail"]

        described = client.get("/galleries").json()
        assert described["aliases"]["shop"] == {"target": "shop_v1", "standby": None}
        assert "shop_v1" in [gallery["name"] for gallery in described["galleries"]]
        assert client.get("/healthz").json()["status"] == "ok"
        items = client.post("/items", headers=WRITE, json={"gallery": "shop", "items": [{"id": 900, "vectors": {}}]})
        assert items.status_code == 501 and "Milvus" in items.json()["detail"]

        # A backfill run by the service, on the server's collection, then the cutover it makes possible.
        started = client.post("/backfill", headers=WRITE, json={"gallery": "shop", "model": "new",
                                                                "data": str(serving_data), "batch_size": 50})  # fmt: skip
        assert started.status_code == 200, started.text
        _, served = service.served("shop")
        served.job.join(120)
        assert served.job.status == "complete", served.job.error
        progress = [g for g in client.get("/galleries").json()["galleries"] if g["name"] == "shop_v1"][0]["backfill"]
        assert progress["done"] == progress["count"] == 200

        switched = client.post("/cutover", headers=WRITE, json={"alias": "shop"})
        assert switched.status_code == 200, switched.text
        target = switched.json()["to"]
        assert target.startswith("shop_v1__") and switched.json()["to_encoder"] == new.config.fingerprint
        source = open_source(serving_data, split="train")
        new_vectors = new.encode(images=source.items(0, 200)).numpy()
        query = new_vectors[3] + 0.1 * np.random.default_rng(1).normal(size=12)
        answer = client.post("/search", json={"gallery": "shop", "vector": query.tolist(), "model": "new", "k": 4})
        body = answer.json()
        assert body["directory"] == target and body["encoder"] == new.config.fingerprint
        assert [hit["id"] for hit in body["hits"]] == brute_force(new_vectors, query, 4)

        back = client.post("/rollback", headers=WRITE, json={"alias": "shop"})
        assert back.status_code == 200 and back.json()["to"] == "shop_v1"
        answer = client.post("/search", json={"gallery": "shop", "vector": old_vectors[5].tolist(), "k": 1}).json()
        assert answer["directory"] == "shop_v1" and answer["hits"][0]["id"] == 5
        assert [entry["action"] for entry in client.get("/galleries").json()["history"] if entry["alias"] == "shop"] \
            == ["create", "cutover", "rollback"]  # fmt: skip
    finally:
        service.stop_jobs()


@pytest.mark.slow
def test_bt2_serve_process_on_a_milvus_uri_sees_a_cutover_made_by_another_process(
    milvus_server, serving_models, serving_data, tmp_path
):
    from bt2_hf.galleries import backfill
    from bt2_hf.galleries.milvus_store import MilvusGallery

    uri = milvus_server.uri
    old_vectors = old_gallery_on_server(uri, "depot_v1", "depot", serving_models, serving_data)
    server = ServerProcess(uri, "--model", f"new={serving_models['new']}", log_dir=tmp_path)
    try:
        query = np.random.default_rng(2).normal(size=8)
        answer = httpx.post(server.url + "/search", json={"gallery": "depot", "vector": query.tolist(), "k": 6},
                            timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert [hit["id"] for hit in answer.json()["hits"]] == brute_force(old_vectors, query, 6)
        assert answer.json()["directory"] == "depot_v1"

        # This process backfills the served collection and cuts the alias over while bt2 serve keeps running: both
        # talk to the same server (a milvus-lite file would be held by one process).
        new = BT2Model.from_pretrained(serving_models["new"])
        backfill(MilvusGallery.open(uri, "depot_v1"), new, str(serving_data), split="train", fraction=1.0,
                 batch_size=100, show_progress=False)  # fmt: skip
        target = MilvusAliases(uri).cutover("depot")["to"]
        new_vectors = new.encode(images=open_source(serving_data, split="train").items(0, 200)).numpy()
        query = new_vectors[9]
        deadline, body = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            body = httpx.post(server.url + "/search", json={"gallery": "depot", "vector": query.tolist(),
                                                           "model": "new", "k": 3}, timeout=30).json()  # fmt: skip
            if body.get("directory") == target:
                break
            time.sleep(0.2)
        assert body["directory"] == target and body["encoder"] == new.config.fingerprint
        assert [hit["id"] for hit in body["hits"]] == brute_force(new_vectors, query, 3)
        assert httpx.get(server.url + "/healthz", timeout=10).json()["status"] == "ok"
    finally:
        server.stop()
    assert server.process.returncode is not None
