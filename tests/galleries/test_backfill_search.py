"""The search over a backfill's re-embedded rows, grown a commit at a time: after every commit it answers exactly as a
brute-force search over the same rows, reads only the committed batch, and a reopened gallery answers the same."""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.galleries import FaissGallery
from bt2_hf.galleries.backfill_search import BackfillSearch

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64
COUNT, OLD_DIM, NEW_DIM = 3000, 8, 12
# Uneven batches that cross the row table's doublings (1024, 2048, then the gallery's size).
BATCHES = [1, 40, 983, 7, 1200, 769]


def _unit(array):
    array = np.asarray(array, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


@pytest.fixture
def gallery(tmp_path):
    rng = np.random.default_rng(0)
    old, new = _unit(rng.normal(size=(COUNT, OLD_DIM))), _unit(rng.normal(size=(COUNT, NEW_DIM)))
    store = FaissGallery.build(tmp_path / "g", old, list(range(COUNT)),
                               encoder={"fingerprint": OLD, "embedding_dim": OLD_DIM})  # fmt: skip
    order = rng.permutation(COUNT)
    store.start_backfill(dict(model={"fingerprint": NEW, "name_or_path": "new", "embedding_dim": NEW_DIM},
                              dimension=NEW_DIM, order="random", seed=0, done=0, count=COUNT, target=COUNT,
                              batch_size=100), order)  # fmt: skip
    queries = _unit(rng.normal(size=(25, NEW_DIM)))
    return store, new, order, queries


def brute_force(new, rows, queries, depth):
    """The reference: every covered row scored with numpy, best first (random vectors: no ties)."""
    rows = np.asarray(rows)
    scores = queries @ new[rows].T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(scores, best, 1), rows[best]


def commit(store, order, new, done, batch):
    """One batch as the service commits it: rows written, the next search prepared, then the commit point."""
    rows = order[done : done + batch]
    store.write_backfill_rows(rows, new[rows])
    store.commit_backfill_batch(done + batch, store.prepare_backfill_search(done + batch))
    return done + batch


@pytest.mark.parametrize("depth", [1, 10, 50])
def test_after_every_commit_the_search_is_the_exact_search_over_the_re_embedded_rows(gallery, depth):
    store, new, order, queries = gallery
    done = 0
    for batch in BATCHES:
        done = commit(store, order, new, done, batch)
        scores, rows = store.search_backfilled(queries, depth)
        want_scores, want_rows = brute_force(new, order[:done], queries, min(depth, done))
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        assert set(rows.ravel()) <= set(order[:done].tolist())  # never a row beyond the commit
    assert done == COUNT


def test_a_gallery_reopened_mid_backfill_searches_the_same(gallery):
    store, new, order, queries = gallery
    done = 0
    for batch in BATCHES[:4]:
        done = commit(store, order, new, done, batch)
        grown = store.search_backfilled(queries, 30)
        reopened = FaissGallery.open(store.directory).search_backfilled(queries, 30)  # rebuilt from the files
        np.testing.assert_array_equal(grown[1], reopened[1])
        np.testing.assert_array_equal(grown[0], reopened[0])


def test_a_commit_reads_only_its_own_batch(gallery):
    """A row already committed is not read again: a later change of its stored vector (which no backfill makes) is
    seen by a gallery reopened from the files, not by the grown search, whose commit read only the new batch."""
    store, new, order, queries = gallery
    done = commit(store, order, new, 0, 500)
    changed = order[0]
    table = np.load(store.directory / "backfill" / "vectors.npy", mmap_mode="r+")
    table[changed] = queries[0]  # the first query's best possible match, written behind the gallery's back
    table.flush()
    del table
    commit(store, order, new, done, 500)
    assert changed not in store.search_backfilled(queries[:1], 1)[1]
    assert FaissGallery.open(store.directory).search_backfilled(queries[:1], 1)[1][0, 0] == changed


def test_a_prepared_search_never_changes_the_published_one(gallery):
    """Two searches prepared from the same state (one abandoned) and one going back: each is exact over its rows."""
    store, new, order, queries = gallery
    done = commit(store, order, new, 0, 300)
    rows = order[300:900]
    store.write_backfill_rows(rows, new[rows])
    abandoned = store.prepare_backfill_search(900)
    second = store.prepare_backfill_search(600)  # from the same published state: it cannot append in place
    back = store.prepare_backfill_search(100)
    for search, covered in ((abandoned, 900), (second, 600), (back, 100), (store.prepare_backfill_search(done), done)):
        scores, found = search.search(queries, 20)
        want_scores, want_rows = brute_force(new, order[:covered], queries, 20)
        np.testing.assert_array_equal(found, want_rows)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    with pytest.raises(ValueError, match="covers 600 re-embedded rows, not 900"):
        store.commit_backfill_batch(900, second)


def test_equal_scores_come_in_row_order_whatever_the_backfill_order():
    vectors = _unit(np.tile([[1.0, 0.0], [0.0, 1.0]], (3, 1)))  # rows 0, 2, 4 identical; 1, 3, 5 identical
    search = BackfillSearch.empty(2, 6)
    order = np.array([4, 1, 2, 5, 0, 3])
    search = search.extended(order, vectors, 2).extended(order, vectors, 6)
    scores, rows = search.search(vectors[:1], 6)
    assert rows.tolist() == [[0, 2, 4, 1, 3, 5]]
    np.testing.assert_allclose(scores, [[1, 1, 1, 0, 0, 0]], atol=1e-6)
    with pytest.raises(ValueError, match="Cannot extend"):
        search.extended(order, vectors, 3)


@pytest.mark.parametrize("depth", [1, 10, 700])
def test_many_queries_at_once_get_what_each_gets_alone(gallery, depth):
    """A served micro-batch of 70 queries is scanned by faiss with matrix products (from 20 queries on), a query alone
    one row at a time: the same rows, in the same order. Depth 700 asks for every one of the 700 re-embedded rows."""
    store, new, order, _ = gallery
    commit(store, order, new, 0, 700)
    queries = _unit(np.random.default_rng(9).normal(size=(70, NEW_DIM)))
    scores, rows = store.search_backfilled(queries, depth)
    for query, (line_scores, line_rows) in enumerate(zip(scores, rows)):
        alone_scores, alone_rows = store.search_backfilled(queries[query : query + 1], depth)
        np.testing.assert_array_equal(line_rows, alone_rows[0])
        np.testing.assert_allclose(line_scores, alone_scores[0], atol=1e-5)
    want_scores, want_rows = brute_force(new, order[:700], queries, depth)
    np.testing.assert_array_equal(rows, want_rows)
