"""Searches over real HTTP (uvicorn on a loopback port) while a backfill commits batches and while cutovers and
rollbacks switch the alias: every answer is a 200 with k distinct ids of the gallery."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import numpy as np
import uvicorn

from bt2_hf.serving import create_app

from .conftest import TOKEN, WRITE, backfill_part, free_port

K = 10


@contextlib.contextmanager
def served(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def hammer(url, stop: threading.Event, answers: list, errors: list, seed: int, named: bool = False):
    """Search until told to stop, with old-width vectors (the gallery encoder's, or the old model's when ``named``:
    across a cutover the served encoder changes) and new-model vectors."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            new = rng.random() < 0.5
            body = {"gallery": "products", "k": K, "vector": rng.normal(size=12 if new else 8).tolist()}
            if new or named:
                body["model"] = "new" if new else "old"
            try:
                answer = client.post("/search", json=body)
            except httpx.HTTPError as error:
                errors.append(repr(error))
                continue
            answers.append((answer.status_code, answer.json()))


def check(answers, errors, gallery_ids: set):
    assert not errors, errors[:3]
    assert answers
    for status, body in answers:
        assert status == 200, body
        ids = [hit["id"] for hit in body["hits"]]
        assert len(ids) == K and len(set(ids)) == K, ids
        assert set(ids) <= gallery_ids, set(ids) - gallery_ids


def test_searches_during_a_backfill_see_every_item_once(service, serving_data):
    answers, errors, stop = [], [], threading.Event()
    with served(create_app(service, token=TOKEN)) as url:
        threads = [threading.Thread(target=hammer, args=(url, stop, answers, errors, seed)) for seed in range(4)]
        for thread in threads:
            thread.start()
        started = httpx.post(url + "/backfill", headers=WRITE, json={"gallery": "products", "model": "new",
                                                                     "data": str(serving_data), "batch_size": 8,
                                                                     "pause": 0.05})  # fmt: skip
        assert started.status_code == 200, started.text
        _, gallery = service.served("products")
        gallery.job.join(120)
        stop.set()
        for thread in threads:
            thread.join(30)
        progress = httpx.get(url + "/galleries").json()["galleries"][0]["backfill"]
        metrics = httpx.get(url + "/metrics").text
    assert gallery.job.status == "complete" and progress["done"] == progress["count"] == 200
    assert 'bt2_backfill_fraction{gallery="products_v1"} 1' in metrics
    check(answers, errors, set(range(200)))
    # The searches really ran across the backfill: answers saw several partial states, with mixed rankings.
    partial = {
        body["backfill"]["done"] for _, body in answers if body["backfill"] and 0 < body["backfill"]["done"] < 200
    }
    assert len(partial) >= 3, sorted(partial)
    assert any(body["mixed"] for _, body in answers if body["backfill"] and body["backfill"]["done"] < 200)


def test_searches_in_flight_during_cutover_and_rollback_never_fail(service, serving_data):
    service.start_backfill("products", "new", str(serving_data), batch_size=64)
    _, gallery = service.served("products")
    gallery.job.join(120)
    answers, errors, stop = [], [], threading.Event()
    with served(create_app(service, token=TOKEN)) as url:
        threads = [threading.Thread(target=hammer, args=(url, stop, answers, errors, seed, True)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for _ in range(4):
            for route in ("/cutover", "/rollback"):
                time.sleep(0.15)
                switched = httpx.post(url + route, headers=WRITE, json={"alias": "products"}, timeout=120)
                assert switched.status_code == 200, switched.text
        time.sleep(0.15)
        stop.set()
        for thread in threads:
            thread.join(30)
    check(answers, errors, set(range(200)))
    directories = {body["directory"] for _, body in answers}
    assert len(directories) == 2  # answers came from both sides of the switches
    # After the cutover, old-model queries search the new gallery on the prefix its encoder was measured on.
    assert {body["admission"] for _, body in answers if body["model"]["name"] == "old"} == {
        "same_model",
        "gallery_encoder_measured",
    }


def test_a_batch_committed_in_the_middle_of_a_search_waits_for_it(service, serving_models, serving_data):
    """Fault injection at the worst moment: a backfill batch commits between the search's encoder-space ranking and
    its search of the re-embedded items. Under the gallery's lock the commit waits for the search, so the answer
    is the state before the batch (no item twice); without it the two reads disagree."""
    from bt2_hf.serving.service import CommitsUnderWriteLock

    gallery, store, _, rows, vectors = backfill_part(service, serving_models["new"], serving_data, 0.5,
                                                      slice(100, 200))  # fmt: skip
    search_backfilled, committed = store.search_backfilled, []

    def commit_meanwhile(queries, depth):
        writer = threading.Thread(target=lambda: committed.append(
            CommitsUnderWriteLock(store, gallery.rw).write_backfill_batch(rows, vectors, 200)))  # fmt: skip
        writer.start()
        writer.join(0.5)  # under the lock it cannot finish while this search runs
        return search_backfilled(queries, depth)

    store.search_backfilled = commit_meanwhile
    rng = np.random.default_rng(0)
    answer = service.search("products", k=60, vector=rng.normal(size=12).tolist(), model="new")
    del store.search_backfilled
    ids = [hit["id"] for hit in answer["hits"]]
    assert len(ids) == 60 and len(set(ids)) == 60
    assert answer["backfill"]["done"] == 100  # the answer is the state before the batch
    deadline = time.monotonic() + 10
    while not committed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.backfill_state["done"] == 200  # and the batch committed right after it


def test_searches_during_dual_writes_and_a_backfill_never_fail(service, serving_data):
    """Each dual-write swaps the gallery's directory for a rewritten one while searches run on it."""
    answers, errors, stop = [], [], threading.Event()
    with served(create_app(service, token=TOKEN)) as url:
        started = httpx.post(url + "/backfill", headers=WRITE, json={"gallery": "products", "model": "new",
                                                                     "data": str(serving_data), "batch_size": 16,
                                                                     "pause": 0.05})  # fmt: skip
        assert started.status_code == 200, started.text
        threads = [threading.Thread(target=hammer, args=(url, stop, answers, errors, seed)) for seed in range(3)]
        for thread in threads:
            thread.start()
        rng = np.random.default_rng(5)
        for key in range(600, 606):
            item = {"id": key, "vectors": {"old": rng.normal(size=8).tolist(), "new": rng.normal(size=12).tolist()}}
            written = httpx.post(url + "/items", headers=WRITE, json={"items": [item]}, timeout=60)
            assert written.status_code == 200, written.text
        stop.set()
        for thread in threads:
            thread.join(30)
        _, gallery = service.served("products")
        gallery.job.join(120)
    check(answers, errors, set(range(200)) | set(range(600, 606)))
    assert len(gallery.store) == 206 and gallery.store.backfill_state["done"] == 206
    assert sorted(gallery.store.ids_of(np.arange(206))) == list(range(200)) + list(range(600, 606))
