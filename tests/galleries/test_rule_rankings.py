"""``top_k_under_rule``: the mixed-gallery rules' top-k rows for retrieval sets (qrels), by brute force.

Checked against two independent references: the deployed search (``search_gallery`` on a real flat faiss gallery
backfilled in place) for every rule, and, for an old-space query that is not a prefix of the new one (a post-hoc
adapter's output), the slot and naive rules written out query by query from their definitions.
"""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.galleries import search_gallery, top_k_under_rule
from bt2_hf.galleries.mixed import MIN_CALIBRATION_ITEMS

from .test_backfill import _synthetic_pair
from .test_calibrated_rule import NEW_CONFIG, backfilled_gallery, unit


@pytest.mark.parametrize("rule", ["slots", "calibrated", "naive"])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.7])
def test_rows_equal_the_gallery_search(tmp_path, rule, fraction):
    old, new, _ = _synthetic_pair(count=640, seed=5)
    gallery_old, gallery_new, queries = old[:600], new[:600], new[600:]
    rows = np.sort(np.random.default_rng(3).permutation(600)[: int(fraction * 600)])
    assert (len(rows) < MIN_CALIBRATION_ITEMS) == (fraction == 0.05)  # the smallest state: the slot rule ranks
    use_new = np.isin(np.arange(600), rows)
    gallery = backfilled_gallery(tmp_path, gallery_old, gallery_new, rows)
    # depth=600: the naive rule re-scores the whole gallery, as top_k_under_rule does
    expected = search_gallery(gallery, queries, k=10, query_config=NEW_CONFIG, allow_unmeasured=True, rule=rule,
                              depth=600).rows  # fmt: skip
    got = top_k_under_rule(queries[:, :8], gallery_old, queries, gallery_new, use_new, 10, rule=rule, chunk=16)
    np.testing.assert_array_equal(got, expected)


def test_adapter_queries_follow_the_rules_definitions():
    old, new, _ = _synthetic_pair(count=440, seed=6)
    rng = np.random.default_rng(0)
    gallery_old, gallery_new, queries = old[:400], new[:400], new[400:]
    adapted = queries[:, :8] + 0.8 * rng.normal(size=(40, 8)).astype(np.float32)  # not the new query's prefix
    use_new = rng.random(400) < 0.4
    k = 15
    old_scores, new_scores = unit(adapted) @ unit(gallery_old).T, unit(queries) @ unit(gallery_new).T
    slots = top_k_under_rule(adapted, gallery_old, queries, gallery_new, use_new, k, rule="slots")
    naive = top_k_under_rule(adapted, gallery_old, queries, gallery_new, use_new, k, rule="naive")
    for query in range(len(queries)):
        # slots: positions from the old-space ranking; re-embedded positions take the re-embedded items by new/new
        by_new = iter(sorted(np.flatnonzero(use_new), key=lambda row: -new_scores[query, row]))
        expected = [next(by_new) if use_new[row] else row for row in np.argsort(-old_scores[query])[:k]]
        assert slots[query].tolist() == expected
        combined = np.where(use_new, new_scores[query], old_scores[query])
        assert naive[query].tolist() == np.argsort(-combined)[:k].tolist()
    assert (slots != naive).any()  # the two rules differ on this gallery, so the comparison above can tell them apart
    none, every = np.zeros(400, dtype=bool), np.ones(400, dtype=bool)
    for rule in ("slots", "calibrated", "naive"):  # the ends: new → old, and new/new
        ends = [top_k_under_rule(adapted, gallery_old, queries, gallery_new, mask, k, rule=rule) for mask in
                (none, every)]  # fmt: skip
        np.testing.assert_array_equal(ends[0], np.argsort(-old_scores, axis=1)[:, :k])
        np.testing.assert_array_equal(ends[1], np.argsort(-new_scores, axis=1)[:, :k])
