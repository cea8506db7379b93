"""The ``adaptive`` mixed-gallery rule: on a random backfill order with at least 5 % of the gallery re-embedded, one
sort of every item by its own cosine (new/new if re-embedded, new→old otherwise); below 5 %, or on any other order,
the slot rule. Checked exactly against a brute-force NumPy reference written here (the served faiss search, the
retrieval-set ranking and the one-pass top-1 curves state by state)."""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.galleries import FaissGallery, top1_under_rule, top_k_under_rule
from bt2_hf.galleries.mixed import ADAPTIVE_MIN_FRACTION, top1_along_backfill

from .test_backfill import OLD
from .test_calibrated_rule import unit
from .test_compatible_rule import IDENTITY, compatible_pair, index_search_cli, search


def one_sort(prefix_queries, new_queries, gallery_old, gallery_new, use_new, k):
    """Every item by its own cosine, one sort; ties to the lowest row."""
    scores = np.where(use_new, unit(new_queries) @ unit(gallery_new).T, unit(prefix_queries) @ unit(gallery_old).T)
    return np.asarray([sorted(range(len(use_new)), key=lambda row: (-line[row], row))[:k] for line in scores])


def gallery_with(path, old, new, fraction, order, seed=0):
    """A faiss gallery of ``old`` whose first ``fraction`` of a backfill order carries ``new``: the random order that
    ``seed`` draws (as ``bt2 backfill`` records it), or, for ``"priority"``, the same rows. The re-embedded rows."""
    gallery = FaissGallery.build(path, old, list(range(len(old))), encoder={"fingerprint": OLD, "embedding_dim": 8})
    sequence = np.random.default_rng(seed).permutation(len(old))
    rows = sequence[: int(fraction * len(old))]
    gallery.start_backfill(dict(model=IDENTITY, dimension=12, order=order, seed=seed, done=0, count=len(old),
                                target=len(old), batch_size=len(rows)), sequence)  # fmt: skip
    gallery.write_backfill_batch(rows, new[rows], done=len(rows))
    return np.sort(rows)


@pytest.mark.parametrize(("fraction", "order", "sorts"), [(0.3, "random", True), (0.97, "random", True),
                                                          (0.03, "random", False), (0.3, "priority", False)])  # fmt: skip
def test_faiss_search_is_one_sort_on_a_random_order_past_5_percent_and_the_slot_rule_otherwise(
    tmp_path, fraction, order, sorts
):
    old, new, _ = compatible_pair(count=640, seed=6)
    gallery_old, gallery_new, queries = old[:600], new[:600], new[600:]
    rows = gallery_with(tmp_path / "g", gallery_old, gallery_new, fraction, order, seed=3)
    use_new = np.isin(np.arange(600), rows)
    k = 20  # at 97 %, the items not re-embedded are deep in the encoder-space ranking: the search goes deeper
    result = search(FaissGallery.open(tmp_path / "g"), queries, k, rule="adaptive")
    assert result.rule == "adaptive"
    slots = search(FaissGallery.open(tmp_path / "g"), queries, k, rule="slots")
    if sorts:
        np.testing.assert_array_equal(result.rows, one_sort(queries[:, :8], queries, gallery_old, gallery_new,
                                                            use_new, k))  # fmt: skip
        assert result.backfilled.tolist() == use_new[result.rows].tolist()
        assert (result.rows != slots.rows).any()  # the reference tells the two rules apart on this gallery
    else:
        np.testing.assert_array_equal(result.rows, slots.rows)


def test_the_retrieval_set_ranking_switches_at_5_percent_on_a_random_order_only():
    old, new, _ = compatible_pair(count=240, seed=7)
    gallery_old, gallery_new, queries = old[:200], new[:200], new[200:]
    order = np.random.default_rng(1).permutation(200)
    below, at = int(ADAPTIVE_MIN_FRACTION * 200) - 1, int(ADAPTIVE_MIN_FRACTION * 200)
    for count, random_order, expected in [(at, True, "naive"), (below, True, "slots"), (120, False, "slots"),
                                          (120, True, "naive")]:  # fmt: skip
        use_new = np.isin(np.arange(200), order[:count])
        rows = top_k_under_rule(queries[:, :8], gallery_old, queries, gallery_new, use_new, 7, rule="adaptive",
                                random_order=random_order)  # fmt: skip
        want = top_k_under_rule(queries[:, :8], gallery_old, queries, gallery_new, use_new, 7, rule=expected)
        np.testing.assert_array_equal(rows, want)
        if expected == "naive":
            np.testing.assert_array_equal(
                rows, one_sort(queries[:, :8], queries, gallery_old, gallery_new, use_new, 7)
            )
    with pytest.raises(ValueError, match="random_order"):
        top_k_under_rule(queries[:, :8], gallery_old, queries, gallery_new, use_new, 7, rule="adaptive")


@pytest.mark.parametrize("random_order", [True, False])
def test_adaptive_curves_in_one_pass_equal_the_rule_state_by_state(random_order):
    old, new, labels = compatible_pair(count=300, seed=8)
    order = np.random.default_rng(4).permutation(300)
    counts = [0, 1, 14, 15, 16, 150, 299, 300]  # 5 % of 300 is 15
    fast = top1_along_backfill(old, new, new, 8, order, counts, labels, rules=["adaptive", "slots", "naive"],
                               candidates=4, random_order=random_order)  # fmt: skip
    for position, count in enumerate(counts):
        use_new = np.isin(np.arange(300), order[:count])
        alone = top1_under_rule(old, new, new, 8, use_new, labels, rule="adaptive", random_order=random_order)
        assert fast["adaptive"][position] == pytest.approx(alone), count
        expected = "naive" if random_order and count >= 15 else "slots"
        assert fast["adaptive"][position] == fast[expected][position], count


def test_index_search_cli_takes_the_adaptive_rule(tmp_path, capsys):
    old, new, _ = compatible_pair(count=240, seed=9)
    rows = gallery_with(tmp_path / "g", old[:200], new[:200], 0.6, "random", seed=5)
    output = index_search_cli(tmp_path, new[200:205], "adaptive", capsys)
    use_new = np.isin(np.arange(200), rows)
    assert output["rule"] == "adaptive"
    assert [[hit["row"] for hit in query["items"]] for query in output["results"]] == one_sort(
        new[200:205, :8], new[200:205], old[:200], new[:200], use_new, 3).tolist()  # fmt: skip


def test_a_manifest_edited_to_say_random_over_another_order_is_ranked_by_the_slot_rule(tmp_path):
    """The attack: a gallery backfilled in another order, its manifest edited to claim a random one. The recorded
    order is not the permutation the seed draws, so the one sort (unsafe on such an order) is not used."""
    import json

    old, new, _ = compatible_pair(count=640, seed=6)
    gallery_old, gallery_new, queries = old[:600], new[:600], new[600:]
    gallery_with(tmp_path / "g", gallery_old, gallery_new, 0.3, "priority", seed=3)
    manifest_path = tmp_path / "g" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["backfill"]["order"], manifest["backfill"]["seed"] = "random", 4  # the rows drawn with seed 3 remain
    manifest_path.write_text(json.dumps(manifest))
    edited = FaissGallery.open(tmp_path / "g")
    assert edited.backfill_state["order"] == "random"
    result = search(edited, queries, 20, rule="adaptive")
    np.testing.assert_array_equal(result.rows, search(FaissGallery.open(tmp_path / "g"), queries, 20,
                                                      rule="slots").rows)  # fmt: skip
    # the same claim with the seed that drew the recorded order is true, and believed
    manifest["backfill"]["seed"] = 3
    manifest_path.write_text(json.dumps(manifest))
    honest = search(FaissGallery.open(tmp_path / "g"), queries, 20, rule="adaptive")
    assert (honest.rows != result.rows).any()
