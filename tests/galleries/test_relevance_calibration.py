"""Learned mixing of a backfill's two spaces: the logistic fit against scipy's optimiser, the candidate pairs against a
brute-force construction, and the ``"learned"`` rule of the evaluation functions against one sort written out here."""

from __future__ import annotations

import numpy as np
import pytest

from bt2_hf.galleries import RelevanceCalibration, fit_relevance_calibration, top_k_under_rule
from bt2_hf.galleries.mixed import top1_along_backfill
from bt2_hf.galleries.relevance_calibration import fit_logistic


def _penalised_fit_by_scipy(scores, relevant, l2=1e-4):
    from scipy.optimize import minimize

    def loss(weights):
        logits = weights[0] * scores + weights[1]
        return np.mean(np.logaddexp(0.0, logits) - relevant * logits) + 0.5 * l2 * weights @ weights

    return minimize(loss, np.zeros(2), method="BFGS", options={"gtol": 1e-12}).x


def test_the_logistic_fit_is_the_penalised_maximum_likelihood_and_finds_the_generating_map():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.5, 1.0, 20_000)
    relevant = (rng.random(20_000) < 1.0 / (1.0 + np.exp(-(12.0 * scores - 9.0)))).astype(float)
    slope, intercept = fit_logistic(scores, relevant)
    np.testing.assert_allclose([slope, intercept], _penalised_fit_by_scipy(scores, relevant), atol=1e-4)
    assert abs(slope - 12.0) < 0.8 and abs(intercept + 9.0) < 0.6  # the map the labels were drawn from
    with pytest.raises(ValueError, match="all relevant or all irrelevant"):
        fit_logistic(scores, np.ones_like(scores))
    with pytest.raises(ValueError, match="equally long"):
        fit_logistic(scores, relevant[:-1])


def _pair(count=120, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    centres = rng.normal(size=(4, 8))
    old = centres[labels] + 0.9 * rng.normal(size=(count, 8))
    # the new model: the old space, less noisy, and 4 extra dims that also see the class
    new = np.concatenate([old + 0.3 * rng.normal(size=old.shape),
                          centres[labels][:, :4] + 0.5 * rng.normal(size=(count, 4))], axis=1)  # fmt: skip
    return old.astype(np.float32), new.astype(np.float32), labels


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_maps_are_fitted_on_each_querys_best_candidates_leaving_the_query_out():
    old, new, labels = _pair()
    calibration = fit_relevance_calibration(new[:, :8], old, new, new, query_labels=labels, candidates=5)
    expected = []
    for queries, gallery in ((_unit(new[:, :8]), _unit(old)), (_unit(new), _unit(new))):
        scores = queries @ gallery.T
        np.fill_diagonal(scores, -np.inf)
        top = np.argsort(-scores, axis=1)[:, :5]
        expected.append(fit_logistic(np.take_along_axis(scores, top, 1), labels[top] == labels[:, None]))
    assert calibration.pairs == 120 * 5
    np.testing.assert_allclose([calibration.encoder_slope, calibration.encoder_intercept], expected[0], atol=1e-6)
    np.testing.assert_allclose([calibration.new_slope, calibration.new_intercept], expected[1], atol=1e-6)
    # relevance as lists of rows gives the same maps as the labels it came from (queries apart from the gallery)
    relevant = [np.flatnonzero(labels[:80] == label).tolist() for label in labels[80:]]
    by_rows = fit_relevance_calibration(new[80:, :8], old[:80], new[80:], new[:80], relevant=relevant, candidates=7)
    by_labels = fit_relevance_calibration(new[80:, :8], old[:80], new[80:], new[:80], query_labels=labels[80:],
                                          gallery_labels=labels[:80], candidates=7)  # fmt: skip
    assert by_rows == by_labels
    with pytest.raises(ValueError, match="either as query_labels"):
        fit_relevance_calibration(new[:, :8], old, new, new)


def test_a_calibration_is_checked_and_round_trips_through_a_dict():
    calibration = RelevanceCalibration(4.5, -3.5, 11.9, -10.2, pairs=300)
    assert RelevanceCalibration.from_dict(calibration.to_dict()) == calibration
    np.testing.assert_allclose(calibration.new_logits(np.array([1.0])), [1.7])
    with pytest.raises(ValueError, match="slopes must be positive"):
        RelevanceCalibration(-1.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        RelevanceCalibration(float("nan"), 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="Not a relevance calibration"):
        RelevanceCalibration.from_dict({"encoder": [1.0]})


def test_the_learned_rule_sorts_every_item_by_its_mapped_score():
    old, new, labels = _pair(count=150, seed=2)
    calibration = RelevanceCalibration(4.0, -3.0, 9.0, -7.5)
    use_new = np.random.default_rng(3).random(100) < 0.4
    queries = new[100:]
    rows = top_k_under_rule(queries[:, :8], old[:100], queries, new[:100], use_new, 5, rule="learned",
                            relevance=calibration)  # fmt: skip
    encoder_space = _unit(queries[:, :8]) @ _unit(old[:100]).T
    new_space = _unit(queries) @ _unit(new[:100]).T
    mapped = np.where(use_new, 9.0 * new_space - 7.5, 4.0 * encoder_space - 3.0)
    for line, scores in zip(rows, mapped):
        expected = sorted(range(100), key=lambda row: (-scores[row], row))[:5]
        assert line.tolist() == expected
    with pytest.raises(ValueError, match="needs relevance"):
        top_k_under_rule(queries[:, :8], old[:100], queries, new[:100], use_new, 5, rule="learned")


@pytest.mark.parametrize("same_items", [True, False])
def test_learned_curves_in_one_pass_equal_the_one_sort_state_by_state(same_items):
    old, new, labels = _pair(count=200, seed=4)
    calibration = RelevanceCalibration(5.0, -4.0, 10.0, -8.5)
    gallery_old, gallery_new = (old, new) if same_items else (old[:160], new[:160])
    queries, query_labels = (new, labels) if same_items else (new[160:], labels[160:])
    gallery_labels = None if same_items else labels[:160]
    order = np.random.default_rng(5).permutation(len(gallery_old))
    counts = [0, 1, 20, 80, len(gallery_old) - 1, len(gallery_old)]
    fast = top1_along_backfill(gallery_old, gallery_new, queries, 8, order, counts, query_labels, gallery_labels,
                               rules=["learned"], candidates=3, relevance=calibration)["learned"]  # fmt: skip
    encoder_space = _unit(queries[:, :8]) @ _unit(gallery_old).T
    new_space = _unit(queries) @ _unit(gallery_new).T
    if same_items:
        np.fill_diagonal(encoder_space, -np.inf)
        np.fill_diagonal(new_space, -np.inf)
    for position, count in enumerate(counts):
        use_new = np.zeros(len(gallery_old), dtype=bool)
        use_new[order[:count]] = True
        best = np.argmax(np.where(use_new, 10.0 * new_space - 8.5, 5.0 * encoder_space - 4.0), axis=1)
        expected = 100.0 * np.mean((labels if same_items else gallery_labels)[best] == query_labels)
        assert fast[position] == pytest.approx(expected), count
