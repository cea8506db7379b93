"""The ``calibrated`` mixed-gallery rule: per-query standardised new-space cosines, gated by neighbourhood coverage.

Checked exactly on synthetic galleries: the search equals a brute-force NumPy reference written here from the rule's
definition (also when the encoder-space search has to go deeper), the one-pass curves equal the rule state by state,
and on a pair built like the demo's (new/new cosines on a higher scale, priority order = the atypical items first)
the rule never falls below new → old on either order while it gains faster than the slot rule on a random order
(a gain this pair shows, not one the rule guarantees).
"""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.galleries import FaissGallery, mixed_backfill_curves, search_gallery, top1_under_rule
from bt2_hf.galleries.mixed import GATE, MIN_CALIBRATION_ITEMS, NEIGHBOURHOOD, top1_along_backfill

from .test_backfill import NEW, NEW_IDENTITY, OLD, Config, _synthetic_pair

NEW_CONFIG = Config(NEW, 12, [{"fingerprint": OLD, "embedding_dim": 8, "name_or_path": "aaa"}])


def unit(array):
    array = np.asarray(array, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def reference_ranking(queries, gallery_old, gallery_new, backfilled_rows, k):
    """The rule from its definition: per query, mean and sd of the cosines with every re-embedded item in each space
    (fewer than 1,000 here, so all of them); a re-embedded item's new/new cosine s becomes
    (s − mean_new) / sd_new · sd_old + mean_old; every other item keeps its new → old cosine; one sort."""
    old_scores = unit(queries[:, :8]) @ unit(gallery_old).T
    new_scores = unit(queries) @ unit(gallery_new).T
    mask = np.zeros(len(gallery_old), dtype=bool)
    mask[backfilled_rows] = True
    old_sample, new_sample = old_scores[:, mask], new_scores[:, mask]
    mapped = (new_scores - new_sample.mean(1, keepdims=True)) / new_sample.std(1, keepdims=True)
    mapped = mapped * old_sample.std(1, keepdims=True) + old_sample.mean(1, keepdims=True)
    combined = np.where(mask[None, :], mapped, old_scores)
    return np.argsort(-combined, axis=1, kind="stable")[:, :k], np.sort(combined, axis=1)[:, ::-1][:, :k]


def backfilled_gallery(tmp_path, old, new, rows):
    gallery = FaissGallery.build(tmp_path / "g", old, list(range(len(old))),
                                 encoder={"fingerprint": OLD, "embedding_dim": old.shape[1]})  # fmt: skip
    order = np.concatenate([rows, np.setdiff1d(np.arange(len(old)), rows)])
    gallery.start_backfill(dict(model=dict(NEW_IDENTITY, embedding_dim=new.shape[1]), dimension=new.shape[1],
                                order="random", seed=0, done=0, count=len(old), target=len(old), batch_size=len(rows)),
                           order)  # fmt: skip
    gallery.write_backfill_batch(rows, new[rows], done=len(rows))
    return FaissGallery.open(tmp_path / "g")


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.7, 0.97])
def test_search_equals_the_rule_computed_by_brute_force(tmp_path, fraction):
    old, new, _ = _synthetic_pair(count=640, seed=4)
    gallery_old, gallery_new, queries = old[:600], new[:600], new[600:]
    rows = np.sort(np.random.default_rng(2).permutation(600)[: int(fraction * 600)])
    gallery = backfilled_gallery(tmp_path, gallery_old, gallery_new, rows)
    k = 20  # at 97 %, 20 hits need most of the gallery's encoder-space ranking: the search goes deeper
    result = search_gallery(gallery, queries, k=k, query_config=NEW_CONFIG, allow_unmeasured=True, rule="calibrated")
    assert result.rule == "calibrated"
    expected_rows, expected_scores = reference_ranking(queries, gallery_old, gallery_new, rows, k)
    # The gate, from its definition: at least 1.2 β of a query's 20 nearest items (encoder space) re-embedded.
    nearest = np.argsort(-(unit(queries[:, :8]) @ unit(gallery_old).T), axis=1)[:, :NEIGHBOURHOOD]
    covered = np.isin(nearest, rows).mean(axis=1) >= GATE * len(rows) / 600
    assert covered.any() or fraction > 1 / GATE  # above 1/GATE no query can pass: the slot rule ranks them all
    slots = search_gallery(gallery, queries, k=k, query_config=NEW_CONFIG, allow_unmeasured=True, rule="slots")
    np.testing.assert_array_equal(result.rows[covered], expected_rows[covered])
    np.testing.assert_allclose(result.scores[covered], expected_scores[covered], atol=1e-5)
    np.testing.assert_array_equal(result.rows[~covered], slots.rows[~covered])
    assert result.backfilled.tolist() == np.isin(result.rows, rows).tolist()
    new_cosines = unit(queries) @ unit(gallery_new).T
    flagged = result.backfilled
    np.testing.assert_allclose(result.new_scores[flagged], np.take_along_axis(new_cosines, result.rows, 1)[flagged],
                               atol=1e-5)  # fmt: skip
    assert np.isnan(result.new_scores[~flagged]).all()
    assert all(hit["backfilled"] == flag for hit, flag in zip(result.hits()[0], flagged[0]))


def test_search_says_which_rule_ranked(tmp_path):
    old, new, _ = _synthetic_pair(count=240, seed=5)
    few = np.arange(MIN_CALIBRATION_ITEMS - 1)  # too few to measure a spread: the slot rule ranks meanwhile
    gallery = backfilled_gallery(tmp_path, old[:200], new[:200], few)
    result = search_gallery(gallery, new[200:], k=5, query_config=NEW_CONFIG, allow_unmeasured=True, rule="calibrated")
    slots = search_gallery(gallery, new[200:], k=5, query_config=NEW_CONFIG, allow_unmeasured=True, rule="slots")
    assert result.rule == "slots" and result.rows.tolist() == slots.rows.tolist()
    naive = search_gallery(gallery, new[200:], k=5, query_config=NEW_CONFIG, allow_unmeasured=True, rule="naive")
    assert naive.rule == "naive"
    assert search_gallery(gallery, new[200:, :8], k=5, query_config=Config(OLD, 8)).rule == "encoder"
    with pytest.raises(ValueError, match="rule must be one of"):
        search_gallery(gallery, new[200:], k=5, query_config=NEW_CONFIG, allow_unmeasured=True, rule="best")


@pytest.mark.parametrize("same_items", [True, False])
def test_one_pass_curves_equal_the_rule_state_by_state(same_items):
    old, new, labels = _synthetic_pair(count=300, seed=3)
    gallery_old, gallery_new = (old, new) if same_items else (old[:250], new[:250])
    queries, query_labels = (new, labels) if same_items else (new[250:], labels[250:])
    gallery_labels = None if same_items else labels[:250]
    order = np.random.default_rng(0).permutation(len(gallery_old))
    counts = [0, 1, MIN_CALIBRATION_ITEMS - 1, MIN_CALIBRATION_ITEMS, 125, 200, len(gallery_old) - 1,
              len(gallery_old)]  # fmt: skip
    fast = top1_along_backfill(gallery_old, gallery_new, queries, 8, order, counts, query_labels, gallery_labels,
                               rules=["calibrated"], candidates=4)  # fmt: skip
    for position, count in enumerate(counts):
        use_new = np.zeros(len(gallery_old), dtype=bool)
        use_new[order[:count]] = True
        expected = top1_under_rule(gallery_old, gallery_new, queries, 8, use_new, query_labels, gallery_labels,
                                   rule="calibrated")  # fmt: skip
        assert fast["calibrated"][position] == expected, count


def demo_like_pair(count=1500, classes=10, seed=0):
    """Old embeddings noisy, a third of the items atypical (far noisier in the old space); the new model's extra
    dimensions separate the classes, and its cosines run on a higher scale (a shared offset direction)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    atypical = rng.random(count) < 0.3
    centres = rng.normal(size=(classes, 8))
    old = centres[labels] + np.where(atypical[:, None], 2.5, 1.0) * rng.normal(size=(count, 8))
    prefix = old + 0.3 * rng.normal(size=(count, 8))
    extra = 1.5 * rng.normal(size=(classes, 4))[labels] + np.where(atypical[:, None], 1.6, 0.6) * rng.normal(
        size=(count, 4))  # fmt: skip
    offset = np.full((count, 2), 3.0)  # every new/new cosine higher: the scale mismatch naive scoring falls for
    return old.astype(np.float32), np.concatenate([prefix, extra, offset], 1).astype(np.float32), labels


def test_never_below_new_to_old_on_either_order_and_faster_than_slots_on_random():
    old, new, labels = demo_like_pair()
    curves = {
        order: mixed_backfill_curves(old, new, labels, 8, order=order) for order in ("random", "centroid-distance")
    }
    for order, rules in curves.items():
        new_to_old, new_to_new = rules["calibrated"]["top1"][0], rules["calibrated"]["top1"][-1]
        assert new_to_new > new_to_old + 5  # an upgrade worth backfilling
        for rule in ("calibrated", "slots", "naive"):
            assert rules[rule]["top1"][0] == new_to_old and rules[rule]["top1"][-1] == new_to_new
        assert min(rules["calibrated"]["top1"]) >= new_to_old, order
    # On a random order the calibrated rule pays off sooner than the slot rule.
    assert curves["random"]["calibrated"]["area"] > curves["random"]["slots"]["area"] + 0.5


def test_index_search_cli_takes_a_rule_and_names_the_one_that_ranked(tmp_path, capsys):
    import json

    from bt2_hf.cli.index import main as index_main

    old, new, _ = _synthetic_pair(count=240, seed=6)
    backfilled_gallery(tmp_path, old[:200], new[:200], np.arange(120))
    np.save(tmp_path / "queries.npy", new[200:205])
    config = {"model_type": "bt2", "fingerprint": NEW, "embedding_dim": 12, "name_or_path": "bbb",
              "compatible_with": NEW_CONFIG.compatible_with}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    base = ["search", "--index", str(tmp_path / "g"), "--queries", str(tmp_path / "queries.npy"), "--query_config",
            str(tmp_path / "config.json"), "-k", "3", "--allow_unmeasured"]  # fmt: skip
    for rule in ("slots", "calibrated", "naive"):
        assert index_main([*base, "--rule", rule]) == 0
        output = json.loads(capsys.readouterr().out)
        assert output["rule"] == rule and len(output["results"]) == 5
    assert index_main([*base, "--rule", "calibrated", "--format", "table"]) == 0
    assert "ranked by the calibrated rule" in capsys.readouterr().out
