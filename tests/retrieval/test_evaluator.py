from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from bt2_hf.retrieval import RetrievalEvaluator, evaluate_retrieval
from bt2_hf.retrieval.metrics import (
    average_precision_at_r,
    average_precision_shared_relevance,
    average_precision_with_ties,
    flip_rates,
    parse_metric_name,
)

from .conftest import quantized_unit_vectors
from .reference import dense_scores, reference_metrics

METRICS = ["top1", "top5", "top10", "map", "map@r"]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_leave_one_out_matches_bruteforce_with_ties(tied_data, backend):
    embeddings, labels = tied_data
    result = evaluate_retrieval(embeddings, None, labels, metrics=METRICS, backend=backend)
    expected = reference_metrics(dense_scores(embeddings, embeddings), labels[:, None] == labels[None, :], True)
    for name in METRICS:
        assert result.metrics[name] == pytest.approx(expected[name], abs=1e-12), name
    assert result.num_queries == 80


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_separate_query_and_gallery_with_truncation(rng, backend):
    queries = quantized_unit_vectors(rng, 30, 64)  # a wider "new" model
    gallery = quantized_unit_vectors(rng, 70, 16)  # a narrower "old" gallery
    query_labels, gallery_labels = rng.integers(0, 4, 30), rng.integers(0, 4, 70)
    result = evaluate_retrieval(queries, gallery, query_labels, gallery_labels, metrics=METRICS, backend=backend)
    expected = reference_metrics(
        dense_scores(queries, gallery), query_labels[:, None] == gallery_labels[None, :], False
    )
    for name in METRICS:
        assert result.metrics[name] == pytest.approx(expected[name], abs=1e-12), name


def test_average_precision_equals_sklearn_with_ties(rng):
    scores = rng.integers(0, 4, size=(20, 30)).astype(np.float32)  # heavy ties
    relevant = rng.random((20, 30)) < 0.3
    relevant[:, 0] = True
    ours = average_precision_with_ties(scores, relevant)
    for row in range(20):
        assert ours[row] == pytest.approx(average_precision_score(relevant[row], scores[row]), abs=1e-12)


def test_map_at_r_hand_example():
    # R = 2; ranking: hit, miss, hit -> only the first R=2 positions count: (1/2) * (1/1) = 0.5
    relevant = np.array([[True, False, True]])
    assert average_precision_at_r(relevant, np.array([2]))[0] == 0.5
    # R = 3, hits at 1 and 3: (1/3) * (1 + 2/3)
    assert average_precision_at_r(relevant, np.array([3]))[0] == pytest.approx((1 + 2 / 3) / 3)


def test_flip_rates_exact():
    before = np.array([1, 1, 0, 0, 1], dtype=bool)
    after = np.array([1, 0, 1, 0, 0], dtype=bool)
    assert flip_rates(before, after) == {"negative_flip_rate": 0.4, "positive_flip_rate": 0.2, "delta": 0.2 - 0.4}


def test_truncation_renormalises_before_cosine():
    # Query prefix [1, 1] and gallery prefixes of different norms: with re-normalisation the ranking is by angle.
    query = np.array([[1.0, 1.0, 5.0]], dtype=np.float32)
    gallery = np.array([[3.0, 0.0], [1.0, 1.2]], dtype=np.float32)
    renormalised = evaluate_retrieval(query, gallery, [0], [1, 0], metrics=["top1"]).metrics["top1"]
    research = evaluate_retrieval(query, gallery, [0], [1, 0], metrics=["top1"], renormalize=False).metrics["top1"]
    assert renormalised == 1.0  # item 1 is at a smaller angle
    assert research == 0.0  # raw dot product: 3.0 > 2.2, item 0 (wrong class) first


def test_research_protocol_reproduces_its_definition():
    # The research code: truncate both to min width, distance = 1 - x·yᵀ (no re-normalisation), ascending sort,
    # first same-label item defines CMC; mAP = sklearn AP of -distance. Hand-made: 2 queries (3-d), 4 gallery (2-d).
    queries = np.array([[0.6, 0.0, 0.8], [0.0, 0.5, 0.5]], dtype=np.float32)
    gallery = np.array([[2.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    query_labels, gallery_labels = np.array([1, 0]), np.array([0, 1, 1, 0])
    distance = 1.0 - queries[:, :2] @ gallery.T  # [[-0.2, 0.7, 1, 1], [1, 0.75, 0.5, -0.5]]
    # query 0: nearest is item 0 (label 0) -> miss at top1; first label-1 item (item 1) at rank 2.
    # query 1: nearest is item 3 (label 0) -> hit.
    expected_top1 = 0.5
    expected_map = np.mean([average_precision_score(gallery_labels == q, -d) for q, d in zip(query_labels, distance)])
    result = evaluate_retrieval(
        queries, gallery, query_labels, gallery_labels, metrics=["top1", "top5", "map"], renormalize=False
    )
    assert result.metrics["top1"] == expected_top1
    assert result.metrics["top5"] == 1.0
    assert result.metrics["map"] == pytest.approx(expected_map, abs=1e-7)
    # Re-normalised, query 0 ([1, 0]) still ranks item 0 (label 0) first; query 1 ([0, 1]) now has items 2 and 3
    # tied at cosine 1, and the tie rule (ascending row) puts item 2 (label 1, a miss) first.
    renormalised = evaluate_retrieval(queries, gallery, query_labels, gallery_labels, metrics=["top1"])
    assert renormalised.metrics["top1"] == 0.0


def test_text_to_image_recall_at_k_with_relevance_lists(rng):
    images = quantized_unit_vectors(rng, 12, 16)
    image_ids = [f"img{i}" for i in range(12)]
    captions = np.repeat(images, 2, axis=0)  # each image has two captions, identical to the image embedding
    relevant = [[image_ids[i // 2]] for i in range(24)]
    result = evaluate_retrieval(
        captions, images, query_relevant=relevant, gallery_ids=image_ids, metrics=["recall@1", "recall@5", "map"]
    )
    scores = dense_scores(captions, images)
    truth = np.zeros((24, 12), dtype=bool)
    truth[np.arange(24), np.arange(24) // 2] = True
    expected = reference_metrics(scores, truth, False, ks=(1, 5))
    assert result.metrics["recall@1"] == pytest.approx(expected["top1"])
    assert result.metrics["recall@5"] == pytest.approx(expected["top5"])
    assert result.metrics["map"] == pytest.approx(expected["map"])


def test_shared_relevance_average_precision_equals_sklearn_with_ties_and_a_left_out_item(rng):
    torch = pytest.importorskip("torch")
    scores = rng.integers(0, 4, size=(25, 40)).astype(np.float32)  # heavy ties, across relevant and other items
    relevant_columns = np.flatnonzero(rng.random(40) < 0.3)
    relevant = np.zeros((25, 40), dtype=bool)
    relevant[:, relevant_columns] = True
    left_out = relevant_columns[rng.integers(0, len(relevant_columns), 25)]  # each row's own item, -inf
    scores[np.arange(25), left_out] = -np.inf
    relevant[np.arange(25), left_out] = False
    others = np.setdiff1d(np.arange(40), relevant_columns)
    ours = average_precision_shared_relevance(
        torch.from_numpy(scores), torch.from_numpy(relevant_columns), torch.from_numpy(others)
    )
    for row in range(25):
        finite = np.isfinite(scores[row])
        expected = average_precision_score(relevant[row, finite], scores[row, finite])
        assert ours[row] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(ours, average_precision_with_ties(scores, relevant), rtol=0, atol=1e-12)


def test_label_relevance_and_relevance_lists_give_the_same_map(tied_data):
    # labels take the per-class path, lists the full sort: two algorithms, one answer
    embeddings, labels = tied_data
    lists = [np.flatnonzero(labels == label) for label in labels]
    by_labels = RetrievalEvaluator(metrics=["map"]).evaluate(embeddings, query_labels=labels)
    by_lists = RetrievalEvaluator(metrics=["map"]).evaluate(embeddings, query_relevant=lists, same_items=True)
    np.testing.assert_allclose(by_labels.per_query["map"], by_lists.per_query["map"], rtol=0, atol=1e-12)


def test_queries_without_relevant_items_are_skipped():
    embeddings = np.eye(3, dtype=np.float32)
    result = evaluate_retrieval(embeddings, None, [0, 0, 1], metrics=["top1"])
    assert result.num_skipped == 1 and result.metrics["top1"] == 1.0


def test_small_chunks_equal_one_chunk(tied_data):
    embeddings, labels = tied_data
    big = RetrievalEvaluator(metrics=METRICS).evaluate(embeddings, query_labels=labels)
    small = RetrievalEvaluator(metrics=METRICS, chunk_size=7, map_chunk_elements=100).evaluate(
        embeddings, query_labels=labels
    )
    assert big.metrics == small.metrics


def test_bad_input_errors_name_the_fix():
    with pytest.raises(ValueError, match="2-D"):
        evaluate_retrieval(np.ones(3), None, [0, 0, 0])
    with pytest.raises(ValueError, match="same_items"):
        evaluate_retrieval(
            np.eye(3, dtype=np.float32), np.eye(2, dtype=np.float32), [0, 1, 2], [0, 1], same_items=True
        )
    with pytest.raises(ValueError, match="Unknown metric"):
        RetrievalEvaluator(metrics=["precision"])
    with pytest.raises(ValueError, match="labels"):
        evaluate_retrieval(np.eye(3, dtype=np.float32))


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("map", ("map", None)), ("MAP@all", ("map", None)), ("map@r", ("map@r", None)), ("map_at_r", ("map@r", None)),
        ("top1", ("cmc", 1)), ("top-5", ("cmc", 5)), ("cmc@3", ("cmc", 3)), ("recall@10", ("recall", 10)),
        ("R@2", ("recall", 2)),
    ],
)  # fmt: skip
def test_metric_names(name, parsed):
    assert parse_metric_name(name) == parsed


@pytest.mark.parametrize("name", ["top0", "recall@", "top1.5", "ndcg", "map@5"])
def test_bad_metric_names_are_refused(name):
    with pytest.raises(ValueError, match="Unknown metric"):
        parse_metric_name(name)


def test_metric_helpers_refuse_what_they_cannot_compute():
    with pytest.raises(ValueError, match="needs the top R neighbours; got 2 but a query has R=3"):
        average_precision_at_r(np.array([[True, False]]), np.array([3]))
    with pytest.raises(ValueError, match="same queries"):
        flip_rates(np.array([True, False]), np.array([True]))
    with pytest.raises(ValueError, match="at least one query"):
        flip_rates(np.array([], dtype=bool), np.array([], dtype=bool))


def test_l2_normalize_holds_rows_float32_cannot_square():
    """Squared and summed in float32, a row of 1e30 overflows (it came out as zeros) and one of 1e-25 underflows;
    each is a direction all the same. Zero rows stay zero. Reference: the float64 norm by hand."""
    from bt2_hf.retrieval.protocol import l2_normalize

    rows = np.array([[1e30, 0.0, -1e30], [1e-25, 1e-25, 0.0], [0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=np.float32)
    wide = rows.astype(np.float64)
    norms = np.sqrt((wide**2).sum(axis=1, keepdims=True))
    expected = np.divide(wide, norms, out=np.zeros_like(wide), where=norms > 0)
    unit = l2_normalize(rows)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, expected, rtol=1e-6)
    # one row at a time (a served query's path), rows near float32's largest value included, no warning raised
    rows = np.concatenate([rows, np.array([[3e38, 3e38, 1e-3], [-3e38, 0.0, 0.0]], dtype=np.float32)])
    wide = rows.astype(np.float64)
    norms = np.sqrt((wide**2).sum(axis=1, keepdims=True))
    expected = np.divide(wide, norms, out=np.zeros_like(wide), where=norms > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for row, reference in zip(rows, expected):
            unit = l2_normalize(row[None, :])
            assert unit.dtype == np.float32 and unit.shape == (1, 3)
            np.testing.assert_allclose(unit[0], reference, rtol=1e-6, atol=1e-45)
