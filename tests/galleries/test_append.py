"""Items added to a faiss gallery after its build (dual-write): append-only files committed by the manifest.

Each check compares against an independent reference: a brute-force numpy search over every vector added, the
arrays the items were written from, or a gallery rebuilt from all rows at once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bt2_hf.galleries import FaissGallery, backfill, finalize_backfill
from bt2_hf.galleries.append import StaleGalleryError, append_items, compact_gallery
from bt2_hf.galleries.appended import ITEMS_FILE, VECTORS_FILE
from bt2_hf.galleries.faiss_store import GalleryError

ENCODER = {"fingerprint": "sha256:" + "c" * 64, "name_or_path": "old", "embedding_dim": 16}
NEW_MODEL = {"fingerprint": "sha256:" + "d" * 64, "name_or_path": "new", "embedding_dim": 24}


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Top-k rows by cosine, ties by lower row (the gallery's rule)."""
    scores = unit(queries) @ unit(vectors).T
    return np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])


def base_files(directory) -> dict:
    """(inode, size, mtime) of the files a build writes: an append must leave every one of them as it was."""
    names = ("vectors.npy", "ids.npy", "index.faiss", "labels.npy", "paths.npy", "backfill/vectors.npy",
             "backfill/order.npy")  # fmt: skip
    return {name: (s.st_ino, s.st_size, s.st_mtime_ns) for name in names
            if (directory / name).exists() for s in [(directory / name).stat()]}  # fmt: skip


@pytest.mark.parametrize("index_type", ["flat", "ivf", "ivfpq", "hnsw"])
def test_appended_rows_are_searched_and_read_like_the_built_ones(tmp_path, index_type):
    rng = np.random.default_rng(0)
    count = 3000 if index_type == "ivfpq" else 400  # IVF-PQ trains 256 centroids per sub-quantizer
    built = unit(rng.normal(size=(count, 16)))
    labels = rng.integers(0, 3, count)
    gallery = FaissGallery.build(tmp_path / "g", built, np.arange(count) * 10, encoder=ENCODER, index_type=index_type,
                                 labels=labels, label_names=["shirt", "shoe", "bag"],
                                 paths=[f"built/{i}" for i in range(count)])  # fmt: skip
    before = base_files(tmp_path / "g")
    added = unit(rng.normal(size=(7, 16)))
    ids = [5, 7, 11, 13, 17, 19, 23]  # not multiples of 10: new items
    first, ids_added = append_items(gallery, added[:1], ids[:1], labels=["hat"], paths=["new/0"])
    assert first is gallery and ids_added == [5] and len(gallery) == count + 1
    append_items(gallery, added[1:], ids[1:], labels=[None, "shoe", 2, "hat", None, None],
                 paths=["new/1", None, "new/3", "new/4", None, "new/6"])  # fmt: skip
    assert base_files(tmp_path / "g") == before  # nothing built was rewritten

    everything = np.concatenate([built, added])
    rows = np.array([0, count - 1, count, count + 2, count + 6])
    assert gallery.ids_of(rows) == [0, (count - 1) * 10, 5, 11, 23]
    names = ["shirt", "shoe", "bag"]
    assert gallery.labels_of(rows) == [names[labels[0]], names[labels[-1]], "hat", "shoe", None]
    assert gallery.paths_of(rows) == ["built/0", f"built/{count - 1}", "new/0", None, "new/6"]
    np.testing.assert_allclose(gallery.vectors_at(rows), everything[rows], atol=1e-6)
    streamed = np.concatenate([vectors for _, vectors in gallery.iter_vectors(chunk=128)])
    np.testing.assert_allclose(streamed, everything, atol=1e-6)

    # Each added vector finds itself first; on a flat gallery the whole ranking is the brute-force one.
    queries = added + 0.01 * rng.normal(size=added.shape).astype(np.float32)
    _, found = gallery.search_encoder_space(unit(queries), 5, nprobe=64, ef_search=256, rerank=3000)
    assert found[:, 0].tolist() == list(range(count, count + 7))
    if index_type == "flat":
        np.testing.assert_array_equal(found, brute_force(everything, queries, 5))

    # Opened again, the gallery answers the same; compacted, too, with the rows in its base files.
    reopened = FaissGallery.open(tmp_path / "g")
    assert reopened.manifest["format"] == 2 and reopened.manifest["appended"]["count"] == 7 and reopened.check() == []
    np.testing.assert_array_equal(reopened.search_encoder_space(unit(queries), 5, nprobe=64, ef_search=256,
                                                                rerank=3000)[1], found)  # fmt: skip
    assert reopened.labels_of(rows) == gallery.labels_of(rows) and reopened.label_names == names + ["hat"]
    compacted = compact_gallery(reopened)
    assert compacted.manifest["format"] == 1 and "appended" not in compacted.manifest and compacted.check() == []
    assert compacted.base_count == len(compacted) == count + 7
    assert not (tmp_path / "g" / "appended").exists()
    np.testing.assert_array_equal(compacted.search_encoder_space(unit(queries), 5, nprobe=64, ef_search=256,
                                                                 rerank=3000)[1], found)  # fmt: skip
    assert compacted.ids_of(rows) == gallery.ids_of(rows) and compacted.paths_of(rows) == gallery.paths_of(rows)
    np.testing.assert_allclose(np.asarray(compacted.vectors), everything, atol=1e-6)


def test_a_retried_write_adds_nothing_twice_and_string_ids_work(tmp_path):
    rng = np.random.default_rng(1)
    gallery = FaissGallery.build(tmp_path / "g", rng.normal(size=(50, 16)), [f"sku-{i}" for i in range(50)],
                                 encoder=ENCODER)  # fmt: skip
    vectors = rng.normal(size=(3, 16))
    assert append_items(gallery, vectors, ["sku-3", "new-a", "a-much-longer-new-id"])[1] == ["new-a",
                                                                                         "a-much-longer-new-id"]  # fmt: skip
    assert append_items(gallery, vectors, ["sku-3", "new-a", "a-much-longer-new-id"])[1] == []
    assert append_items(gallery, vectors[:2], ["new-a", "new-b"])[1] == ["new-b"]  # one already appended
    reopened = FaissGallery.open(tmp_path / "g")
    assert append_items(reopened, vectors, ["new-b", "sku-49", "new-a"])[1] == []
    assert reopened.ids_of(np.arange(50, 53)) == ["new-a", "a-much-longer-new-id", "new-b"] and len(reopened) == 53
    with pytest.raises(GalleryError, match="twice"):
        append_items(reopened, vectors[:2], ["x", "x"])
    with pytest.raises(GalleryError, match="3 × 16"):
        append_items(reopened, vectors[:, :8], ["p", "q", "r"])
    with pytest.raises(GalleryError, match="NaN"):
        append_items(reopened, np.full((1, 16), np.nan), ["nan"])
    assert len(FaissGallery.open(tmp_path / "g")) == 53


def test_a_gallery_object_behind_its_files_is_refused_and_damage_is_named(tmp_path):
    rng = np.random.default_rng(2)
    FaissGallery.build(tmp_path / "g", rng.normal(size=(40, 16)), encoder=ENCODER)
    first, second = FaissGallery.open(tmp_path / "g"), FaissGallery.open(tmp_path / "g")
    append_items(first, rng.normal(size=(2, 16)), [100, 101])
    with pytest.raises(StaleGalleryError, match="Open it again"):
        append_items(second, rng.normal(size=(1, 16)), [102])
    # a flipped byte in a committed appended row: open refuses it, check names the file
    path = tmp_path / "g" / "appended" / "vectors.bin"
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="digest"):
        FaissGallery.open(tmp_path / "g")
    problems = FaissGallery.open(tmp_path / "g", verify=False).check()
    assert len(problems) == 1 and "vectors.bin" in problems[0]
    # a truncated one is refused even without hashing
    path.write_bytes(bytes(data[:-4]))
    with pytest.raises(GalleryError, match="fewer than"):
        FaissGallery.open(tmp_path / "g", verify=False)


def test_bytes_beyond_the_committed_length_are_ignored_then_cut(tmp_path):
    rng = np.random.default_rng(3)
    gallery = FaissGallery.build(tmp_path / "g", rng.normal(size=(40, 16)), encoder=ENCODER)
    append_items(gallery, rng.normal(size=(2, 16)), [100, 101], paths=["a", "b"])
    for name in ("vectors.bin", "items.jsonl"):  # what a write killed before its manifest leaves behind
        with open(tmp_path / "g" / "appended" / name, "ab") as handle:
            handle.write(b"\x07" * 37)
    reopened = FaissGallery.open(tmp_path / "g")
    assert len(reopened) == 42 and reopened.check() == []
    added = unit(rng.normal(size=(1, 16)))
    append_items(reopened, added, [102], paths=["c"])
    record = json.loads((tmp_path / "g" / "manifest.json").read_text())["appended"]
    for name, entry in record["files"].items():
        assert (tmp_path / "g" / name).stat().st_size == entry["bytes"] and entry["rows"] == 3
    final = FaissGallery.open(tmp_path / "g")
    assert final.paths_of([40, 41, 42]) == ["a", "b", "c"]
    np.testing.assert_allclose(final.vectors_at([42]), added, atol=1e-6)


def test_items_added_during_a_backfill_count_as_re_embedded(tmp_path):
    rng = np.random.default_rng(4)
    count = 300
    old, new = unit(rng.normal(size=(count, 16))), unit(rng.normal(size=(count, 24)))
    gallery = FaissGallery.build(tmp_path / "g", old, encoder=ENCODER)
    embedded = []

    def embed_rows(rows):
        embedded.extend(np.asarray(rows).tolist())
        return new[rows]

    config = type("Config", (), {"fingerprint": NEW_MODEL["fingerprint"], "embedding_dim": 24,
                                 "compatible_with": [{"fingerprint": ENCODER["fingerprint"], "embedding_dim": 16,
                                                      "status": "declared"}], "training": None})()  # fmt: skip
    run = {"embed_rows": embed_rows, "identity": NEW_MODEL, "query_config": config, "allow_unmeasured": True,
           "batch_size": 40, "show_progress": False}  # fmt: skip
    backfill(gallery, fraction=0.3, **run)
    assert gallery.backfill_state["done"] == 90
    new_queries = unit(rng.normal(size=(4, 24)))
    gallery.search_backfilled(new_queries, 5)  # a current exact search over the re-embedded rows, grown by writes
    before = base_files(tmp_path / "g")
    added_old, added_new = unit(rng.normal(size=(5, 16))), unit(rng.normal(size=(5, 24)))
    append_items(gallery, added_old[:2], [1000, 1001], backfill_vectors=added_new[:2])
    backfill(gallery, fraction=0.5, **run)
    append_items(gallery, added_old[2:], [1002, 1003, 1004], backfill_vectors=added_new[2:])
    assert base_files(tmp_path / "g") == before | {"backfill/vectors.npy": base_files(tmp_path / "g")[
        "backfill/vectors.npy"]}  # fmt: skip
    all_new = np.concatenate([new, added_new])

    def expected_mask(store):
        mask = np.zeros(len(store), dtype=bool)
        mask[store.backfill_table_order()[: store.backfill_state["done"] - 5]] = True
        mask[count:] = True
        return mask

    for store in (gallery, FaissGallery.open(tmp_path / "g")):
        state = store.backfill_state
        # 0.5 of the 302 items then, and the 3 added since
        assert state["done"] == (count + 2) // 2 + 3 and len(store) == count + 5
        mask = store.backfilled_mask()
        np.testing.assert_array_equal(mask, expected_mask(store))
        np.testing.assert_array_equal(store.backfilled(np.arange(len(store))), mask)
        assert set(store.backfill_order()[: state["done"]].tolist()) == set(np.flatnonzero(mask).tolist())
        np.testing.assert_allclose(store.backfill_vectors(np.arange(count, count + 5)), added_new, atol=1e-6)
        # the exact search over the re-embedded rows (appended ones included) against brute force over them
        scores, rows = store.search_backfilled(new_queries, 7)
        done_rows = np.flatnonzero(mask)
        np.testing.assert_array_equal(rows, done_rows[brute_force(all_new[done_rows], new_queries, 7)])

    backfill(gallery, fraction=1.0, **run)
    assert not set(embedded) & set(range(count, count + 5))  # the added items were never re-embedded
    assert sorted(embedded) == list(range(count))
    assert gallery.backfill_state["done"] == len(gallery) == count + 5
    finalized = finalize_backfill(gallery)
    assert finalized.encoder["fingerprint"] == NEW_MODEL["fingerprint"] and len(finalized) == count + 5
    np.testing.assert_allclose(np.asarray(finalized.vectors), all_new, atol=1e-6)
    assert finalized.ids_of(np.arange(count, count + 5)) == [1000, 1001, 1002, 1003, 1004]


def test_compacting_during_a_backfill_keeps_its_state(tmp_path):
    rng = np.random.default_rng(5)
    old, new = unit(rng.normal(size=(120, 16))), unit(rng.normal(size=(120, 24)))
    gallery = FaissGallery.build(tmp_path / "g", old, encoder=ENCODER)
    append_items(gallery, unit(rng.normal(size=(2, 16))), [500, 501])  # before the backfill: it embeds them
    config = type("Config", (), {"fingerprint": NEW_MODEL["fingerprint"], "embedding_dim": 24,
                                 "compatible_with": [{"fingerprint": ENCODER["fingerprint"], "embedding_dim": 16,
                                                      "status": "declared"}], "training": None})()  # fmt: skip
    extra = unit(rng.normal(size=(2, 24)))
    all_new = np.concatenate([new, extra])
    run = {"embed_rows": lambda rows: all_new[rows], "identity": NEW_MODEL, "query_config": config,
           "allow_unmeasured": True, "batch_size": 30, "show_progress": False}  # fmt: skip
    backfill(gallery, fraction=0.4, **run)
    late_new = unit(rng.normal(size=(3, 24)))
    append_items(gallery, unit(rng.normal(size=(3, 16))), [600, 601, 602], backfill_vectors=late_new)
    mask, order = gallery.backfilled_mask(), gallery.backfill_order()
    queries = unit(rng.normal(size=(3, 24)))
    answer = gallery.search_backfilled(queries, 6)
    reopened = FaissGallery.open(tmp_path / "g")  # two rows appended before the backfill (in its table), three during
    np.testing.assert_array_equal(reopened.backfilled_mask(), mask)
    np.testing.assert_array_equal(reopened.search_backfilled(queries, 6)[1], answer[1])
    for row in np.flatnonzero(mask[120:122]) + 120:  # appended before the backfill, re-embedded by it
        np.testing.assert_allclose(reopened.backfill_vectors([row]), extra[row - 120][None], atol=1e-6)
    np.testing.assert_allclose(reopened.backfill_vectors(np.arange(122, 125)), late_new, atol=1e-6)
    compacted = compact_gallery(gallery)
    assert compacted.appended is None and len(compacted) == 125
    np.testing.assert_array_equal(compacted.backfilled_mask(), mask)
    np.testing.assert_array_equal(compacted.backfill_order(), order)
    np.testing.assert_array_equal(compacted.search_backfilled(queries, 6)[1], answer[1])
    np.testing.assert_allclose(compacted.backfill_vectors(np.arange(122, 125)), late_new, atol=1e-6)
    backfill(compacted, fraction=1.0, **run)
    assert compacted.backfilled_mask().all()


def test_bt2_gallery_compact_and_info(tmp_path, capsys):
    from bt2_hf.cli.gallery import main as gallery_main

    rng = np.random.default_rng(6)
    gallery = FaissGallery.build(tmp_path / "g", rng.normal(size=(30, 16)), encoder=ENCODER)
    append_items(gallery, rng.normal(size=(4, 16)), [40, 41, 42, 43])
    assert gallery_main(["info", str(tmp_path / "g")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 34 and info["appended"] == 4
    assert gallery_main(["check", str(tmp_path / "g")]) == 0
    capsys.readouterr()
    assert gallery_main(["compact", str(tmp_path / "g")]) == 0
    assert json.loads(capsys.readouterr().out) == {"directory": str(tmp_path / "g"), "count": 34, "folded": 4}
    assert FaissGallery.open(tmp_path / "g").base_count == 34


@pytest.mark.parametrize(
    "edit",
    [
        lambda record: record.update(count="2"),  # not a number
        lambda record: record.update(count=10_000),  # more items than the gallery holds
        lambda record: record["files"][VECTORS_FILE].update(bytes=-64),  # a length that cannot be
        lambda record: record["files"][VECTORS_FILE].update(rows=5),  # more rows than its bytes hold
        lambda record: record["files"][ITEMS_FILE].update(digest="00" * 32),  # another chain
    ],
)
def test_an_edited_appended_record_is_refused(tmp_path, edit):
    """The manifest's record of the appended rows, edited by hand, is refused when the gallery opens."""
    rng = np.random.default_rng(4)
    FaissGallery.build(tmp_path / "g", rng.normal(size=(40, 16)), encoder=ENCODER)
    append_items(FaissGallery.open(tmp_path / "g"), rng.normal(size=(2, 16)), [100, 101])
    path = tmp_path / "g" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest["appended"])
    path.write_text(json.dumps(manifest))
    with pytest.raises(GalleryError):
        FaissGallery.open(tmp_path / "g")
