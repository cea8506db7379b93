"""bt2 serve's API through FastAPI's TestClient on real faiss galleries and tiny real models: answers checked
against a brute-force search of the gallery's own vectors, dual-write, cutover and rollback, metrics."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bt2_hf import BT2Model
from bt2_hf.galleries import FaissGallery, open_source
from bt2_hf.serving import GalleryService, create_app

from .conftest import TOKEN, WRITE


@pytest.fixture
def service(gallery_root, serving_models):
    service = GalleryService(gallery_root, models=[f"new={serving_models['new']}", f"old={serving_models['old']}",
                                                   f"other={serving_models['other']}"])  # fmt: skip
    yield service
    service.stop_jobs()


@pytest.fixture
def client(service):
    return TestClient(create_app(service, token=TOKEN))


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def brute_force(gallery_dir, query: np.ndarray, k: int) -> list:
    """Ids of the top k by cosine over the gallery's stored vectors (ties: lower row first)."""
    vectors = np.load(gallery_dir / "vectors.npy").astype(np.float64)
    ids = np.load(gallery_dir / "ids.npy")
    query = np.asarray(query, dtype=np.float64)
    scores = vectors @ (query / np.linalg.norm(query))
    order = np.lexsort((np.arange(len(scores)), -np.round(scores, 6)))[:k]
    return ids[order].tolist()


def test_vector_image_and_model_queries_match_a_brute_force_search(client, gallery_root, serving_models):
    directory = gallery_root / "products_v1"
    query = np.random.default_rng(0).normal(size=8)
    answer = client.post("/search", json={"gallery": "products", "vector": query.tolist(), "k": 7})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [hit["id"] for hit in body["hits"]] == brute_force(directory, query, 7)
    assert body["model"]["name"] == "gallery encoder" and body["admission"] == "same_model"
    assert all(hit["path"] == f"train/{hit['id']}" for hit in body["hits"])

    # An uploaded image, embedded by the old model (named), and by the default model (new, admitted on its
    # measured entry, comparing its 8-d prefix).
    old, new = BT2Model.from_pretrained(serving_models["old"]), BT2Model.from_pretrained(serving_models["new"])
    image = png(3)
    for name, model, prefix in (("old", old, 8), (None, new, 8)):
        data = {"gallery": "products", "k": "5", **({"model": name} if name else {})}
        answer = client.post("/search", files={"image": ("q.png", image, "image/png")}, data=data)
        assert answer.status_code == 200, answer.text
        embedding = model.encode(images=[Image.open(io.BytesIO(image)).convert("RGB")]).numpy()[0][:prefix]
        assert [hit["id"] for hit in answer.json()["hits"]] == brute_force(directory, embedding, 5)
        assert answer.json()["model"]["name"] == (name or "new")
    # The same image as base64 in JSON gives the same answer.
    as_json = client.post(
        "/search", json={"gallery": "products", "k": 5, "image_base64": base64.b64encode(image).decode()}
    )
    assert as_json.json()["hits"] == answer.json()["hits"]


def test_galleries_describe_models_admission_and_aliases(client):
    body = client.get("/galleries").json()
    assert body["aliases"] == {"products": {"target": "products_v1", "standby": None}}
    (gallery,) = body["galleries"]
    assert gallery["count"] == 200 and gallery["dimension"] == 8
    assert gallery["models"]["old"]["basis"] == "same_model"
    assert gallery["models"]["new"] == {**gallery["models"]["new"], "admitted": True, "basis": "measured",
                                        "prefix_dim": 8}  # fmt: skip
    assert gallery["models"]["other"]["admitted"] is False
    assert body["history"][0]["action"] == "create"
    assert client.get("/healthz").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/galleries", "/items", "/backfill", "/cutover", "/rollback", "/healthz", "/metrics"} <= set(
        paths
    )
    assert "multipart/form-data" in paths["/search"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


# -- bad requests: a 4xx naming the problem, never a 500 ------------------------------------------------------------


def test_an_oversized_image_is_refused_with_413(client):
    big = b"\x89PNG" + bytes(50 << 20)
    answer = client.post("/search", files={"image": ("big.png", big, "image/png")}, data={"gallery": "products"})
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]


def test_an_image_of_too_many_pixels_is_refused_before_decoding(client):
    buffer = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buffer, "PNG")  # 48 MP in a few tens of kilobytes
    assert len(buffer.getvalue()) < 1 << 20
    answer = client.post("/search", files={"image": ("big.png", buffer.getvalue(), "image/png")}, data={"k": "1"})
    assert answer.status_code == 413 and "8000 × 6000 pixels" in answer.json()["detail"]


def test_a_model_is_named_by_name_or_fingerprint(client, service):
    fingerprint = service.registry.get("old").fingerprint
    for key in (fingerprint, fingerprint[:19], fingerprint.split(":")[1][:12]):
        answer = client.post("/search", json={"vector": [0.1] * 8, "model": key, "k": 2})
        assert answer.status_code == 200 and answer.json()["model"]["name"] == "old", (key, answer.text)


def test_a_wrong_content_type_is_refused_with_415(client):
    answer = client.post("/search", content=b"vector=1,2,3", headers={"content-type": "text/plain"})
    assert answer.status_code == 415 and "application/json" in answer.json()["detail"]
    answer = client.post("/items", content=b"x", headers={"content-type": "text/plain", **WRITE})
    assert answer.status_code == 415
    # Bytes that are not an image, uploaded as one.
    answer = client.post(
        "/search", files={"image": ("q.png", b"not an image", "image/png")}, data={"gallery": "products"}
    )
    assert answer.status_code == 415 and "could not be read" in answer.json()["detail"]


def test_malformed_json_is_refused_with_400(client):
    for route, headers in (("/search", {}), ("/items", WRITE)):
        answer = client.post(
            route, content=b'{"vector": [1, 2,', headers={"content-type": "application/json", **headers}
        )
        assert answer.status_code == 400 and "Malformed JSON" in answer.json()["detail"], answer.text


def test_an_unknown_model_is_refused_with_404_and_a_refused_one_with_403(client):
    answer = client.post("/search", json={"gallery": "products", "vector": [0.1] * 8, "model": "nonexistent"})
    assert answer.status_code == 404 and "Unknown model 'nonexistent'" in answer.json()["detail"]
    answer = client.post("/search", json={"gallery": "products", "vector": [0.1] * 8, "model": "other"})
    assert answer.status_code == 403 and "bt2 verify" in answer.json()["detail"]


def test_a_vector_of_the_wrong_width_is_refused_with_422(client):
    answer = client.post("/search", json={"gallery": "products", "vector": [0.1] * 5})
    assert (
        answer.status_code == 422 and "5 numbers" in answer.json()["detail"] and "embeds 8" in answer.json()["detail"]
    )
    answer = client.post("/search", json={"gallery": "products", "vector": [0.1] * 9, "model": "new"})
    assert answer.status_code == 422 and "embeds 12" in answer.json()["detail"]


@pytest.mark.parametrize("name", ["../products_v1", "..", "a/b", "/etc", ".hidden"])
def test_a_gallery_name_with_a_path_is_refused_with_400(client, name):
    answer = client.post("/search", json={"gallery": name, "vector": [0.1] * 8})
    assert answer.status_code == 400 and "Invalid gallery name" in answer.json()["detail"]
    assert client.post("/search", json={"gallery": "missing", "vector": [0.1] * 8}).status_code == 404


def test_writes_need_the_token(client, service, serving_data):
    item = {"gallery": "products", "items": [{"id": 500, "vectors": {"old": [0.1] * 8}}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = client.post("/items", json=item, headers=headers)
        assert answer.status_code == 401 and "token" in answer.json()["detail"]
    for route, body in (("/backfill", {"model": "new", "data": str(serving_data)}), ("/cutover", {"alias": "products"}),
                        ("/rollback", {"alias": "products"})):  # fmt: skip
        assert client.post(route, json=body).status_code == 401
    # Without a token at start-up, writes are off; reads closed by flag need the token.
    tokenless = TestClient(create_app(service))
    assert tokenless.post("/items", json=item, headers=WRITE).status_code == 403
    closed = TestClient(create_app(service, token=TOKEN, open_reads=False))
    assert closed.post("/search", json={"gallery": "products", "vector": [0.1] * 8}).status_code == 401
    assert closed.post("/search", json={"gallery": "products", "vector": [0.1] * 8}, headers=WRITE).status_code == 200
    assert closed.get("/healthz").status_code == 200


# -- dual-write, backfill, cutover, rollback --------------------------------------------------------------------------


def test_dual_write_during_a_backfill_then_cutover_and_rollback(client, service, gallery_root, serving_models,
                                                                serving_data):  # fmt: skip
    old, new = BT2Model.from_pretrained(serving_models["old"]), BT2Model.from_pretrained(serving_models["new"])
    started = client.post("/backfill", headers=WRITE, json={"gallery": "products", "model": "new",
                                                            "data": str(serving_data), "batch_size": 16})  # fmt: skip
    assert started.status_code == 200, started.text
    _, served = service.served("products")
    assert service.backfilling() or served.job.status == "complete"  # (no busy polling beside a running job)
    again = client.post(
        "/backfill", headers=WRITE, json={"gallery": "products", "model": "new", "data": str(serving_data)}
    )
    assert again.status_code in (200, 409)  # 409 while running; a finished one may be restarted (nothing to do)
    images = {900 + i: png(100 + i) for i in range(3)}
    items = [{"id": key, "image_base64": base64.b64encode(data).decode(), "label": 3, "path": f"new/{key}"}
             for key, data in images.items()]  # fmt: skip
    answer = client.post("/items", headers=WRITE, json={"gallery": "products", "items": items})
    assert answer.status_code == 200, answer.text
    assert answer.json()["written"]["products_v1"]["added"] == list(images)
    retry = client.post("/items", headers=WRITE, json={"gallery": "products", "items": items})
    assert retry.json()["written"]["products_v1"] == {"added": [], "count": 203}  # idempotent
    served.job.join(120)
    assert served.job.status == "complete" and not service.backfilling()

    # Every item carries the old and the new model's vector; the new ones were never re-embedded by the backfill.
    gallery = FaissGallery.open(gallery_root / "products_v1")
    state = gallery.backfill_state
    assert state["done"] == len(gallery) == 203 and gallery.backfilled_mask().all()
    ids = gallery.ids_of(np.arange(len(gallery)))
    assert len(set(ids)) == 203
    source = open_source(serving_data, split="train")
    expected_new = new.encode(images=source.items(0, 200)).numpy()
    expected_old = old.encode(images=source.items(0, 200)).numpy()
    np.testing.assert_allclose(gallery.backfill_vectors(np.arange(200)), expected_new, atol=1e-5)
    np.testing.assert_allclose(gallery.vectors_at(np.arange(200)), expected_old, atol=1e-5)
    pictures = [Image.open(io.BytesIO(images[key])).convert("RGB") for key in images]
    np.testing.assert_allclose(gallery.vectors_at(np.arange(200, 203)), old.encode(images=pictures).numpy(), atol=1e-5)
    np.testing.assert_allclose(gallery.backfill_vectors(np.arange(200, 203)), new.encode(images=pictures).numpy(),
                               atol=1e-5)  # fmt: skip

    # Each added image is its own nearest item for old-model and for new-model queries.
    for key, data in images.items():
        for model in ("old", "new"):
            hits = client.post("/search", files={"image": ("q.png", data, "image/png")},
                               data={"gallery": "products", "k": "3", "model": model}).json()["hits"]  # fmt: skip
            assert hits[0]["id"] == key and hits[0]["path"] == f"new/{key}" and hits[0]["label"] == 3

    switched = client.post("/cutover", headers=WRITE, json={"alias": "products"})
    assert switched.status_code == 200, switched.text
    target = switched.json()["to"]
    assert target.startswith("products_v1.") and switched.json()["to_encoder"] == new.config.fingerprint
    body = client.get("/galleries").json()
    assert body["aliases"]["products"] == {"target": target, "standby": "products_v1"}
    finalised = FaissGallery.open(gallery_root / target)
    assert finalised.encoder["fingerprint"] == new.config.fingerprint and len(finalised) == 203
    query = new.encode(images=pictures[:1]).numpy()[0]
    answer = client.post(
        "/search", json={"gallery": "products", "vector": query.tolist(), "model": "new", "k": 4}
    ).json()
    assert answer["directory"] == target and answer["admission"] == "same_model"
    assert [hit["id"] for hit in answer["hits"]] == brute_force(gallery_root / target, query, 4)

    # After the cutover an item goes to the new gallery and to the standby (the old one), so a rollback keeps it.
    late = {"id": 950, "image_base64": base64.b64encode(png(150)).decode()}
    written = client.post("/items", headers=WRITE, json={"gallery": "products", "items": [late]}).json()["written"]
    assert written == {"products_v1": {"added": [950], "count": 204}, target: {"added": [950], "count": 204}}
    back = client.post("/rollback", headers=WRITE, json={"alias": "products"})
    assert back.status_code == 200 and back.json()["to"] == "products_v1"
    hits = client.post("/search", files={"image": ("q.png", png(150), "image/png")},
                       data={"gallery": "products", "k": "1", "model": "old"}).json()  # fmt: skip
    assert hits["directory"] == "products_v1" and hits["hits"][0]["id"] == 950
    history = [entry["action"] for entry in json.loads((gallery_root / "aliases.json").read_text())["history"]]
    assert history == ["create", "cutover", "rollback"]
    # A second cutover reuses the standby (already the new model's gallery, kept up to date by dual-write).
    assert client.post("/cutover", headers=WRITE, json={"alias": "products"}).json()["to"] == target


def test_a_backfill_of_a_missing_data_set_or_model_is_refused(client, tmp_path, gallery_root):
    body = {"gallery": "products", "model": "new", "data": str(tmp_path / "nowhere")}
    answer = client.post("/backfill", headers=WRITE, json=body)
    assert answer.status_code == 400 and "does not exist" in answer.json()["detail"]
    answer = client.post("/backfill", headers=WRITE, json=dict(body, model="missing"))
    assert answer.status_code == 404
    with pytest.raises(ValueError, match="is a gallery: give the folder"):
        GalleryService(gallery_root / "products_v1")


def test_cutover_before_the_backfill_is_complete_is_refused(client):
    answer = client.post("/cutover", headers=WRITE, json={"alias": "products"})
    assert answer.status_code == 400 and "finish the backfill" in answer.json()["detail"]
    assert client.post("/rollback", headers=WRITE, json={"alias": "products"}).status_code == 400


def test_metrics_are_prometheus_text(client):
    client.post("/search", json={"gallery": "products", "vector": [0.1] * 8})
    client.post("/search", json={"gallery": "products", "vector": [0.1] * 3})
    text = client.get("/metrics").text
    assert 'bt2_http_requests_total{method="POST",route="/search",status="200"} 1' in text
    assert 'bt2_http_requests_total{method="POST",route="/search",status="422"} 1' in text
    assert 'bt2_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/search"} 2' in text
    assert 'bt2_gallery_items{gallery="products_v1"} 200' in text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families))  # each family once, its samples together


def test_latency_histogram_buckets_are_cumulative_with_each_bound_inclusive():
    from bt2_hf.serving.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.0004, 0.001, 0.003, 0.2, 0.25, 20.0):  # 0.001 and 0.25 sit exactly on a bound
        metrics.observe("/search", "POST", 200, seconds)
    text = metrics.render()
    expected = {"0.001": 2, "0.0025": 2, "0.005": 3, "0.01": 3, "0.025": 3, "0.05": 3, "0.1": 3, "0.25": 5, "0.5": 5,
                "1.0": 5, "2.5": 5, "5.0": 5, "10.0": 5, "+Inf": 6}  # fmt: skip
    for bound, count in expected.items():
        assert (
            f'bt2_http_request_duration_seconds_bucket{{le="{bound}",method="POST",route="/search"}} {count}' in text
        )
    assert 'bt2_http_request_duration_seconds_count{method="POST",route="/search"} 6' in text
    assert 'bt2_http_request_duration_seconds_sum{method="POST",route="/search"} 20.454400' in text


def test_a_dual_written_vector_of_huge_numbers_is_stored_as_its_direction(client):
    """Squared in float32, 1e30 overflows: the item was once stored as a zero vector. Stored as its unit vector, the
    same direction's query finds it first, at cosine 1."""
    direction = np.random.default_rng(5).normal(size=8)
    direction /= np.linalg.norm(direction)
    item = {"id": 777, "vectors": {"old": (direction * 1e30).tolist()}}
    answer = client.post("/items", headers=WRITE, json={"gallery": "products", "items": [item]})
    assert answer.status_code == 200, answer.text
    hits = client.post("/search", json={"gallery": "products", "model": "old", "k": 1,
                                        "vector": direction.tolist()}).json()["hits"]  # fmt: skip
    assert hits[0]["id"] == 777 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
