"""Top-K metrics and the slot-rule backfill of the text upgrade, against hand computations and the library's
instance-level evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.experiments.text_upgrade_metrics import (
    backfill_curve,
    metrics_at_k,
    retrieval_metrics,
    slot_rule_rows,
    top_k_rows,
)
from bt2_hf.retrieval.instance_metrics import instance_retrieval_metrics


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_metrics_by_hand():
    rows = np.array([[5, 2, 7], [1, 3, 4], [9, 8, 6]])
    relevant = [[2], [4, 1], [0]]
    got = metrics_at_k(rows, relevant, k=3)
    # query 0: hit at rank 2; query 1: both relevant at ranks 1 and 3; query 2: none
    assert got["recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["mrr@3"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    ndcg1 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert got["ndcg@3"] == pytest.approx((1 / np.log2(3) + ndcg1 + 0) / 3)


def test_ranking_matches_the_instance_evaluator():
    rng = np.random.default_rng(0)
    queries, gallery = unit(rng.normal(size=(40, 8))), unit(rng.normal(size=(90, 8)))
    relevant = [rng.choice(90, size=1 + i % 3, replace=False).tolist() for i in range(40)]  # 1 to 3 per query
    relevance = np.zeros((40, 90), dtype=bool)
    for row, targets in enumerate(relevant):
        relevance[row, targets] = True
    reference = instance_retrieval_metrics(query_embeddings=queries, gallery_embeddings=gallery, relevance=relevance,
                                           ks=(10,), cutoffs=(10,))  # fmt: skip
    ours = retrieval_metrics(queries, gallery, relevant, k=10)
    assert ours["recall@10"] == pytest.approx(reference.recall_of_relevant[10])
    assert ours["mrr@10"] == pytest.approx(reference.mrr[10])
    assert ours["ndcg@10"] == pytest.approx(reference.ndcg[10])
    # ties go to the lowest gallery row
    assert top_k_rows(np.ones((1, 2)), np.ones((5, 2)), 3).tolist() == [[0, 1, 2]]


def test_slot_rule_ends_are_old_space_and_new_new():
    rng = np.random.default_rng(1)
    old_q, old_g = unit(rng.normal(size=(30, 6))), unit(rng.normal(size=(50, 6)))
    new_q, new_g = unit(rng.normal(size=(30, 12))), unit(rng.normal(size=(50, 12)))
    none, every = np.zeros(50, bool), np.ones(50, bool)
    assert np.array_equal(slot_rule_rows(old_q, old_g, new_q, new_g, none, 10), top_k_rows(old_q, old_g, 10))
    assert np.array_equal(slot_rule_rows(old_q, old_g, new_q, new_g, every, 10), top_k_rows(new_q, new_g, 10))
    # a partial backfill: positions of items not re-embedded keep their old-space item
    half = np.arange(50) % 2 == 0
    mixed, old_rows = slot_rule_rows(old_q, old_g, new_q, new_g, half, 10), top_k_rows(old_q, old_g, 10)
    assert np.array_equal(mixed[~half[old_rows]], old_rows[~half[old_rows]])
    assert half[mixed[half[old_rows]]].all()
    relevant = [[int(t)] for t in rng.integers(0, 50, size=30)]
    curve = backfill_curve(old_q, old_g, new_q, new_g, relevant, k=10, betas=(0.0, 0.5, 1.0))
    assert curve["ndcg@10"][0] == pytest.approx(retrieval_metrics(old_q, old_g, relevant)["ndcg@10"])
    assert curve["ndcg@10"][-1] == pytest.approx(retrieval_metrics(new_q, new_g, relevant)["ndcg@10"])
