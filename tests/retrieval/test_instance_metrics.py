"""Instance-level Recall@K and mAP: hand-made cases with exact values, the tie rule, chunking, leave-one-out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from bt2_hf.retrieval.instance_metrics import (
    compatibility_matrix_to_dict,
    instance_compatibility_matrix,
    instance_retrieval_metrics,
)

from .conftest import quantized_unit_vectors
from .reference import dense_scores


def _brute_force(scores, relevance, ks=(1, 5, 10), leave_one_out=False):
    """Rank with Python's sort on (−score, gallery index); AP as the mean of precision at each relevant item."""
    recall_hits, average_precisions = {k: [] for k in ks}, []
    for i, row in enumerate(scores):
        items = [j for j in range(len(row)) if not (leave_one_out and j == i)]
        ranking = sorted(items, key=lambda j: (-row[j], j))
        relevant = [bool(relevance[i, j]) for j in ranking]
        if not any(relevant):
            continue
        for k in ks:
            recall_hits[k].append(any(relevant[:k]))
        precisions = [sum(relevant[: rank + 1]) / (rank + 1) for rank, hit in enumerate(relevant) if hit]
        average_precisions.append(sum(precisions) / len(precisions))
    return {k: float(np.mean(v)) for k, v in recall_hits.items()}, float(np.mean(average_precisions))


def test_hand_made_ranking_with_ties_and_a_query_without_relevant_items():
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.1, 0.0, 0.0],  # relevant: 2 and 3; item 1 ties with 2 and comes first (lower index)
            [0.9, 0.5, 0.5, 0.1, 0.0, 0.0],  # relevant: 1, which wins the tie with 2
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: gallery order; relevant 5 ranks last
            [0.3, 0.2, 0.1, 0.0, 0.0, 0.0],  # nothing relevant
        ]
    )
    relevance = np.zeros_like(scores, dtype=bool)
    relevance[0, [2, 3]] = relevance[1, 1] = relevance[2, 5] = True
    result = instance_retrieval_metrics(scores, relevance, ks=(1, 2, 5))
    assert result.first_relevant_rank.tolist() == [3, 2, 6, 0]
    expected_ap = [(1 / 3 + 2 / 4) / 2, 1 / 2, 1 / 6]
    np.testing.assert_allclose(result.average_precision[:3], expected_ap, rtol=0, atol=1e-15)
    assert np.isnan(result.average_precision[3])
    assert result.recall == {1: 0.0, 2: 1 / 3, 5: 2 / 3}
    assert result.mean_average_precision == pytest.approx(np.mean(expected_ap), abs=1e-15)
    assert (result.num_queries, result.num_evaluated, result.num_without_relevant) == (4, 3, 1)
    assert result.to_dict(percent=True)["recall@5"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match=r"1 of 4 queries have no relevant gallery item \(e.g. queries \[3\]\)"):
        instance_retrieval_metrics(scores, relevance, no_relevant="error")
    with pytest.raises(ValueError, match="None of the 1 queries"):
        instance_retrieval_metrics(scores[3:], relevance[3:])


def test_leave_one_out_removes_the_query_itself():
    scores = np.array([[1.0, 0.8, 0.2], [0.8, 1.0, 0.5], [0.2, 0.5, 1.0]])
    relevance = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=bool)  # the diagonal does not count
    result = instance_retrieval_metrics(scores, relevance, ks=(1,), leave_one_out=True)
    # Query 0 ranks [1, 2]: relevant 2 at rank 2. Query 1 ranks [0, 2]: relevant 0 at rank 1. Query 2: nothing left.
    assert result.first_relevant_rank.tolist() == [2, 1, 0]
    np.testing.assert_allclose(result.average_precision[:2], [0.5, 1.0])
    assert result.recall == {1: 0.5} and result.num_without_relevant == 1
    with pytest.raises(ValueError, match="leave_one_out needs query i and gallery item i"):
        instance_retrieval_metrics(scores[:2], relevance[:2], leave_one_out=True)


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_matches_brute_force_on_tied_random_data_for_any_chunk_size(rng, leave_one_out):
    # ±1/4 entries in 16 dims: every score is an exact multiple of 1/16, so there are many ties.
    queries, gallery = quantized_unit_vectors(rng, 60, 16), quantized_unit_vectors(rng, 60, 16)
    scores = dense_scores(queries, gallery)
    relevance = rng.random((60, 60)) < 0.08
    relevance[7] = False  # a query without relevant items
    expected_recall, expected_map = _brute_force(scores, relevance, leave_one_out=leave_one_out)
    for chunk_size in (1, 7, None):
        result = instance_retrieval_metrics(
            scores, relevance, chunk_size=chunk_size, leave_one_out=leave_one_out, ks=(1, 5, 10)
        )
        assert result.recall == pytest.approx(expected_recall, abs=1e-12)
        assert result.mean_average_precision == pytest.approx(expected_map, abs=1e-12)
        assert result.num_without_relevant >= 1
    # From embeddings (float32 matmul of exact values) and with relevance as a function of query rows: the same.
    from_embeddings = instance_retrieval_metrics(
        relevance=lambda rows: relevance[rows],
        query_embeddings=queries,
        gallery_embeddings=gallery,
        chunk_size=13,
        leave_one_out=leave_one_out,
    )
    assert from_embeddings.recall == pytest.approx(expected_recall, abs=1e-12)
    assert from_embeddings.mean_average_precision == pytest.approx(expected_map, abs=1e-12)


def test_average_precision_equals_scikit_learn_without_ties(rng):
    scores = rng.normal(size=(20, 50))
    relevance = rng.random((20, 50)) < 0.2
    relevance[:, 0] = True
    result = instance_retrieval_metrics(scores, relevance)
    expected = [average_precision_score(relevance[i], scores[i]) for i in range(20)]
    np.testing.assert_allclose(result.average_precision, expected, rtol=1e-12)


def test_embeddings_of_different_widths_use_the_renormalised_prefix(rng):
    # 16-d queries cut to the 4-d gallery width: the prefix of ±1/4 entries re-normalises to ±1/2, scores stay exact.
    queries, gallery = quantized_unit_vectors(rng, 30, 16), quantized_unit_vectors(rng, 40, 4)
    relevance = rng.random((30, 40)) < 0.1
    relevance[:, 39] = True
    via_embeddings = instance_retrieval_metrics(
        relevance=relevance, query_embeddings=queries, gallery_embeddings=gallery
    )
    via_scores = instance_retrieval_metrics(dense_scores(queries, gallery), relevance)
    assert via_embeddings.recall == via_scores.recall
    assert via_embeddings.mean_average_precision == via_scores.mean_average_precision
    np.testing.assert_array_equal(via_embeddings.first_relevant_rank, via_scores.first_relevant_rank)


def test_bad_inputs_are_refused():
    scores, relevance = np.zeros((2, 3)), np.ones((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="must be boolean.*relevance > 0"):
        instance_retrieval_metrics(scores, relevance.astype(int))
    with pytest.raises(ValueError, match=r"relevance has shape \(3, 2\) but there are 2 queries and 3 gallery items"):
        instance_retrieval_metrics(scores, relevance.T)
    with pytest.raises(ValueError, match="NaN"):
        instance_retrieval_metrics(np.array([[0.0, np.nan, 1.0]] * 2), relevance)
    with pytest.raises(ValueError, match="either `scores` or"):
        instance_retrieval_metrics(
            scores, relevance, query_embeddings=np.ones((2, 4)), gallery_embeddings=np.ones((3, 4))
        )
    with pytest.raises(ValueError, match="positive integers"):
        instance_retrieval_metrics(scores, relevance, ks=(0,))
    with pytest.raises(ValueError, match="shape \\(2, 3\\)"):
        instance_retrieval_metrics(scores, lambda rows: np.ones((len(rows), 2), dtype=bool))


def test_compatibility_matrix_over_named_spaces(rng):
    # Three spaces over the same 24 scenes; a caption is relevant to the images of its own group of 3 scenes.
    groups = np.arange(24) // 3
    spaces = {
        "old_image": quantized_unit_vectors(rng, 24, 4),
        "new_image": quantized_unit_vectors(rng, 24, 16),
        "new_text": quantized_unit_vectors(rng, 24, 16),
    }
    same_group = groups[:, None] == groups[None, :]
    calls = []

    def relevance_fn(query, gallery):
        calls.append((query, gallery))
        return same_group

    matrix = instance_compatibility_matrix(
        spaces, relevance_fn=relevance_fn, leave_one_out=[("old_image", "new_image")]
    )
    assert sorted(calls) == sorted((q, g) for q in spaces for g in spaces if q != g)
    for query, row in matrix.items():
        for gallery, result in row.items():
            expected = instance_retrieval_metrics(
                dense_scores(spaces[query], spaces[gallery]),
                same_group,
                leave_one_out=(query, gallery) == ("old_image", "new_image"),
            )
            assert result.recall == expected.recall
            assert result.mean_average_precision == expected.mean_average_precision
    as_json = json.loads(json.dumps(compatibility_matrix_to_dict(matrix, percent=True)))
    assert set(as_json["new_text"]) == {"old_image", "new_image"}
    assert as_json["new_text"]["old_image"]["num_queries"] == 24
    only = instance_compatibility_matrix(spaces, [("new_text", "old_image")], relevance_fn)
    assert list(only) == ["new_text"] and list(only["new_text"]) == ["old_image"]
    with pytest.raises(ValueError, match=r"spaces \['old_text'\] that have no embeddings"):
        instance_compatibility_matrix(spaces, [("old_text", "old_image")], relevance_fn)


def test_cutoff_metrics_match_hand_computed_values():
    """Recall of relevant items, MRR and nDCG at K, on two queries ranked by hand.

    Query A ranks d0 > d1 > d2 > d3 > d4; relevant d1 (gain 2) and d3 (gain 1), at ranks 2 and 4.
    Query B ranks d3 > d1 = d4 (tie: d1 first) > d2 > d0; relevant d0 (gain 1), at rank 5.
    """
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.3, 0.2, 0.9, 0.3]])
    gains = np.array([[0, 2, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=float)
    result = instance_retrieval_metrics(scores, gains > 0, ks=(1,), cutoffs=(2, 10), gains=gains)
    log2 = np.log2
    ndcg_a10 = (2 / log2(3) + 1 / log2(5)) / (2 / log2(2) + 1 / log2(3))
    ndcg_a2 = (2 / log2(3)) / (2 / log2(2) + 1 / log2(3))
    ndcg_b10 = (1 / log2(6)) / 1
    assert result.mrr == pytest.approx({2: (1 / 2 + 0) / 2, 10: (1 / 2 + 1 / 5) / 2})
    assert result.recall_of_relevant == pytest.approx({2: (1 / 2 + 0) / 2, 10: 1.0})
    assert result.ndcg == pytest.approx({2: (ndcg_a2 + 0) / 2, 10: (ndcg_a10 + ndcg_b10) / 2})
    assert result.mean_average_precision == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1 / 5) / 2)
    assert result.recall == {1: 0.0}
    # binary gains by default: query A's nDCG@10 is (1/log2 3 + 1/log2 5) / (1 + 1/log2 3)
    binary = instance_retrieval_metrics(scores, gains > 0, ks=(1,), cutoffs=(10,))
    assert binary.ndcg[10] == pytest.approx(((1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3)) + ndcg_b10) / 2)
    assert binary.to_dict()["mrr@10"] == pytest.approx(0.35) and "ndcg@10" in binary.to_dict()
    # without cutoffs, the summary is what it always was
    assert set(instance_retrieval_metrics(scores, gains > 0).to_dict()) == {
        "recall@1", "recall@5", "recall@10", "map", "num_queries", "num_evaluated", "num_without_relevant"
    }  # fmt: skip
    with pytest.raises(ValueError, match="non-negative"):
        instance_retrieval_metrics(scores, gains > 0, cutoffs=(10,), gains=-gains)
