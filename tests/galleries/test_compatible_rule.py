"""The ``compatible`` mixed-gallery rule: positions by encoder-space cosines (items not re-embedded) and, for
re-embedded items, the larger of that and their compatible-block cosine minus a per-query margin, in one sort; the
re-embedded positions filled by new/new score.

Checked exactly on synthetic galleries against a brute-force NumPy reference written here from the rule's
definition: the served search on faiss and on Milvus galleries (also when the encoder-space search has to go
deeper), the retrieval-set ranking (``top_k_under_rule``, also with an adapter's compatible vectors), the top-1 helpers
(``top1_under_rule``, and the one-pass curves state by state); and a backfill whose model records no compatible block
is ranked by the slot rule, and the result says so.
"""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.galleries import FaissGallery, search_gallery, top1_under_rule, top_k_under_rule
from bt2_hf.galleries.mixed import MARGIN_SPREADS, SPREAD_RANK, top1_along_backfill

from .test_backfill import NEW_IDENTITY, OLD
from .test_calibrated_rule import NEW_CONFIG, unit

IDENTITY = dict(NEW_IDENTITY, embedding_dim=12, compatible_dim=8)


def reference_ranking(prefix_queries, new_queries, gallery_old, gallery_compatible, gallery_new, use_new, k):
    """The rule from its definition, query by query: every item not re-embedded scores its encoder-space cosine,
    every re-embedded item the larger of that and the cosine of its compatible vector minus the query's margin
    (MARGIN_SPREADS × its best minus its SPREAD_RANK-th best encoder-space cosine); one sort gives the positions;
    the positions held by
    re-embedded items take, in order, the re-embedded items sorted by new/new cosine. Returns rows, position scores
    and the new/new cosine of each hit (NaN for items not re-embedded)."""
    rows, scores, new_cosines = [], [], []
    for query in range(len(prefix_queries)):
        old_side = unit(gallery_old) @ unit(prefix_queries[query : query + 1])[0]
        compatible_side = unit(gallery_compatible) @ unit(prefix_queries[query : query + 1])[0]
        new_side = unit(gallery_new) @ unit(new_queries[query : query + 1])[0]
        ranked = sorted(old_side, reverse=True)
        margin = MARGIN_SPREADS * (ranked[0] - ranked[min(SPREAD_RANK, len(ranked)) - 1])
        position_score = {
            row: (max(compatible_side[row] - margin, old_side[row]) if use_new[row] else old_side[row])
            for row in range(len(use_new))
        }
        positions = sorted(position_score, key=lambda row: (-position_score[row], row))[:k]
        by_new = iter(sorted(np.flatnonzero(use_new), key=lambda row: (-new_side[row], row)))
        hits = [int(next(by_new)) if use_new[row] else row for row in positions]
        rows.append(hits)
        scores.append([position_score[row] for row in positions])
        new_cosines.append([new_side[row] if use_new[row] else np.nan for row in hits])
    return np.asarray(rows), np.asarray(scores), np.asarray(new_cosines)


def compatible_pair(count, seed, classes=12):
    """Old and BT²-like new embeddings (8-d old; 8 + 4-d new) whose new compatible block is sharper than the old
    vectors (closer to the class centres), so that compatible-block cosines run higher and promote items."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    centres = rng.normal(size=(classes, 8))
    old = centres[labels] + 1.0 * rng.normal(size=(count, 8))
    prefix = centres[labels] + 0.4 * rng.normal(size=(count, 8))
    extra = 2.0 * rng.normal(size=(classes, 4))[labels] + 0.6 * rng.normal(size=(count, 4))
    return old.astype(np.float32), np.concatenate([prefix, extra], 1).astype(np.float32), labels


def backfilled_faiss(path, old, new, rows):
    gallery = FaissGallery.build(path, old, list(range(len(old))), encoder={"fingerprint": OLD, "embedding_dim": 8})
    start_backfill(gallery, old, new, rows, "random")
    return FaissGallery.open(path)


def start_backfill(gallery, old, new, rows, order):
    sequence = np.concatenate([rows, np.setdiff1d(np.arange(len(old)), rows)])
    gallery.start_backfill(dict(model=IDENTITY, dimension=12, order=order, seed=0, done=0, count=len(old),
                                target=len(old), batch_size=len(rows)), sequence)  # fmt: skip
    gallery.write_backfill_batch(rows, new[rows], done=len(rows))


def search(gallery, queries, k, rule="compatible"):
    return search_gallery(gallery, queries, k=k, query_config=NEW_CONFIG, allow_unmeasured=True, rule=rule)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.7, 0.97])
def test_faiss_search_equals_the_rule_computed_by_brute_force(tmp_path, fraction):
    old, new, _ = compatible_pair(count=640, seed=4)
    gallery_old, gallery_new, queries = old[:600], new[:600], new[600:]
    rows = np.sort(np.random.default_rng(2).permutation(600)[: int(fraction * 600)])
    use_new = np.isin(np.arange(600), rows)
    k = 20  # at 97 %, 20 positions need most of the encoder-space ranking: the search goes deeper
    result = search(backfilled_faiss(tmp_path / "g", gallery_old, gallery_new, rows), queries, k)
    assert result.rule == "compatible"
    expected_rows, expected_scores, expected_new = reference_ranking(queries[:, :8], queries, gallery_old,
                                                                     gallery_new[:, :8], gallery_new, use_new, k)  # fmt: skip
    np.testing.assert_array_equal(result.rows, expected_rows)
    np.testing.assert_allclose(result.scores, expected_scores, atol=1e-5)
    np.testing.assert_allclose(result.new_scores, expected_new, atol=1e-5)
    assert result.backfilled.tolist() == use_new[result.rows].tolist()
    assert (np.diff(result.scores, axis=1) <= 1e-6).all()  # the positions' scores are a ranking
    slots = search(FaissGallery.open(tmp_path / "g"), queries, k, rule="slots")
    assert (result.rows != slots.rows).any()  # the reference can tell the two rules apart on this gallery


def test_a_backfill_model_without_a_recorded_compatible_block_is_ranked_by_the_slot_rule(tmp_path):
    old, new, _ = compatible_pair(count=440, seed=6)
    rows = np.sort(np.random.default_rng(1).permutation(400)[:150])
    gallery = FaissGallery.build(tmp_path / "g", old[:400], list(range(400)),
                                 encoder={"fingerprint": OLD, "embedding_dim": 8})  # fmt: skip
    sequence = np.concatenate([rows, np.setdiff1d(np.arange(400), rows)])
    gallery.start_backfill(dict(model=dict(NEW_IDENTITY, embedding_dim=12), dimension=12, order="random", seed=0,
                                done=0, count=400, target=400, batch_size=150), sequence)  # fmt: skip
    gallery.write_backfill_batch(rows, new[rows], done=150)
    gallery = FaissGallery.open(tmp_path / "g")
    compatible, slots = search(gallery, new[400:], 10), search(gallery, new[400:], 10, rule="slots")
    assert compatible.rule == "slots" and compatible.rows.tolist() == slots.rows.tolist()
    recorded = search(backfilled_faiss(tmp_path / "h", old[:400], new[:400], rows), new[400:], 10)
    assert recorded.rule == "compatible" and (recorded.rows != slots.rows).any()


def test_milvus_search_equals_faiss(tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from bt2_hf.galleries.milvus_store import MilvusGallery

    old, new, _ = compatible_pair(count=330, seed=8)
    gallery_old, gallery_new, queries = old[:300], new[:300], new[300:]
    rows = np.sort(np.random.default_rng(4).permutation(300)[:120])
    milvus = MilvusGallery.build(str(tmp_path / "g.db"), "items", gallery_old, list(range(300)),
                                 encoder={"fingerprint": OLD, "embedding_dim": 8})  # fmt: skip
    start_backfill(milvus, gallery_old, gallery_new, rows, "random")
    milvus = MilvusGallery.open(str(tmp_path / "g.db"), "items")
    result = search(milvus, queries, 10)
    expected = search(backfilled_faiss(tmp_path / "faiss", gallery_old, gallery_new, rows), queries, 10)
    assert result.rule == "compatible"
    np.testing.assert_array_equal(result.rows, expected.rows)
    np.testing.assert_allclose(result.scores, expected.scores, atol=1e-5)


@pytest.mark.parametrize("fraction", [0.1, 0.6])
def test_top_k_under_rule_equals_the_reference(fraction):
    old, new, _ = compatible_pair(count=440, seed=7)
    rng = np.random.default_rng(0)
    gallery_old, gallery_new, queries = old[:400], new[:400], new[400:]
    use_new = rng.random(400) < fraction
    k = 12
    got = top_k_under_rule(queries[:, :8], gallery_old, queries, gallery_new, use_new, k, rule="compatible", chunk=16)
    expected, _, _ = reference_ranking(
        queries[:, :8], queries, gallery_old, gallery_new[:, :8], gallery_new, use_new, k
    )
    np.testing.assert_array_equal(got, expected)
    # A post-hoc pair: the old-space query is an adapter's output, and so are the re-embedded items' compatible vectors.
    adapted, adapted_gallery = queries[:, :8] + 0.5 * rng.normal(size=(40, 8)), gallery_new[:, :8] + 0.5 * rng.normal(
        size=(400, 8))  # fmt: skip
    got = top_k_under_rule(adapted, gallery_old, queries, gallery_new, use_new, k, rule="compatible",
                           compatible_gallery=adapted_gallery)  # fmt: skip
    expected, scores, _ = reference_ranking(adapted, queries, gallery_old, adapted_gallery, gallery_new, use_new, k)
    # float32 against float64: rows may differ only where the reference's position scores tie within 1e-5
    tied = np.zeros(scores.shape, dtype=bool)
    tied[:, 1:] |= np.abs(np.diff(scores, axis=1)) < 1e-5
    tied[:, :-1] |= tied[:, 1:].copy()
    assert (got == expected)[~tied].all() and (got != expected).sum() <= 2
    none, every = np.zeros(400, dtype=bool), np.ones(400, dtype=bool)  # the ends: new → old, and new/new
    for mask, scores in (
        (none, unit(queries[:, :8]) @ unit(gallery_old).T),
        (every, unit(queries) @ unit(gallery_new).T),
    ):
        np.testing.assert_array_equal(top_k_under_rule(queries[:, :8], gallery_old, queries, gallery_new, mask, k,
                                                       rule="compatible"), np.argsort(-scores, axis=1)[:, :k])  # fmt: skip
    with pytest.raises(ValueError, match="compatible_gallery"):
        top_k_under_rule(queries[:, :8], gallery_old, queries, gallery_new, use_new, k, rule="compatible",
                         compatible_gallery=adapted_gallery[:10])  # fmt: skip


@pytest.mark.parametrize("same_items", [True, False])
def test_top1_helpers_equal_the_reference(same_items):
    old, new, labels = compatible_pair(count=300, seed=3)
    gallery_old, gallery_new = (old, new) if same_items else (old[:250], new[:250])
    queries, query_labels = (new, labels) if same_items else (new[250:], labels[250:])
    gallery_labels = None if same_items else labels[:250]
    order = np.random.default_rng(0).permutation(len(gallery_old))
    counts = [0, 1, 7, 60, 125, 200, len(gallery_old) - 1, len(gallery_old)]
    # candidates=4: most states need a full re-scoring of some queries, which the reference must agree with too
    fast = top1_along_backfill(gallery_old, gallery_new, queries, 8, order, counts, query_labels, gallery_labels,
                               rules=["compatible", "slots"], candidates=4)  # fmt: skip
    truth = labels if gallery_labels is None else gallery_labels
    for position, count in enumerate(counts):
        use_new = np.zeros(len(gallery_old), dtype=bool)
        use_new[order[:count]] = True
        if same_items:  # leave-one-out: the reference ranks each query against the other items
            hits = []
            for query in range(len(queries)):
                others = np.arange(len(gallery_old)) != query
                rows, _, _ = reference_ranking(queries[query : query + 1, :8], queries[query : query + 1],
                                               gallery_old[others], gallery_new[others, :8], gallery_new[others],
                                               use_new[others], 1)  # fmt: skip
                hits.append(np.flatnonzero(others)[rows[0, 0]])
        else:
            rows, _, _ = reference_ranking(queries[:, :8], queries, gallery_old, gallery_new[:, :8], gallery_new,
                                           use_new, 1)  # fmt: skip
            hits = rows[:, 0]
        expected = 100.0 * float(np.mean(truth[np.asarray(hits)] == query_labels))
        assert fast["compatible"][position] == pytest.approx(expected), count
        assert top1_under_rule(gallery_old, gallery_new, queries, 8, use_new, query_labels, gallery_labels,
                               rule="compatible") == pytest.approx(expected), count  # fmt: skip


def index_search_cli(tmp_path, queries, rule, capsys, k=3):
    """``bt2 index search`` of the gallery ``tmp_path / "g"`` with new-model ``queries`` under ``rule``: its output."""
    import json

    from bt2_hf.cli.index import main as index_main

    np.save(tmp_path / "queries.npy", queries)
    config = {"model_type": "bt2", "fingerprint": NEW_CONFIG.fingerprint, "embedding_dim": 12, "name_or_path": "bbb",
              "compatible_with": NEW_CONFIG.compatible_with}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert index_main(["search", "--index", str(tmp_path / "g"), "--queries", str(tmp_path / "queries.npy"),
                       "--query_config", str(tmp_path / "config.json"), "-k", str(k), "--allow_unmeasured", "--rule",
                       rule]) == 0  # fmt: skip
    return json.loads(capsys.readouterr().out)


def test_index_search_cli_takes_the_compatible_rule(tmp_path, capsys):
    old, new, _ = compatible_pair(count=240, seed=9)
    backfilled_faiss(tmp_path / "g", old[:200], new[:200], np.arange(120))
    output = index_search_cli(tmp_path, new[200:205], "compatible", capsys)
    expected = search(FaissGallery.open(tmp_path / "g"), new[200:205], 3)
    assert output["rule"] == "compatible"
    assert [[hit["row"] for hit in query["items"]] for query in output["results"]] == expected.rows.tolist()


def test_the_exact_scans_equal_brute_force(tmp_path):
    from bt2_hf.galleries.mixed import compatible_block_scan, prefix_scan

    old, new, _ = compatible_pair(count=330, seed=10)
    rows = np.sort(np.random.default_rng(5).permutation(300)[:90])
    gallery = backfilled_faiss(tmp_path / "g", old[:300], new[:300], rows)
    queries = unit(new[300:, :8]).astype(np.float32)
    scores, found = prefix_scan(gallery, unit(queries[:, :5]).astype(np.float32), 5, 7)  # a shared 5-d prefix
    brute = unit(queries[:, :5]) @ unit(old[:300, :5]).T
    np.testing.assert_array_equal(found, np.argsort(-brute, axis=1)[:, :7])
    np.testing.assert_allclose(scores, -np.sort(-brute, axis=1)[:, :7], atol=1e-5)
    scores, found = compatible_block_scan(gallery, queries, 8, 7)  # the re-embedded rows' compatible blocks only
    brute = unit(queries) @ unit(new[rows, :8]).T
    np.testing.assert_array_equal(found, rows[np.argsort(-brute, axis=1)[:, :7]])
    np.testing.assert_allclose(scores, -np.sort(-brute, axis=1)[:, :7], atol=1e-5)
    padded_scores, padded = compatible_block_scan(gallery, queries, 8, 100)  # deeper than the 90 re-embedded: pads
    assert (padded[:, 90:] == -1).all() and np.isneginf(padded_scores[:, 90:]).all()
