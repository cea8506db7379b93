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


def test_pair_report_results_match_brute_force(rng):
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
    assert report.to_dict()["compatible"] == all(report.criterion.values())


# A hand-made table: 6 items, classes [0, 0, 1, 1, 2, 2], each model embeds item i as the unit vector at angle θ_i
# (degrees) in the plane, so a cosine ranking is the ranking by |θ_query − θ_gallery| (all gaps < 180°, no ties).
# Each query has exactly one relevant item among the 5 others (leave-one-out), so with r its rank:
# top-1 = mean(r == 1) and AP = 1 / r.
HAND_LABELS = np.array([0, 0, 1, 1, 2, 2])
HAND_ANGLES = {
    "old": [100, 15, 125, 165, 0, 105],
    "new": [40, 55, 15, 90, 80, 110],
    "independent": [45, 90, 160, 170, 65, 80],
}
# Rank of the relevant item per query, worked out from the angles:
#   old/old      q0 (100°): 105,125,…,15 → item 1 (15°) is 4th: 4;  q1 (15°): 0,100,… → item 0 (100°) 2nd: 2;
#                q2 (125°): 105,100,165 → 3;  q3 (165°): 125 first → 1;  q4 (0°): 15,100,105 → 3;
#                q5 (105°): 100,125,165,15,0 → 5.                               ranks [4, 2, 3, 1, 3, 5]
#   new/old      (new query angle against the old gallery angles, own item left out) ranks [1, 1, 5, 3, 2, 5]
#   new/new      ranks [1, 1, 4, 5, 3, 2]          indep/indep  ranks [3, 3, 1, 1, 1, 2]
HAND_TOP1 = {"old/old": 1 / 6, "new/old": 2 / 6, "new/new": 2 / 6, "indep/indep": 3 / 6}
HAND_MAP = {
    "old/old": (1 / 4 + 1 / 2 + 1 / 3 + 1 + 1 / 3 + 1 / 5) / 6,  # 157/360
    "new/old": (1 + 1 + 1 / 5 + 1 / 3 + 1 / 2 + 1 / 5) / 6,  # 194/360
    "new/new": (1 + 1 + 1 / 4 + 1 / 5 + 1 / 3 + 1 / 2) / 6,  # 197/360
    "indep/indep": (1 / 3 + 1 / 3 + 1 + 1 + 1 + 1 / 2) / 6,  # 250/360
}


def _hand_embeddings(name):
    radians = np.deg2rad(HAND_ANGLES[name])
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_criterion_gain_tax_and_flips_on_a_hand_made_table():
    old, new, independent = (_hand_embeddings(n) for n in ("old", "new", "independent"))
    report = compare_models(old, new, HAND_LABELS, independent=independent, metrics=["top1", "map"])
    for key in HAND_TOP1:
        assert report.results[key].metrics["top1"] == pytest.approx(HAND_TOP1[key], abs=1e-12), key
        assert report.results[key].metrics["map"] == pytest.approx(HAND_MAP[key], abs=1e-12), key
    assert report.criterion == {"top1": True, "map": True}  # 2/6 > 1/6; 194/360 > 157/360
    # gain = (new/old − old/old) / (indep − old/old): top-1 (1/6) / (2/6); mAP (37/360) / (93/360)
    assert report.update_gain["top1"] == pytest.approx(1 / 2, abs=1e-12)
    assert report.update_gain["map"] == pytest.approx(37 / 93, abs=1e-12)
    # tax = indep/indep − new/new: top-1 3/6 − 2/6; mAP (250 − 197) / 360
    assert report.compatibility_tax["top1"] == pytest.approx(1 / 6, abs=1e-12)
    assert report.compatibility_tax["map"] == pytest.approx(53 / 360, abs=1e-12)
    # top-1 hits before (old/old) [_, _, _, q3, _, _], after (new/old) [q0, q1, _, _, _, _]
    assert report.flips["negative_flip_rate"] == pytest.approx(1 / 6, abs=1e-12)  # q3 lost
    assert report.flips["positive_flip_rate"] == pytest.approx(2 / 6, abs=1e-12)  # q0, q1 gained
    assert report.compatible


def test_the_criterion_is_strict_and_an_unchanged_model_gains_nothing():
    old, independent = _hand_embeddings("old"), _hand_embeddings("independent")
    report = compare_models(old, old.copy(), HAND_LABELS, independent=independent, metrics=["top1", "map"])
    assert report.criterion == {"top1": False, "map": False}  # equal is not better
    assert not report.compatible
    assert report.update_gain == {"top1": 0.0, "map": 0.0}
    assert report.flips["negative_flip_rate"] == 0.0 and report.flips["positive_flip_rate"] == 0.0
    # no independent model: no gain, no tax; an independent model as good as the old one: the gain is undefined
    assert compare_models(old, old, HAND_LABELS, metrics=["top1"]).update_gain == {}
    same = compare_models(old, _hand_embeddings("new"), HAND_LABELS, independent=old, metrics=["top1"])
    assert np.isnan(same.update_gain["top1"]) and same.compatibility_tax["top1"] == pytest.approx(1 / 6 - 2 / 6)


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


def test_compatibility_matrix_on_the_hand_made_table():
    versions = [_hand_embeddings(n) for n in ("old", "new", "independent")]
    matrix = compatibility_matrix(versions, HAND_LABELS, names=["a", "b", "c"], metrics=["top1", "map"])
    values = matrix.values["top1"]
    assert np.isnan(values[0, 1]) and np.isnan(values[0, 2]) and np.isnan(values[1, 2])
    # rows: query version, columns: gallery version (see HAND_ANGLES); c/a and c/b ranks worked out the same way:
    # c/a [1, 1, 1, 1, 2, 4] → top-1 4/6;  c/b [1, 4, 2, 5, 4, 1] → top-1 2/6
    expected_top1 = np.array([[1 / 6, np.nan, np.nan], [2 / 6, 2 / 6, np.nan], [4 / 6, 2 / 6, 3 / 6]])
    np.testing.assert_allclose(values, expected_top1, atol=1e-12)
    for i, query in enumerate(versions):  # mAP against the brute-force reference
        for j, gallery in enumerate(versions[: i + 1]):
            expected = reference_metrics(dense_scores(query, gallery), HAND_LABELS[:, None] == HAND_LABELS, True)
            assert matrix.values["map"][i, j] == pytest.approx(expected["map"], abs=1e-9), (i, j)
    out = matrix.to_dict()
    # AC: pairs i > j with C[i][j] > C[j][j]: b/a 2/6 > 1/6 yes, c/a 4/6 > 1/6 yes, c/b 2/6 > 2/6 no (a tie)
    assert out["AC"]["top1"] == pytest.approx(2 / 3, abs=1e-12)
    assert out["AA"]["top1"] == pytest.approx((1 + 2 + 2 + 4 + 2 + 3) / 6 / 6, abs=1e-12)
    assert out["names"] == ["a", "b", "c"] and out["matrix"]["top1"][0][1] is None


@pytest.mark.parametrize("order", ["random", "centroid-distance"])
def test_backfill_curve_endpoints(rng, order):
    old, new, _, labels = _models(rng)
    curve = backfill_curve(old, new, labels, betas=[0, 0.25, 0.5, 1.0], order=order, metrics=METRICS)
    relevant = labels[:, None] == labels[None, :]
    new_old = reference_metrics(dense_scores(new, old), relevant, True, ks=(1, 5))
    new_new = reference_metrics(dense_scores(new, new), relevant, True, ks=(1, 5))
    for name in METRICS:
        assert curve.values[name][0] == pytest.approx(new_old[name], abs=1e-9)
        assert curve.values[name][-1] == pytest.approx(new_new[name], abs=1e-9)
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
    expected = reference_metrics(dense_scores(new[:20], old[20:]), labels[:20, None] == labels[None, 20:], False)
    assert report.results["new/old"].metrics["top1"] == pytest.approx(expected["top1"], abs=1e-12)


def test_compare_models_gain_is_undefined_when_the_independent_model_is_no_better():
    """The report's gain follows the one definition: undefined (NaN, None in JSON, with the reason) when the
    independent model does not beat the old one on the rank metric, and then on every metric."""
    import math

    from bt2_hf.retrieval.compatibility import compare_models

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    centres = rng.normal(size=(4, 8))
    old = centres[labels] + 0.3 * rng.normal(size=(40, 8))
    noise = rng.normal(size=(40, 8))  # an "independent" model that knows nothing: below the old one
    report = compare_models(old, old + 0.05 * noise, labels, independent=noise)
    assert all(math.isnan(gain) for gain in report.update_gain.values())
    assert set(report.update_gain_note) == set(report.update_gain)
    assert "no better than the old one" in next(iter(report.update_gain_note.values()))
    as_json = report.to_dict()
    assert all(value is None for value in as_json["update_gain"].values())
    noisy_old = centres[labels] + 1.5 * rng.normal(size=(40, 8))
    better = centres[labels] + 0.05 * rng.normal(size=(40, 8))
    same = compare_models(noisy_old, noisy_old, labels, independent=better)  # new = old: none of the gain reaches it
    assert same.update_gain["top1"] == 0.0 and same.update_gain["map"] == 0.0
    assert "top1" not in same.update_gain_note and "map" not in same.update_gain_note
    # a metric both models saturate (top-10 = 100 %) has no improvement to share: undefined on its own
    assert math.isnan(same.update_gain["top10"]) and "100.00 ≤ 100.00" in same.update_gain_note["top10"]
