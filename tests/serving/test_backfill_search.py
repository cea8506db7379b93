"""Searches of the re-embedded rows while a backfill commits beside them, under the gallery's lock as the service
takes it: each answer is the exact search over one committed state (the one it read), never a half-added batch."""

from __future__ import annotations

import threading

import numpy as np

from bt2_hf.galleries import FaissGallery
from bt2_hf.serving.service import CommitsUnderWriteLock
from bt2_hf.utils.locks import ReadWriteLock

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def _unit(array):
    array = np.asarray(array, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_searches_beside_commits_see_one_committed_state_each(tmp_path):
    rng = np.random.default_rng(3)
    count = 2000
    old, new = _unit(rng.normal(size=(count, 8))), _unit(rng.normal(size=(count, 12)))
    store = FaissGallery.build(
        tmp_path / "g", old, list(range(count)), encoder={"fingerprint": OLD, "embedding_dim": 8}
    )
    order = rng.permutation(count)
    rw = ReadWriteLock()
    writer = CommitsUnderWriteLock(store, rw)
    writer.start_backfill(dict(model={"fingerprint": NEW, "name_or_path": "new", "embedding_dim": 12}, dimension=12,
                               order="random", seed=0, done=0, count=count, target=count, batch_size=50),
                          order)  # fmt: skip
    queries = _unit(rng.normal(size=(4, 12)))
    answers, stop = [], threading.Event()

    def search():
        while not stop.is_set():
            with rw.read():
                done = store.backfill_state["done"]
                answers.append((done, *store.search_backfilled(queries, 15)))

    searchers = [threading.Thread(target=search) for _ in range(3)]
    for thread in searchers:
        thread.start()
    try:
        for done in range(0, count, 50):
            rows = order[done : done + 50]
            writer.write_backfill_batch(rows, new[rows], done + len(rows))
    finally:
        stop.set()
        for thread in searchers:
            thread.join(30)
    assert store.backfill_state["done"] == count
    states = {done for done, _, _ in answers}
    assert len(answers) > 20 and len(states) > 3  # the searches did run beside many commits
    for done, scores, rows in answers:
        reference = queries @ new[order[:done]].T
        best = np.argsort(-reference, axis=1)[:, : min(15, done)]
        np.testing.assert_array_equal(rows, order[:done][best])
        np.testing.assert_allclose(scores, np.take_along_axis(reference, best, 1), atol=1e-5)


def test_the_read_side_is_released_when_its_block_raises_and_a_writer_then_gets_the_lock():
    lock = ReadWriteLock()
    for _ in range(2):  # the second block raises as the first did
        try:
            with lock.read(), lock.read():  # nested readers
                raise KeyError("a search failed")
        except KeyError:
            pass
    written = threading.Event()

    def writer():
        with lock.write():
            written.set()

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(5)
    assert written.is_set(), "a reader was never released"
    # and a writer holds new readers back until it is done
    entered = threading.Event()
    with lock.write():
        reader = threading.Thread(target=lambda: (lock.read().__enter__(), entered.set()))
        reader.start()
        assert not entered.wait(0.2)
    reader.join(5)
    assert entered.is_set()
