"""The prepared search a service runs for one query: the same hits as ``search_gallery``, and a brute-force reference
where the search is exact; refused, or handed back to ``search_gallery``, where it must be."""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.compatibility import IncompatibleModelsError
from bt2_hf.galleries import FaissGallery, search_gallery
from bt2_hf.galleries.append import append_items
from bt2_hf.galleries.faiss_store import _top_of_one
from bt2_hf.galleries.prepared import prepare_search

from .test_adaptive_rule import gallery_with
from .test_append import brute_force, unit
from .test_backfill import OLD
from .test_compatible_rule import NEW_CONFIG, compatible_pair

ENCODER = {"fingerprint": OLD, "name_or_path": "old", "embedding_dim": 8}


class Config:
    def __init__(self, fingerprint, embedding_dim, compatible_with=(), compatible_dim=None):
        self.fingerprint, self.embedding_dim, self.name_or_path = fingerprint, embedding_dim, "query model"
        self.compatible_with, self.compatible_dim = list(compatible_with), compatible_dim


OLD_MODEL = Config(OLD, 8)


def general_hits(store, query, k, config=OLD_MODEL):
    return search_gallery(store, query, k=k, query_config=config).hits()[0]


@pytest.mark.parametrize("index_type", ["flat", "ivf", "ivfpq", "hnsw"])
def test_a_prepared_search_gives_search_gallerys_hits(tmp_path, index_type):
    rng = np.random.default_rng(1)
    count = 3000 if index_type == "ivfpq" else 300  # IVF-PQ trains 256 centroids per sub-quantizer
    vectors = unit(rng.normal(size=(count, 8)))
    vectors[10:14] = vectors[3]  # ties: equal cosines are ordered by row
    store = FaissGallery.build(tmp_path / "g", vectors, [f"item-{i}" for i in range(count)], encoder=ENCODER,
                               index_type=index_type, labels=rng.integers(0, 3, count),
                               label_names=["shirt", "shoe", "bag"],
                               paths=[f"photos/{i}.png" for i in range(count)])  # fmt: skip
    prepared = prepare_search(store, OLD_MODEL)
    assert prepared is not None and prepared.prefix == 8 and prepared.current(store, OLD_MODEL)
    queries = np.concatenate([vectors[3:4], 3.0 * rng.normal(size=(30, 8))]).astype(np.float32)
    for query in queries:
        for k in (1, 10, 37):
            hits = prepared.hits(query[None, :], k)
            assert hits == general_hits(store, query[None, :], k)
            assert {"label", "path"} <= set(hits[0]) and not any(hit["backfilled"] for hit in hits)
    if index_type == "flat":  # exact: the brute-force top-k, ties to the lower row
        for query in queries:
            assert [hit["row"] for hit in prepared.hits(query[None, :], 10)] == brute_force(vectors, query[None, :],
                                                                                            10)[0].tolist()  # fmt: skip
        assert [hit["row"] for hit in prepared.hits(vectors[3:4], 5)] == [3, 10, 11, 12, 13]  # five equal cosines


def test_a_gallery_smaller_than_k_gives_every_item_once(tmp_path):
    vectors = unit(np.random.default_rng(2).normal(size=(5, 8)))
    store = FaissGallery.build(tmp_path / "g", vectors, list(range(5)), encoder=ENCODER)
    hits = prepare_search(store, OLD_MODEL).hits(vectors[:1], 10)
    assert sorted(hit["row"] for hit in hits) == [0, 1, 2, 3, 4] and hits == general_hits(store, vectors[:1], 10)


def test_a_changed_gallery_leaves_its_prepared_search_stale(tmp_path):
    rng = np.random.default_rng(3)
    vectors = unit(rng.normal(size=(200, 8)))
    store = FaissGallery.build(tmp_path / "g", vectors, list(range(200)), encoder=ENCODER)
    prepared = prepare_search(store, OLD_MODEL)
    added = unit(rng.normal(size=(1, 8)))
    append_items(store, added, [1000])
    assert not prepared.current(store, OLD_MODEL)  # the manifest was replaced by the append
    assert not prepared.current(FaissGallery.open(tmp_path / "g"), OLD_MODEL)  # another object of the same gallery
    again = prepare_search(store, OLD_MODEL)
    hits = again.hits(added, 3)
    assert hits[0]["id"] == 1000 and hits[0]["row"] == 200 and hits == general_hits(store, added, 3)
    assert not again.current(store, Config(OLD, 8))  # another config object: decided again


def test_a_backfill_the_model_takes_part_in_is_left_to_search_gallery(tmp_path):
    old, new, _ = compatible_pair(count=220, seed=4)
    gallery_with(tmp_path / "g", old[:200], new[:200], 0.3, "random", seed=1)
    store = FaissGallery.open(tmp_path / "g")
    prepared_new = prepare_search(store, NEW_CONFIG, allow_unmeasured=True)
    assert prepared_new is None  # its queries rank re-embedded items: the general search answers them
    prepared_old = prepare_search(store, OLD_MODEL)  # the old model searches the encoder's vectors only
    for query in old[200:]:
        assert prepared_old.hits(query[None, :], 10) == general_hits(store, query[None, :], 10)


def test_refusals_are_those_of_search_gallery(tmp_path):
    vectors = unit(np.random.default_rng(5).normal(size=(50, 8)))
    store = FaissGallery.build(tmp_path / "g", vectors, list(range(50)), encoder=ENCODER)
    stranger = Config("sha256:" + "e" * 64, 8)
    with pytest.raises(IncompatibleModelsError):
        prepare_search(store, stranger)
    prepared = prepare_search(store, OLD_MODEL)
    with pytest.raises(ValueError, match="6-d but the query model"):
        prepared.hits(vectors[:1, :6], 5)
    with pytest.raises(ValueError, match="one query of shape"):
        prepared.hits(vectors[:2], 5)


def test_top_of_one_is_the_full_sort_by_score_then_row():
    rng = np.random.default_rng(6)
    for _ in range(200):
        width = int(rng.integers(1, 60))
        scores = rng.integers(0, 5, width).astype(np.float32) / 4  # many ties
        rows = rng.permutation(10_000)[:width]
        depth = int(rng.integers(1, width + 3))
        order = sorted(range(width), key=lambda i: (-scores[i], rows[i]))[:depth]
        got_scores, got_rows = _top_of_one(scores, rows, depth)
        assert got_rows.shape == (1, min(depth, width))
        assert got_rows[0].tolist() == rows[order].tolist() and got_scores[0].tolist() == scores[order].tolist()
