from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.retrieval import FaissFlatKNN, TorchChunkedKNN, evaluate_retrieval, mixed_gallery
from bt2_hf.retrieval.backfill import backfill_curve, backfill_order
from bt2_hf.retrieval.compatibility import (
    ModelEmbeddings,
    average_accuracy,
    average_compatibility,
    compare_models,
    compatibility_matrix,
)
from bt2_hf.retrieval.knn import FaissHNSWKNN, FaissIVFKNN

from .conftest import quantized_unit_vectors
from .reference import dense_scores, reference_metrics

METRICS = ["top1", "top5", "map", "map@r"]


def test_faiss_and_torch_return_identical_neighbours_with_ties(rng):
    gallery = quantized_unit_vectors(rng, 300, 16)
    queries = quantized_unit_vectors(rng, 50, 16)
    exclude = rng.integers(-1, 300, size=50)
    faiss_scores, faiss_indices = FaissFlatKNN(chunk_size=16).search(queries, gallery, 12, exclude)
    torch_scores, torch_indices = TorchChunkedKNN(chunk_size=7, gallery_chunk_size=64).search(
        queries, gallery, 12, exclude
    )
    np.testing.assert_array_equal(faiss_indices, torch_indices)
    np.testing.assert_array_equal(faiss_scores, torch_scores)
    # ...and both equal a stable argsort of the dense scores.
    dense = queries @ gallery.T
    for row in range(50):
        if exclude[row] >= 0:
            dense[row, exclude[row]] = -np.inf
        np.testing.assert_array_equal(faiss_indices[row], np.argsort(-dense[row], kind="stable")[:12])


@pytest.mark.parametrize("backend", [FaissIVFKNN(nlist=4, nprobe=4), FaissHNSWKNN()])
def test_approximate_backends_recover_exact_neighbours_on_easy_data(rng, backend):
    gallery = rng.normal(size=(400, 32)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    _, exact = FaissFlatKNN().search(gallery[:20], gallery, 5)
    _, approx = backend.search(gallery[:20], gallery, 5)
    assert (approx[:, 0] == exact[:, 0]).all()  # nprobe = nlist / a HNSW graph this small finds the item itself


def _models(rng, count=60, classes=4):
    labels = rng.integers(0, classes, count)
    old = quantized_unit_vectors(rng, count, 16)
    # new = 64-d (entries ±1/8, unit norm, exact scores) whose 16-d prefix is a noisy copy of old's signs
    new = quantized_unit_vectors(rng, count, 64)
    new[:, :16] = np.where(rng.random((count, 16)) < 0.8, old, -old) / 2
    independent = quantized_unit_vectors(rng, count, 64)
    return old, new, independent, labels


def test_pair_report_matches_separate_evaluations(rng):
    old, new, independent, labels = _models(rng)
    report = compare_models(old, new, labels, independent=independent, metrics=METRICS)
    for key, (query, gallery) in {
        "old/old": (old, old),
        "new/old": (new, old),
        "new/new": (new, new),
        "indep/indep": (independent, independent),
    }.items():
        expected = reference_metrics(dense_scores(query, gallery), labels[:, None] == labels[None, :], True, ks=(1, 5))
        for name in METRICS:
            assert report.results[key].metrics[name] == pytest.approx(expected[name], abs=1e-6), (key, name)
    m = {key: result.metrics for key, result in report.results.items()}
    for name in METRICS:
        assert report.criterion[name] == (m["new/old"][name] > m["old/old"][name])
        gain = (m["new/old"][name] - m["old/old"][name]) / (m["indep/indep"][name] - m["old/old"][name])
        assert report.update_gain[name] == pytest.approx(gain)
        assert report.compatibility_tax[name] == pytest.approx(m["indep/indep"][name] - m["new/new"][name])
    before = report.results["old/old"].per_query["top1"]
    after = report.results["new/old"].per_query["top1"]
    assert report.flips["negative_flip_rate"] == pytest.approx(np.mean(before & ~after))
    assert report.flips["positive_flip_rate"] == pytest.approx(np.mean(~before & after))
    assert report.to_dict()["compatible"] == all(report.criterion.values())


def test_known_results_are_reused_not_recomputed(rng):
    old, new, independent, labels = _models(rng)
    full = compare_models(old, new, labels, independent=independent, metrics=METRICS)
    known = {"old/old": full.results["old/old"], "indep/indep": full.results["indep/indep"]}
    # Garbage embeddings for the known pairs' models prove those pairs are taken from known_results.
    scrambled = rng.permutation(old)
    reused = compare_models(
        scrambled, new, labels, independent=rng.permutation(independent), metrics=METRICS, known_results=known
    )
    assert reused.results["old/old"] is known["old/old"]
    assert reused.results["indep/indep"] is known["indep/indep"]
    assert reused.compatibility_tax == full.compatibility_tax


def test_average_compatibility_and_accuracy_exact():
    matrix = np.array([[0.5, np.nan, np.nan], [0.6, 0.7, np.nan], [0.5, 0.8, 0.9]])
    # pairs i>j: (1,0): 0.6 > 0.5 yes; (2,0): 0.5 > 0.5 no (tie is a failure); (2,1): 0.8 > 0.7 yes
    assert average_compatibility(matrix) == pytest.approx(2 / 3)
    assert average_accuracy(matrix) == pytest.approx((0.5 + 0.6 + 0.7 + 0.5 + 0.8 + 0.9) / 6)


def test_compatibility_matrix_entries(rng):
    old, new, independent, labels = _models(rng)
    matrix = compatibility_matrix([old, new, independent], labels, names=["a", "b", "c"], metrics=["top1", "map"])
    values = matrix.values["map"]
    assert np.isnan(values[0, 1]) and np.isnan(values[0, 2]) and np.isnan(values[1, 2])
    for i, query in enumerate([old, new, independent]):
        for j, gallery in enumerate([old, new, independent][: i + 1]):
            expected = evaluate_retrieval(query, gallery, labels, same_items=True, metrics=["map"]).metrics["map"]
            assert values[i, j] == expected
    out = matrix.to_dict()
    assert out["AC"]["map"] == average_compatibility(values) and out["AA"]["map"] == average_accuracy(values)


@pytest.mark.parametrize("order", ["random", "centroid-distance"])
def test_backfill_curve_endpoints(rng, order):
    old, new, _, labels = _models(rng)
    curve = backfill_curve(old, new, labels, betas=[0, 0.25, 0.5, 1.0], order=order, metrics=METRICS)
    new_old = evaluate_retrieval(new, old, labels, same_items=True, metrics=METRICS).metrics
    new_new = evaluate_retrieval(new, None, labels, metrics=METRICS).metrics
    for name in METRICS:
        assert curve.values[name][0] == new_old[name]
        assert curve.values[name][-1] == new_new[name]
        assert curve.area[name] == pytest.approx(np.trapezoid(curve.values[name], [0, 0.25, 0.5, 1.0]))


def test_mixed_gallery_scores_each_part_at_its_width(rng):
    old, new, _, labels = _models(rng, count=40)
    use_new = rng.random(40) < 0.5
    result = evaluate_retrieval(new, mixed_gallery(old, new, use_new), labels, same_items=True, metrics=METRICS)
    # Reference: one dense matrix where backfilled columns use full-width cosine, the others the 16-d prefix.
    scores = np.where(use_new[None, :], dense_scores(new, new), dense_scores(new, old))
    expected = reference_metrics(scores, labels[:, None] == labels[None, :], True, ks=(1, 5))
    for name in METRICS:
        assert result.metrics[name] == pytest.approx(expected[name], abs=1e-6), name


def test_backfill_orders(rng):
    old = quantized_unit_vectors(rng, 30, 16)
    labels = rng.integers(0, 3, 30)
    order = backfill_order(old, labels, "centroid-distance")
    assert sorted(order.tolist()) == list(range(30))
    with pytest.raises(ValueError, match="gallery labels"):
        backfill_order(old, None, "centroid-distance")
    with pytest.raises(ValueError, match="permutation"):
        backfill_order(old, None, np.zeros(30))
    with pytest.raises(ValueError, match="include both 0 and 1"):
        backfill_curve(old, old, labels, betas=[0.5, 1.0])


def test_separate_gallery_model_embeddings(rng):
    old, new, _, labels = _models(rng, count=50)
    old_model = ModelEmbeddings(query=old[:20], gallery=old[20:])
    new_model = ModelEmbeddings(query=new[:20], gallery=new[20:])
    report = compare_models(old_model, new_model, labels[:20], labels[20:], metrics=["top1"])
    expected = evaluate_retrieval(new[:20], old[20:], labels[:20], labels[20:], metrics=["top1"]).metrics["top1"]
    assert report.results["new/old"].metrics["top1"] == expected
