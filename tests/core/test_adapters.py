"""Post-hoc adapters recover known maps on synthetic pairs, save and reload exactly, and name bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bt2_hf.adapters import (
    ADAPTERS,
    EmbeddingAdapter,
    LowRankAffineAdapter,
    ProcrustesAdapter,
    ResidualMLPAdapter,
    fit_adapter,
    reduced_rank_regression,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((unit(a) * unit(b)).sum(axis=1).mean())


def test_procrustes_recovers_an_exact_rotation():
    x = unit(np.random.default_rng(0).normal(size=(200, 8)))
    rotation = random_rotation(8, 1)
    adapter = ProcrustesAdapter.fit(x, x @ rotation)
    np.testing.assert_allclose(adapter.weight.numpy(), rotation, atol=1e-5)
    np.testing.assert_allclose(adapter.apply(x), x @ rotation, atol=1e-5)
    # orthonormal columns: the map keeps every angle between new embeddings
    np.testing.assert_allclose(adapter.weight.numpy().T @ adapter.weight.numpy(), np.eye(8), atol=1e-5)


def test_reduced_rank_regression_recovers_an_exact_low_rank_affine_map():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 10))
    weight = rng.normal(size=(10, 3)) @ rng.normal(size=(3, 6))  # rank 3
    bias = rng.normal(size=6)
    fitted_weight, fitted_bias = reduced_rank_regression(x, x @ weight + bias, rank=3, ridge=0.0)
    np.testing.assert_allclose(fitted_weight, weight, atol=1e-8)
    np.testing.assert_allclose(fitted_bias, bias, atol=1e-8)
    # a rank bound below the truth keeps the best rank-2 part: the fitted values lose the smallest direction only
    two, _ = reduced_rank_regression(x, x @ weight + bias, rank=2, ridge=0.0)
    assert np.linalg.matrix_rank(two, tol=1e-6) == 2


def test_low_rank_affine_adapter_maps_directions_of_a_low_rank_affine_relation():
    rng = np.random.default_rng(2)
    x = unit(rng.normal(size=(500, 10)))
    weight = rng.normal(size=(10, 3)) @ rng.normal(size=(3, 6))
    y = x @ weight + 2.0 * rng.normal(size=6)
    adapter = LowRankAffineAdapter.fit(x, unit(y), rank=3, ridge=0.0)
    assert adapter.down.shape == (10, 3) and adapter.up.shape == (3, 6)
    assert np.linalg.matrix_rank(adapter.down.numpy() @ adapter.up.numpy(), tol=1e-4) == 3
    rotation_only = mean_cosine(ProcrustesAdapter.fit(x, unit(y)).apply(x), y)
    assert mean_cosine(adapter.apply(x), y) > 0.98 > rotation_only


def test_full_rank_affine_equals_least_squares_on_a_linear_relation():
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(100, 5)))
    rotation = random_rotation(5, 4)
    adapter = LowRankAffineAdapter.fit(x, x @ rotation, ridge=0.0)
    np.testing.assert_allclose(adapter.down.numpy() @ adapter.up.numpy(), rotation, atol=1e-5)
    np.testing.assert_allclose(adapter.bias.numpy(), np.zeros(5), atol=1e-5)


def test_residual_mlp_learns_a_nonlinear_map_that_a_rotation_cannot():
    rng = np.random.default_rng(5)
    mixing = rng.normal(size=(6, 6))
    rotation = random_rotation(6, 6)

    def target(x):
        return unit(x @ rotation + 0.5 * np.tanh(2 * x @ mixing))

    train, test = unit(rng.normal(size=(1000, 6))), unit(rng.normal(size=(500, 6)))
    procrustes = ProcrustesAdapter.fit(train, target(train))
    mlp = ResidualMLPAdapter.fit(train, target(train), hidden_dim=64, epochs=40, seed=0)
    rotation_only, learned = (
        mean_cosine(procrustes.apply(test), target(test)),
        mean_cosine(mlp.apply(test), target(test)),
    )
    assert learned > 0.96, learned
    assert learned > rotation_only + 0.1, (learned, rotation_only)
    # deterministic for a seed (two short fits: the same weights whatever the length)
    first, again = (ResidualMLPAdapter.fit(train, target(train), hidden_dim=64, epochs=3, seed=0) for _ in range(2))
    np.testing.assert_array_equal(again.apply(test), first.apply(test))


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_every_adapter_round_trips_through_safetensors(tmp_path, kind):
    rng = np.random.default_rng(7)
    x, y = unit(rng.normal(size=(300, 8))), unit(rng.normal(size=(300, 4)))
    kwargs = {"epochs": 2, "hidden_dim": 16} if kind == "residual_mlp" else {}
    adapter = fit_adapter(kind, x, y, **kwargs)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, tmp_path / "adapter.safetensors")
    restored = EmbeddingAdapter.from_config(adapter.config_dict())
    restored.load_state_dict(load_file(tmp_path / "adapter.safetensors"))
    np.testing.assert_array_equal(restored.apply(x), adapter.apply(x))
    out = adapter.apply(x)
    assert out.shape == (300, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_bad_input_is_named():
    x = np.random.default_rng(8).normal(size=(10, 4))
    with pytest.raises(ValueError, match="one old embedding per new embedding"):
        ProcrustesAdapter.fit(x, x[:5])
    with pytest.raises(ValueError, match="NaN or infinite"):
        ProcrustesAdapter.fit(np.full((3, 4), np.nan), x[:3])
    with pytest.raises(ValueError, match="Unknown adapter 'rotation'"):
        fit_adapter("rotation", x, x)
    with pytest.raises(ValueError, match="rank must be between 1 and 4"):
        LowRankAffineAdapter.fit(x, x, rank=9)
    adapter = ProcrustesAdapter.fit(x, x)
    with pytest.raises(ValueError, match="maps 4-d embeddings; got 3-d"):
        adapter(torch.zeros(2, 3))
