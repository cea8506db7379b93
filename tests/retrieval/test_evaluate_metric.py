from __future__ import annotations

from pathlib import Path

import pytest

import bt2_hf
from bt2_hf.retrieval import evaluate_retrieval

from .conftest import quantized_unit_vectors

evaluate = pytest.importorskip("evaluate")
METRIC_DIR = Path(bt2_hf.__file__).parent / "evaluate_metrics" / "compatible_retrieval"


def test_evaluate_load_offline_matches_the_evaluator(rng, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    metric = evaluate.load(str(METRIC_DIR))
    labels = rng.integers(0, 3, 30)
    new = quantized_unit_vectors(rng, 30, 64)
    old = quantized_unit_vectors(rng, 30, 16)
    scores = metric.compute(
        predictions=new.tolist(),
        references=labels.tolist(),
        gallery_embeddings=old,
        gallery_labels=labels,
        same_items=True,
    )
    expected = evaluate_retrieval(new, old, labels, same_items=True, metrics=["top1", "top5", "map", "map@r"])
    assert scores == pytest.approx(expected.metrics)
    assert metric.compute(predictions=[[1, 0], [1, 0], [0, 1], [0, 1]], references=[0, 0, 1, 1], metrics=["top1"]) == {
        "top1": 1.0
    }
