"""The search hot path of bt2 serve: JSON searches answered by the plain ASGI handler (on the event loop or in a
worker thread), faiss's threads per searching thread, and text queries micro-batched per model. Each answer is
checked against the one-at-a-time call of the same service, and refusals keep their status and message."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bt2_hf.galleries import FaissGallery
from bt2_hf.serving import GalleryService, create_app
from bt2_hf.serving.batching import TextBatcher
from tests.galleries.test_text import text_tower

from .conftest import TOKEN, ServerProcess, backfill_part, text_gallery
from .test_api import brute_force

QUERIES = np.random.default_rng(3).normal(size=(12, 8)).round(4).tolist()


def test_vector_answers_are_the_services_own_on_the_loop_and_in_threads(service, gallery_root):
    inline = TestClient(create_app(service, token=TOKEN))
    threaded = TestClient(create_app(service, token=TOKEN, inline_vectors=False))
    for vector in QUERIES:
        body = {"gallery": "products", "k": 5, "vector": vector}
        expected = service.search("products", k=5, vector=vector)
        for client in (inline, threaded):
            answer = client.post("/search", json=body)
            assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
            assert answer.json() == json.loads(json.dumps(expected))
        assert [hit["id"] for hit in expected["hits"]] == brute_force(gallery_root / "products_v1", vector, 5)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"gallery": "products", "vector": [0.1, 0.2', 400, "Malformed JSON"),
        (b"[1, 2, 3]", 422, "valid dictionary"),
        (b'{"gallery": "products", "vector": [0.1, 0.2], "colour": "red"}', 422, "colour: Extra inputs"),
        (b'{"gallery": "products", "vector": ["a", 0.2]}', 422, "vector.0"),
        (b'{"gallery": "products", "k": 0, "vector": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}', 422, "k must be"),
        (b'{"gallery": "products", "vector": [0.1, 0.1, 0.1]}', 422, "3 numbers"),
        (b'{"gallery": "products", "vector": [0, 0, 0, 0, 0, 0, 0, 0]}', 422, "non-zero"),
        (b'{"gallery": "products", "vector": [1e39, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}', 422, "finite"),  # > float32
        (b'{"gallery": "products", "image_base64": "not base64!"}', 422, "not valid base64"),
        (b'{"gallery": "products"}', 422, "exactly one query"),
        (b'{"gallery": "nowhere", "vector": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}', 404, "nowhere"),
        (b'{"gallery": "../x", "vector": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}', 400, "Invalid gallery name"),
    ],
)
def test_refusals_keep_their_status_and_message(service, body, status, words):
    for inline_vectors in (True, False):
        client = TestClient(create_app(service, token=TOKEN, inline_vectors=inline_vectors))
        answer = client.post("/search", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == status, answer.text
        assert words in json.dumps(answer.json()["detail"]), answer.text


@pytest.mark.parametrize("size", [1e30, 1e-25])
def test_a_vector_of_extreme_finite_numbers_is_searched(service, size):
    """Squared, 1e30 overflows float32 and 1e-25 underflows it to 0, but neither the float64 check: each is a valid
    (if odd) query direction, and its answer is the unit vector's."""
    client = TestClient(create_app(service, token=TOKEN))
    answer = client.post("/search", json={"gallery": "products", "vector": [size] + [0.0] * 7, "k": 3})
    assert answer.status_code == 200, answer.text
    expected = service.search("products", k=3, vector=[1.0] + [0.0] * 7)
    assert answer.json()["hits"] == expected["hits"]  # ids and cosines


@pytest.mark.parametrize(
    "payload",
    [
        {"gallery": "products", "k": 5, "vector": [0.5, -1.25, 3.0]},
        {"vector": [0.5, 2.0]},  # defaults
        {"gallery": None, "model": "new", "vector": [1.0]},
        {"gallery": "products", "vector": [1, 2.5]},  # an int in the vector
        {"gallery": "products", "k": 5.0, "vector": [1.0]},  # a float k, which the model takes
        {"gallery": "products", "k": "5", "vector": ["1.5"]},  # strings pydantic converts (lax mode)
    ],
)
def test_the_json_search_arguments_are_the_request_models(payload):
    """The hot path's arguments of a JSON body are the ones the request model gives, lax-mode conversions
    included."""
    from bt2_hf.serving.json_search import SearchRequest, json_search_arguments

    model = SearchRequest.model_validate(payload)
    expected = {"gallery": model.gallery, "k": model.k, "text": None, "image": None, "vector": model.vector,
                "model": model.model}  # fmt: skip
    arguments = json_search_arguments(json.dumps(payload).encode())
    assert arguments == expected
    assert [type(value) for value in arguments["vector"]] == [float] * len(payload["vector"]) or any(
        type(value) is int for value in payload["vector"])  # fmt: skip


def test_closed_reads_need_the_token_on_the_hot_path(service):
    client = TestClient(create_app(service, token=TOKEN, open_reads=False))
    body = {"gallery": "products", "vector": QUERIES[0]}
    assert client.post("/search", json=body).status_code == 401
    assert client.post("/search", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.post("/search", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["hits"]
    # the route's metrics still count every request, refused or answered
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'bt2_http_requests_total{method="POST",route="/search",status="401"} 2' in metrics
    assert 'bt2_http_requests_total{method="POST",route="/search",status="200"} 1' in metrics


def test_concurrent_searches_over_a_real_server_on_one_keep_alive_connection_each(gallery_root, serving_models):
    """Raw HTTP/1.1 on sockets (as the benchmark's client sends it) to `bt2 serve` under uvicorn."""
    server = ServerProcess(gallery_root, "--model", f"new={serving_models['new']}")
    answers, errors = {}, []

    def client(index: int):
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
                stream = connection.makefile("rb")
                for position in range(index, len(QUERIES), 4):
                    payload = json.dumps({"gallery": "products", "k": 4, "vector": QUERIES[position]}).encode()
                    connection.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))  # fmt: skip
                    status = int(stream.readline().split()[1])
                    length = 0
                    while (line := stream.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    answers[position] = (status, json.loads(stream.read(length)))
        except Exception as error:  # reported by the test thread
            errors.append(error)

    try:
        threads = [threading.Thread(target=client, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
    assert not errors and sorted(answers) == list(range(len(QUERIES)))
    for position, (status, answer) in answers.items():
        assert status == 200
        assert [hit["id"] for hit in answer["hits"]] == brute_force(gallery_root / "products_v1",
                                                                    QUERIES[position], 4)  # fmt: skip


def test_searches_run_faiss_on_one_thread_in_each_searching_thread(service):
    from bt2_hf.retrieval.knn import import_faiss

    faiss = import_faiss()
    seen = []

    def search():
        faiss.omp_set_num_threads(2)  # as a fresh thread may start: faiss's default, every core
        service.search("products", k=3, vector=QUERIES[0])
        seen.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=search)
    thread.start()
    thread.join()
    assert seen == [1]
    with pytest.raises(ValueError, match="search_threads"):
        GalleryService(service.root.root, search_threads=0)


class _HeldFirstPass:
    """A real text model whose first forward pass waits until ``expected`` more texts wait for the batcher, so the
    test knows which texts share a pass (the batcher is what is tested; the model's arithmetic is untouched)."""

    def __init__(self, model, batcher_of, expected: int, refuse: str | None = None):
        self.model, self.batcher_of, self.expected, self.refuse = model, batcher_of, expected, refuse
        self.passes: list[list[str]] = []
        self.holding = threading.Event()

    def encode(self, texts, batch_size):
        import time

        if not self.holding.is_set():
            self.holding.set()
            deadline = time.monotonic() + 30
            while len(self.batcher_of()._waiting) < self.expected and time.monotonic() < deadline:
                time.sleep(0.005)
        self.passes.append(list(texts))
        if self.refuse in texts:
            raise ValueError(f"cannot embed {self.refuse!r}")
        return self.model.encode(texts=texts, batch_size=batch_size)


def test_concurrent_texts_share_one_pass_and_get_their_one_at_a_time_embeddings(tmp_path):
    tower = text_tower(0, 8)
    texts = [f"a {colour} shoe number {i} for long walks in the rain" if i % 2 else f"item {i}"
             for i, colour in enumerate(["red", "blue", "green", "black", "white", "grey", "pink", "gold"])]  # fmt: skip
    batcher = None
    model = _HeldFirstPass(tower, lambda: batcher, expected=len(texts) - 1, refuse="item 6")
    batcher = TextBatcher(model, window=0.05)
    results, errors = {}, {}

    def ask(text):
        try:
            results[text] = batcher.encode(text)
        except ValueError as error:
            errors[text] = str(error)

    first = threading.Thread(target=ask, args=(texts[0],))
    first.start()
    assert model.holding.wait(30)  # the first text's pass has begun before the others arrive
    others = [threading.Thread(target=ask, args=(text,)) for text in texts[1:]]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(60)
    batcher.stop()
    # one pass for the first text, one for the seven others; that pass refused "item 6", so each was redone alone
    assert model.passes[0] == [texts[0]] and sorted(model.passes[1]) == sorted(texts[1:])
    assert errors == {"item 6": "cannot embed 'item 6'"}
    for text in texts:
        if text != "item 6":
            alone = tower.encode(texts=[text]).numpy()
            assert results[text].shape == alone.shape == (1, tower.config.embedding_dim)
            np.testing.assert_allclose(results[text], alone, atol=1e-5)
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.encode("too late")


def test_micro_batched_text_searches_answer_as_one_at_a_time(tmp_path):
    corpus = [f"a photo of item {i} in {colour}" for i, colour in enumerate(["red", "blue", "green", "black"] * 8)]
    _, root = text_gallery(tmp_path, corpus)
    alone = GalleryService(root, models=[f"tower={tmp_path / 'tower'}"], text_batch_window=None)
    batched = GalleryService(root, models=[f"tower={tmp_path / 'tower'}"], text_batch_window=0.02)
    queries = [f"item {i} in {colour}, seen from afar" for i, colour in enumerate(["black", "red", "gold"] * 4)]
    expected = {query: alone.search(k=5, text=query)["hits"] for query in queries}
    answers = {}
    barrier = threading.Barrier(len(queries))

    def ask(query):
        barrier.wait()
        answers[query] = batched.search(k=5, text=query)["hits"]

    threads = [threading.Thread(target=ask, args=(query,)) for query in queries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    batcher = batched._batchers["tower"]
    assert sum(batcher.batch_sizes) == len(queries)  # every text went through the batcher (sharing: the test above)
    for query in queries:
        assert [hit["id"] for hit in answers[query]] == [hit["id"] for hit in expected[query]]
        np.testing.assert_allclose([hit["score"] for hit in answers[query]],
                                   [hit["score"] for hit in expected[query]], atol=1e-5)  # fmt: skip
    batched.stop_jobs()
    with pytest.raises(ValueError, match="text_batch_window"):
        GalleryService(root, text_batch_window=5)


def test_a_backfill_commit_holds_searches_back_only_for_the_commit(service, serving_models, serving_data):
    """While a search holds the gallery's read side, the next batch's rows are written, its search over the
    re-embedded items is built and its manifest written; only the switch of the state in memory waits. The
    prepared search answers as one built from the files."""
    import time

    from bt2_hf.galleries import open_source
    from bt2_hf.serving.service import CommitsUnderWriteLock

    gallery, store, new, rows, vectors = backfill_part(service, serving_models["new"], serving_data, 0.25,
                                                        slice(50, 120))  # fmt: skip
    directory = service.root.root / gallery.name
    table = directory / "backfill" / "vectors.npy"
    with gallery.rw.read():  # a search in flight
        writer = threading.Thread(target=CommitsUnderWriteLock(store, gallery.rw).write_backfill_batch,
                                  args=(rows, vectors, 120))  # fmt: skip
        writer.start()
        deadline = time.monotonic() + 30
        while not np.allclose(np.load(table)[rows], vectors, atol=1e-5) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert np.allclose(np.load(table)[rows], vectors, atol=1e-5)  # written while the search runs
        on_disk = directory / "manifest.json"
        while json.loads(on_disk.read_text())["backfill"]["done"] != 120 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads(on_disk.read_text())["backfill"]["done"] == 120  # the commit point on disk, meanwhile
        assert store.backfill_state["done"] == 50 and writer.is_alive()  # the switch in memory waits for the search
    writer.join(30)
    assert store.backfill_state["done"] == 120
    queries = new.encode(images=open_source(serving_data, split="train").take(np.arange(5))).numpy()
    prepared = store.search_backfilled(queries, 20)
    from_files = FaissGallery.open(directory).search_backfilled(queries, 20)
    np.testing.assert_array_equal(prepared[1], from_files[1])
    np.testing.assert_allclose(prepared[0], from_files[0], atol=1e-6)
    with pytest.raises(ValueError, match="covers 120 re-embedded rows, not 130"):
        store.commit_backfill_batch(130, store.prepare_backfill_search(120))


def _asgi_post(app, body: dict):
    """One ``POST /search`` through the ASGI app in this event loop: ``(status, answer)``."""
    payload = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/search", "raw_path": b"/search", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}  # fmt: skip
    sent = []

    async def receive():
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message):
        sent.append(message)

    async def call():
        await app(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    return call()


def test_vector_queries_arriving_together_are_searched_in_one_batch_each_answered_as_alone(
    service, serving_models, serving_data
):
    """Twenty queries parsed in one turn of the event loop: one call of the batch search; each request gets the
    answer (or the refusal) it gets alone: encoder and new-model queries over a half-backfilled gallery, two k's, a
    wrong width, an unknown model, an unknown gallery."""
    import asyncio

    backfill_part(service, serving_models["new"], serving_data, 0.5, slice(100, 101))
    new_queries = np.random.default_rng(4).normal(size=(6, 12)).round(4).tolist()
    bodies = [{"gallery": "products", "k": 5, "vector": vector} for vector in QUERIES]
    bodies += [{"gallery": "products", "k": 3, "vector": vector, "model": "new"} for vector in new_queries]
    bodies += [{"gallery": "products", "vector": [0.1] * 5},  # a width neither model embeds
               {"gallery": "products", "vector": QUERIES[0], "model": "nobody"},
               {"gallery": "elsewhere", "vector": QUERIES[0]}]  # fmt: skip
    app = create_app(service, token=TOKEN)
    batcher = app.json_search.vectors

    async def all_at_once():
        return await asyncio.gather(*(_asgi_post(app, body) for body in bodies))

    answers = asyncio.run(all_at_once())
    assert list(batcher.batch_sizes) == [len(bodies)]
    alone = TestClient(create_app(service, token=TOKEN, inline_vectors=False))
    for body, (status, answer) in zip(bodies, answers):
        expected = alone.post("/search", json=body)
        assert status == expected.status_code, (body, answer)
        if status != 200:
            assert answer == expected.json()
            continue
        expected = expected.json()
        assert [hit["id"] for hit in answer["hits"]] == [hit["id"] for hit in expected["hits"]]
        np.testing.assert_allclose([hit["score"] for hit in answer["hits"]],
                                   [hit["score"] for hit in expected["hits"]], atol=1e-5)  # fmt: skip
        assert {key: value for key, value in answer.items() if key != "hits"} == {
            key: value for key, value in expected.items() if key != "hits"}  # fmt: skip
    statuses = [status for status, _ in answers]
    assert statuses[: len(QUERIES) + 6] == [200] * (len(QUERIES) + 6) and statuses[-3:] == [422, 404, 404]
    assert any(answer["mixed"] for _, answer in answers[len(QUERIES) : len(QUERIES) + 6])  # slots were filled


def test_a_bug_in_a_batch_fails_its_requests_and_not_the_next_batch():
    import asyncio

    from bt2_hf.serving.batching import VectorBatcher

    calls = []

    def search_many(queries):
        calls.append([query["vector"] for query in queries])
        if any(query["vector"] == "bug" for query in queries):
            raise RuntimeError("a bug")
        return [{"echo": query["vector"]} if query["vector"] != "refused" else ValueError("refused")
                for query in queries]  # fmt: skip

    batcher = VectorBatcher(search_many, max_batch=2)

    async def ask(vector):
        try:
            return await batcher.search({"vector": vector})
        except Exception as error:
            return f"{type(error).__name__}: {error}"

    async def run(vectors):
        return await asyncio.gather(*(ask(vector) for vector in vectors))

    # max_batch 2: five queries go in three calls, in arrival order; the bug fails its own batch only
    assert asyncio.run(run([1, "refused", "bug", 4, 5])) == [
        {"echo": 1}, "ValueError: refused", "RuntimeError: a bug", "RuntimeError: a bug", {"echo": 5}]  # fmt: skip
    assert calls == [[1, "refused"], ["bug", 4], [5]] and list(batcher.batch_sizes) == [2, 2, 1]
    with pytest.raises(ValueError, match="max_batch"):
        VectorBatcher(search_many, max_batch=0)


def test_a_service_started_with_the_adaptive_rule_ranks_a_random_backfill_by_one_sort(gallery_root, serving_models,
                                                                                     serving_data):  # fmt: skip
    """Half of the gallery re-embedded in a random order: a new-model query is answered by one sort of new/new and
    new→old cosines (checked by brute force over the gallery's own vectors), and the answer names the rule."""
    from bt2_hf.galleries import top_k_under_rule

    service = GalleryService(gallery_root, models=[f"new={serving_models['new']}"], rule="adaptive")
    try:
        _, store, _, _, _ = backfill_part(service, serving_models["new"], serving_data, 0.5, slice(100, 101))
        assert store.backfill_state["order"] == "random"
        use_new = store.backfilled_mask()
        everything = np.arange(len(store))
        vector = np.random.default_rng(6).normal(size=12)
        answer = service.search("products", k=6, vector=vector.tolist(), model="new")
        expected = top_k_under_rule(vector[None, :8], store.vectors_at(everything), vector[None, :],
                                    np.where(use_new[:, None], store.backfill_vectors(np.where(use_new, everything, 0)),
                                             0.0), use_new, 6, rule="naive")  # fmt: skip
        assert answer["rule"] == "adaptive"
        assert [hit["row"] for hit in answer["hits"]] == expected[0].tolist()
        slots = GalleryService(gallery_root, models=[f"new={serving_models['new']}"], resume_jobs=False)
        by_slots = slots.search("products", k=6, vector=vector.tolist(), model="new")
        assert by_slots["rule"] == "slots" and [hit["row"] for hit in by_slots["hits"]] != expected[0].tolist()
    finally:
        service.stop_jobs()
