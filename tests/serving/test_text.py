"""Text queries and text items through bt2 serve, on a gallery of texts embedded by a tiny text tower."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from bt2_hf.serving import GalleryService, create_app

from .conftest import TOKEN, WRITE, text_gallery
from .test_api import png


def test_text_queries_and_text_items(tmp_path):
    texts = [f"a photo of item {i} in {colour}" for i, colour in enumerate(["red", "blue", "green", "black"] * 5)]
    tower, root = text_gallery(tmp_path, texts)
    client = TestClient(create_app(GalleryService(root, models=[f"tower={tmp_path / 'tower'}"]), token=TOKEN))

    answer = client.post("/search", json={"text": "a photo of item 3 in black", "k": 4})  # the only gallery
    assert answer.status_code == 200, answer.text
    query = tower.encode(texts=["a photo of item 3 in black"]).numpy()[0]
    vectors = np.load(root / "captions" / "vectors.npy")
    expected = [f"t{i}" for i in np.argsort(-(vectors @ query), kind="stable")[:4]]
    assert [hit["id"] for hit in answer.json()["hits"]] == expected
    assert answer.json()["model"]["name"] == "tower"
    # An image for a text model is refused, naming the mismatch.
    refused = client.post("/search", files={"image": ("q.png", png(0), "image/png")}, data={"model": "tower"})
    assert refused.status_code == 422 and "embeds texts" in refused.json()["detail"]

    added = client.post("/items", headers=WRITE, json={"items": [{"id": "t-new", "text": "a zebra in the snow",
                                                                  "path": "a zebra in the snow"}]})  # fmt: skip
    assert added.status_code == 200 and added.json()["written"]["captions"]["added"] == ["t-new"]
    hits = client.post("/search", json={"text": "a zebra in the snow", "k": 1}).json()["hits"]
    assert hits[0]["id"] == "t-new" and hits[0]["path"] == "a zebra in the snow"
