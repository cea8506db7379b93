"""Past its exact limit the search over a backfill's re-embedded rows goes through an IVF index grown per commit:
it finds (recall, not equality) what a brute-force search over the same rows finds, its scores are the rows' exact
scores, a snapshot never finds rows added after it (even while they are being added), and it is trained once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bt2_hf.galleries import FaissGallery, backfill_search
from bt2_hf.galleries.backfill_search import BackfillSearch

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64
COUNT, OLD_DIM, NEW_DIM, CLUSTERS = 4000, 8, 12, 40
LIMIT = 1000  # the exact limit, low: the index takes over at the fourth commit
NPROBE = 6  # of 25 lists (1,001 training rows / 39): approximate (recall 0.98–1 here; 1 list: 0.87)
BATCHES = [300, 700, 1, 999, 500, 1500]  # crosses the limit by one row, then grows past the table's doublings
DEPTHS = [1, 10, 50]


def _unit(array):
    array = np.asarray(array, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def _clustered(rng, count):
    """Unit vectors around CLUSTERS centres, as embeddings are (an IVF index relies on that structure)."""
    centres = _unit(rng.normal(size=(CLUSTERS, NEW_DIM)))
    return lambda n: _unit(centres[rng.integers(0, CLUSTERS, n)] + 0.15 * rng.normal(size=(n, NEW_DIM)))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    draw = _clustered(rng, COUNT)
    return draw(COUNT), rng.permutation(COUNT), draw(40)


def brute_force(new, rows, queries, depth):
    rows = np.asarray(rows)
    scores = queries @ new[rows].T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(scores, best, 1), rows[best]


def recall(found, want):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), want.tolist())]))


def check_against_brute_force(search, new, covered, queries, minimum=0.95):
    """Recall ≥ ``minimum`` at every depth; every row covered, unique, scored exactly, best first."""
    for depth in DEPTHS:
        scores, rows = search.search(queries, depth)
        _, want = brute_force(new, covered, queries, min(depth, len(covered)))
        assert rows.shape == want.shape
        assert recall(rows, want) >= minimum, (depth, recall(rows, want))
        assert set(rows.ravel().tolist()) <= set(np.asarray(covered).tolist())
        assert all(len(set(row)) == len(row) for row in rows.tolist())
        np.testing.assert_allclose(scores, np.einsum("nkd,nd->nk", new[rows], queries), atol=1e-5)
        assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_past_the_limit_the_index_grown_per_commit_finds_what_brute_force_finds(data):
    new, order, queries = data
    search, done, index = BackfillSearch.empty(NEW_DIM, COUNT, exact_limit=LIMIT, nprobe=NPROBE), 0, None
    for batch in BATCHES:
        search, done = search.extended(order, new, done + batch), done + batch
        assert search.approximate == (done > LIMIT)
        if search.approximate:
            # Trained once, when the limit was crossed; each later commit adds its batch to the same index.
            index = index or search._index
            assert search._index is index and index.count == done
        check_against_brute_force(search, new, order[:done], queries)
    assert done == COUNT


def test_the_index_misses_rows_when_it_probes_too_few_lists(data):
    """The recall check above can fail: probing one list of many loses neighbours that sit in the next lists."""
    new, order, queries = data
    search = BackfillSearch.empty(NEW_DIM, COUNT, exact_limit=LIMIT, nprobe=1).extended(order, new, COUNT)
    rows = search.search(queries, 50)[1]
    assert recall(rows, brute_force(new, order, queries, 50)[1]) < 0.95


def test_a_snapshot_never_finds_rows_added_after_it_even_while_they_are_added(data):
    new, order, queries = data
    published = BackfillSearch.empty(NEW_DIM, COUNT, exact_limit=LIMIT, nprobe=NPROBE).extended(order, new, 1500)
    before = published.search(queries, 20)
    answers, stop = [], threading.Event()

    def search_meanwhile():
        while not stop.is_set():
            answers.append(published.search(queries, 20))

    threads = [threading.Thread(target=search_meanwhile) for _ in range(3)]
    for thread in threads:
        thread.start()
    search = published
    for done in range(1600, COUNT + 1, 100):  # commits adding to the index the published snapshot searches
        search = search.extended(order, new, done)
    stop.set()
    for thread in threads:
        thread.join()
    assert search._index is published._index and published._index.count == COUNT
    assert answers
    for scores, rows in [*answers, published.search(queries, 20)]:
        np.testing.assert_array_equal(rows, before[1])
        np.testing.assert_array_equal(scores, before[0])
    check_against_brute_force(published, new, order[:1500], queries)


def test_extensions_that_cannot_append_in_place_keep_only_their_own_rows(data):
    """Two extensions of one snapshot (one abandoned), and a jump back below the last one: each searches its rows."""
    new, order, queries = data
    start = BackfillSearch.empty(NEW_DIM, COUNT, exact_limit=LIMIT, nprobe=NPROBE).extended(order, new, 1200)
    abandoned = start.extended(order, new, 3000)
    second = start.extended(order, new, 2000)  # copies the table; the index keeps its lists, drops rows past 1200
    below = BackfillSearch.empty(NEW_DIM, COUNT, exact_limit=LIMIT, nprobe=NPROBE).extended(order, new, 800)
    above = below.extended(order, new, 1100)
    for search, covered in ((start, 1200), (abandoned, 3000), (second, 2000), (below, 800), (above, 1100)):
        assert search.approximate == (covered > LIMIT)
        check_against_brute_force(search, new, order[:covered], queries)
    assert second._index is not abandoned._index and second._index.count == 2000 and abandoned._index.count == 3000


def test_a_gallery_reopened_past_the_limit_trains_its_index_from_the_files_once(tmp_path, monkeypatch, data):
    monkeypatch.setattr(backfill_search, "EXACT_SCAN_LIMIT", LIMIT)
    monkeypatch.setattr(backfill_search, "NPROBE", NPROBE)
    new, order, queries = data
    rng = np.random.default_rng(1)
    store = FaissGallery.build(tmp_path / "g", _unit(rng.normal(size=(COUNT, OLD_DIM))), list(range(COUNT)),
                               encoder={"fingerprint": OLD, "embedding_dim": OLD_DIM})  # fmt: skip
    store.start_backfill(dict(model={"fingerprint": NEW, "name_or_path": "new", "embedding_dim": NEW_DIM},
                              dimension=NEW_DIM, order="random", seed=0, done=0, count=COUNT, target=COUNT,
                              batch_size=500), order)  # fmt: skip
    done = 0
    for batch in BATCHES[:4]:  # 2000 rows, past the limit
        rows = order[done : done + batch]
        store.write_backfill_rows(rows, new[rows])
        done += batch
        store.commit_backfill_batch(done, store.prepare_backfill_search(done))
    reopened = FaissGallery.open(store.directory)
    builds, prepare = [], reopened.prepare_backfill_search
    reopened.prepare_backfill_search = lambda done: builds.append(done) or prepare(done)
    answers = [None] * 4

    def first_search(slot):
        answers[slot] = reopened.search_backfilled(queries, 30)

    threads = [threading.Thread(target=first_search, args=(slot,)) for slot in range(len(answers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == [done]  # the searches that found it missing waited for one build (it trains an index)
    want = brute_force(new, order[:done], queries, 30)[1]
    for gallery in (store, reopened):
        assert gallery.prepare_backfill_search(done).approximate
        assert recall(gallery.search_backfilled(queries, 30)[1], want) >= 0.95
    for scores, rows in answers:
        np.testing.assert_array_equal(rows, answers[0][1])
        np.testing.assert_array_equal(scores, answers[0][0])


def test_a_query_whose_probed_lists_hold_too_few_rows_gets_the_exact_answer(data):
    """Deeper than the rows in the lists it probes, the index would pad with -1: such a query is scanned exactly."""
    new, order, queries = data
    search = BackfillSearch.empty(NEW_DIM, COUNT, exact_limit=LIMIT, nprobe=1).extended(order, new, 2000)
    depth = 500  # one list of 25 holds about 80 of the 2,000 rows
    scores, rows = search.search(queries, depth)
    want_scores, want_rows = brute_force(new, order[:2000], queries, depth)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_a_service_warms_a_reopened_gallery_s_index_before_any_query(tmp_path, monkeypatch, data):
    """Opened by a service mid-backfill, past the limit, a gallery's index is trained in the background at once, so
    the first new-model query finds it built (one build, none by the query)."""
    from bt2_hf.serving import GalleryService

    monkeypatch.setattr(backfill_search, "EXACT_SCAN_LIMIT", LIMIT)
    monkeypatch.setattr(backfill_search, "NPROBE", NPROBE)
    new, order, queries = data
    rng = np.random.default_rng(1)
    store = FaissGallery.build(tmp_path / "root" / "g", _unit(rng.normal(size=(COUNT, OLD_DIM))), list(range(COUNT)),
                               encoder={"fingerprint": OLD, "embedding_dim": OLD_DIM})  # fmt: skip
    store.start_backfill(dict(model={"fingerprint": NEW, "name_or_path": "new", "embedding_dim": NEW_DIM},
                              dimension=NEW_DIM, order="random", seed=0, done=0, count=COUNT, target=COUNT,
                              batch_size=500), order)  # fmt: skip
    done = 0
    for batch in BATCHES[:4]:
        rows = order[done : done + batch]
        store.write_backfill_rows(rows, new[rows])
        done += batch
        store.commit_backfill_batch(done, store.prepare_backfill_search(done))
    builds, prepare = [], FaissGallery.prepare_backfill_search
    monkeypatch.setattr(FaissGallery, "prepare_backfill_search", lambda self, d: builds.append(d) or prepare(self, d))
    served = GalleryService(tmp_path / "root", resume_jobs=False).served("g")[1]
    served.warming.join(60)
    assert builds == [done]  # built on opening, without a query
    scores, rows = served.store.search_backfilled(queries, 30)
    assert builds == [done]  # the query found it
    assert recall(rows, brute_force(new, order[:done], queries, 30)[1]) >= 0.95
