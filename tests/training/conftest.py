"""Fixtures of the training tests: synthetic data and tiny frozen reference checkpoints, trained once per session."""

from __future__ import annotations

import pytest
from training_helpers import CNN, quick_args, synthetic_data

from bt2_hf.training import DataArguments, ModelArguments, train


@pytest.fixture(scope="session")
def data():
    return synthetic_data()


@pytest.fixture(scope="session")
def references(tmp_path_factory, data):
    """A 16-d old model (classes 0–1 only) and a 24-d independent model (all classes), both tiny CNNs."""
    root = tmp_path_factory.mktemp("references")
    old = train(
        ModelArguments(backbone_config=CNN, embedding_dim=16),
        DataArguments(class_subset="0-1"),
        quick_args(root / "old", "independent"),
        train_data=data,
    )
    independent = train(
        ModelArguments(backbone_config=CNN, embedding_dim=24),
        DataArguments(),
        quick_args(root / "independent", "independent"),
        train_data=data,
    )
    return {"old": str(old), "independent": str(independent)}
