"""In-place backfill (crash-safe, kill -9) and the mixed-gallery rule that never ranks on mismatched scales."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from bt2_hf import BT2Model
from bt2_hf.compatibility import IncompatibleModelsError
from bt2_hf.galleries import (
    FaissGallery,
    GalleryError,
    backfill,
    embed_dataset,
    finalize_backfill,
    open_source,
    search_gallery,
    top1_under_rule,
)

from .conftest import PYTHON, REPO, subprocess_env, write_idx

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


class Config:
    def __init__(self, fingerprint, embedding_dim, compatible_with=()):
        self.fingerprint, self.embedding_dim, self.name_or_path = fingerprint, embedding_dim, fingerprint[7:10]
        self.compatible_with = list(compatible_with)


OLD_CONFIG = Config(OLD, 2)
NEW_CONFIG = Config(NEW, 3, [{"fingerprint": OLD, "embedding_dim": 2, "name_or_path": "aaa"}])
NEW_IDENTITY = {"fingerprint": NEW, "name_or_path": "bbb", "embedding_dim": 3}


def _unit(*rows):
    array = np.asarray(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def hand_made_case():
    """One query of class A; gallery item 0 is class A, item 1 class B.

    Old space (2-d): the query's prefix is close to item 0 (cos 0.96) and far from item 1 (cos 0.6): new→old is right.
    New space (3-d): new/new cosines are all higher (the usual scale mismatch): item 1 re-embedded scores 0.98, above
    item 0's new/old 0.96, so comparing the two cosines directly picks item 1, the wrong class.
    """
    query = _unit([1.0, 0.0, 0.0])
    old = _unit([0.96, 0.28], [0.6, 0.8])
    new = _unit([0.99, 0.0, 0.141], [0.98, 0.0, 0.199])
    new[0], new[1] = _unit([0.995, 0.0, 0.0998])[0], _unit([0.98, 0.0, 0.199])[0]
    return query, old, new, np.array([0]), np.array([0, 1])


def test_hand_made_case_naive_scoring_fails_and_the_rule_does_not(tmp_path):
    query, old, new, query_labels, gallery_labels = hand_made_case()
    new_old = top1_under_rule(old, new, query, 2, np.array([False, False]), query_labels, gallery_labels)
    assert new_old == 100.0
    item_1_backfilled = np.array([False, True])
    assert top1_under_rule(old, new, query, 2, item_1_backfilled, query_labels, gallery_labels, rule="naive") == 0.0
    assert top1_under_rule(old, new, query, 2, item_1_backfilled, query_labels, gallery_labels) == 100.0
    both = np.array([True, True])
    assert top1_under_rule(old, new, query, 2, both, query_labels, gallery_labels) == 100.0

    # The same on a gallery on disk, through a real backfill of item 1.
    gallery = FaissGallery.build(tmp_path / "g", old, ["a", "b"], encoder={"fingerprint": OLD, "embedding_dim": 2})
    gallery.start_backfill(dict(model=NEW_IDENTITY, dimension=3, order="random", seed=0, done=0, count=2, target=2,
                                batch_size=1), np.array([1, 0]))  # fmt: skip
    gallery.write_backfill_batch(np.array([1]), new[[1]], done=1)
    slots = search_gallery(
        FaissGallery.open(tmp_path / "g"), query, k=2, query_config=NEW_CONFIG, allow_unmeasured=True
    )
    naive = search_gallery(gallery, query, k=2, query_config=NEW_CONFIG, rule="naive", allow_unmeasured=True)
    assert slots.ids == [["a", "b"]] and slots.backfilled.tolist() == [[False, True]]
    assert naive.ids == [["b", "a"]]
    np.testing.assert_allclose(slots.new_scores[0, 1], float(query[0] @ new[1]), atol=1e-6)
    # The old model itself still searches the encoder's vectors only.
    assert search_gallery(gallery, query[:, :2], k=1, query_config=OLD_CONFIG).ids == [["a"]]


def _synthetic_pair(count=600, classes=12, seed=0):
    """Old and BT²-like new embeddings: new prefix ≈ old, new/new sharper (and on a higher cosine scale)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    centres_old, centres_extra = rng.normal(size=(classes, 8)), rng.normal(size=(classes, 4))
    old = centres_old[labels] + 1.1 * rng.normal(size=(count, 8))
    new = np.concatenate([old + 0.3 * rng.normal(size=(count, 8)), 2.0 * centres_extra[labels]
                          + 0.6 * rng.normal(size=(count, 4))], axis=1)  # fmt: skip
    return old.astype(np.float32), new.astype(np.float32), labels


@pytest.mark.parametrize("order", ["random", "centroid-distance"])
def test_rule_never_falls_below_new_to_old_and_reaches_new_to_new(order):
    from bt2_hf.retrieval.backfill import backfill_order

    old, new, labels = _synthetic_pair()
    permutation = backfill_order(old, labels, order)
    curve = []
    for beta in (0.0, 0.1, 0.3, 0.5, 0.8, 1.0):
        use_new = np.zeros(len(old), dtype=bool)
        use_new[permutation[: int(beta * len(old))]] = True
        curve.append(top1_under_rule(old, new, new, 8, use_new, labels))
    none = np.zeros(len(old), dtype=bool)
    new_to_old = top1_under_rule(old, new, new, 8, none, labels, rule="naive")
    new_to_new = top1_under_rule(new, new, new, 12, ~none, labels, rule="naive")
    assert new_to_new > new_to_old + 5  # the update is worth backfilling
    assert curve[0] == new_to_old and curve[-1] == new_to_new
    assert min(curve) >= new_to_old - 0.5


def _backfilled_gallery(tmp_path, old, new, rows):
    gallery = FaissGallery.build(tmp_path / "g", old, list(range(len(old))),
                                 encoder={"fingerprint": OLD, "embedding_dim": old.shape[1]})  # fmt: skip
    order = np.concatenate([rows, np.setdiff1d(np.arange(len(old)), rows)])
    gallery.start_backfill(dict(model=dict(NEW_IDENTITY, embedding_dim=new.shape[1]), dimension=new.shape[1],
                                order="random", seed=0, done=0, count=len(old), target=len(old), batch_size=len(rows)),
                           order)  # fmt: skip
    if len(rows):
        gallery.write_backfill_batch(rows, new[rows], done=len(rows))
    return FaissGallery.open(tmp_path / "g")


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 1.0])
def test_gallery_search_fills_the_slots_with_the_best_re_embedded_items(tmp_path, fraction):
    old, new, _ = _synthetic_pair(count=240)
    new_config = Config(NEW, 12, [{"fingerprint": OLD, "embedding_dim": 8, "name_or_path": "aaa"}])
    gallery_old, gallery_new, queries = old[:200], new[:200], new[200:]
    rows = np.random.default_rng(1).permutation(200)[: int(fraction * 200)]
    gallery = _backfilled_gallery(tmp_path, gallery_old, gallery_new, rows)
    result = search_gallery(gallery, queries, k=10, query_config=new_config, allow_unmeasured=True, rule="slots")

    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    old_rank = np.argsort(-(unit(queries[:, :8]) @ unit(gallery_old).T), axis=1)[:, :10]
    new_scores = unit(queries) @ unit(gallery_new).T
    is_new = np.isin(np.arange(200), rows)
    for query in range(len(queries)):
        slots = is_new[old_rank[query]]
        # Items not re-embedded keep new→old's positions ...
        np.testing.assert_array_equal(result.rows[query][~slots], old_rank[query][~slots])
        # ... and the slots hold the re-embedded items in new/new order, best first.
        by_new = rows[np.argsort(-new_scores[query, rows])][: slots.sum()]
        np.testing.assert_array_equal(result.rows[query][slots], by_new)
        np.testing.assert_allclose(result.new_scores[query][slots], new_scores[query, by_new], atol=1e-5)
        assert result.backfilled[query].tolist() == slots.tolist()
    if fraction == 1.0:  # every position is a slot: exactly new/new
        np.testing.assert_array_equal(result.rows, np.argsort(-new_scores, axis=1)[:, :10])


def _gallery_and_models(saved_models, tmp_path, count=96):
    rng = np.random.default_rng(5)
    data = write_idx(tmp_path / "data", rng.integers(0, 256, (count, 28, 28)), rng.integers(0, 10, count))
    old = BT2Model.from_pretrained(saved_models["old"])
    embeddings = embed_dataset(old, data, tmp_path / "emb", dtype="float32", show_progress=False)
    FaissGallery.from_embeddings(tmp_path / "g", embeddings)
    new = BT2Model.from_pretrained(saved_models["new"])
    return data, new, new.encode(images=open_source(data).items(0, count)).numpy()


def test_backfill_in_place_records_models_and_refuses_mixing(saved_models, tmp_path):
    data, new, expected = _gallery_and_models(saved_models, tmp_path)
    gallery = FaissGallery.open(tmp_path / "g")
    state = backfill(
        gallery, new, data, fraction=0.25, order="priority", batch_size=10, show_progress=False, allow_unmeasured=True
    )
    assert state["done"] == 24 and state["target"] == 24 and state["model"]["fingerprint"] == new.config.fingerprint
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["backfill"]["done"] == 24 and manifest["backfill"]["order"] == "priority"
    rows = gallery.backfill_order()[:24]
    np.testing.assert_allclose(gallery.backfill_vectors(rows), expected[rows], atol=1e-5)
    assert gallery.backfilled_mask().sum() == 24
    with pytest.raises(GalleryError, match="not 'random'"):
        backfill(gallery, new, data, fraction=0.5, order="random", show_progress=False, allow_unmeasured=True)
    with pytest.raises(IncompatibleModelsError):
        backfill(gallery, BT2Model.from_pretrained(saved_models["other"]), data, fraction=0.5, show_progress=False)
    with pytest.raises(GalleryError, match="finish the backfill"):
        finalize_backfill(gallery)
    state = backfill(
        gallery, new, data, fraction=1.0, order="priority", batch_size=50, show_progress=False, allow_unmeasured=True
    )
    assert state["done"] == 96
    finalize_backfill(gallery)
    final = FaissGallery.open(tmp_path / "g")
    assert final.encoder["fingerprint"] == new.config.fingerprint and final.dimension == 12
    assert final.backfill_state is None
    np.testing.assert_allclose(np.asarray(final.vectors), expected, atol=1e-5)
    result = search_gallery(final, expected[:3], k=1, query_config=new.config)
    assert [row[0] for row in result.ids] == [0, 1, 2]


@pytest.mark.slow
def test_backfill_survives_kill_9_at_any_moment(saved_models, tmp_path):
    data, new, expected = _gallery_and_models(saved_models, tmp_path, count=200)
    command = [PYTHON, "-m", "bt2_hf.cli.backfill", "--index", str(tmp_path / "g"), "--model", str(saved_models["new"]),
               "--data", str(data), "--fraction", "1.0", "--order", "random", "--batch-size", "4",
               "--embed-batch-size", "4", "--no-progress", "--allow-unmeasured"]  # fmt: skip
    process = subprocess.Popen(command, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    manifest_path = tmp_path / "g" / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = json.loads(manifest_path.read_text()).get("backfill")
        if state and state["done"] >= 12:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    gallery = FaissGallery.open(tmp_path / "g")
    done = gallery.backfill_state["done"]
    assert 12 <= done < 200 and done % 4 == 0  # the state after a completed batch
    rows = gallery.backfill_order()[:done]
    np.testing.assert_allclose(gallery.backfill_vectors(rows), expected[rows], atol=1e-5)
    resumed = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    gallery = FaissGallery.open(tmp_path / "g")
    assert gallery.backfill_state["done"] == 200 and gallery.backfilled_mask().all()
    np.testing.assert_allclose(gallery.backfill_vectors(np.arange(200)), expected, atol=1e-5)


@pytest.mark.parametrize("same_items", [True, False])
def test_backfill_curves_in_one_pass_equal_the_rule_state_by_state(same_items):
    from bt2_hf.galleries.mixed import top1_along_backfill

    old, new, labels = _synthetic_pair(count=300, seed=3)
    # Ties on purpose: duplicated items score equally, and the lowest row must win in both implementations.
    old[150:160], new[150:160] = old[140:150], new[140:150]
    gallery_old, gallery_new = (old, new) if same_items else (old[:250], new[:250])
    queries, query_labels = (new, labels) if same_items else (new[250:], labels[250:])
    gallery_labels = None if same_items else labels[:250]
    order = np.random.default_rng(0).permutation(len(gallery_old))
    counts = [0, 1, 30, 125, 200, len(gallery_old) - 1, len(gallery_old)]
    # A few candidates force the full re-scoring of the queries they do not decide.
    fast = top1_along_backfill(gallery_old, gallery_new, queries, 8, order, counts, query_labels, gallery_labels,
                               candidates=4)  # fmt: skip
    for position, count in enumerate(counts):
        use_new = np.zeros(len(gallery_old), dtype=bool)
        use_new[order[:count]] = True
        expected = top1_under_rule(gallery_old, gallery_new, queries, 8, use_new, query_labels, gallery_labels,
                                   rule=["slots", "naive"])  # fmt: skip
        assert fast["slots"][position] == expected["slots"] and fast["naive"][position] == expected["naive"], count
