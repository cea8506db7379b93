"""Shared fixtures: small random embeddings with many exact ties.

Vectors with entries ±1/4 in 16 dims have norm exactly 1, and all inner products are multiples of 1/16, exact in
float32 whatever the summation order; so faiss, torch and numpy produce the same scores and the same ties.
"""

from __future__ import annotations

import numpy as np
import pytest


def quantized_unit_vectors(rng: np.random.Generator, count: int, dim: int = 16) -> np.ndarray:
    # dim must be a power of 4 (16, 64, 256) so that 1/sqrt(dim) is a power of two and every score is exact.
    assert dim in (4, 16, 64, 256)
    return ((rng.integers(0, 2, size=(count, dim)) * 2 - 1) / np.sqrt(dim)).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def tied_data(rng):
    """80 items, 16-d, 5 classes, lots of tied scores."""
    embeddings = quantized_unit_vectors(rng, 80, 16)
    labels = rng.integers(0, 5, size=80)
    return embeddings, labels
