"""The BT² head's mathematics: orthogonality, unit norms, the prefix contract, and invertibility."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from bt2_hf.heads import BasisTransformationHead, LinearHead, OrthogonalLinear, validate_bt2_dims


def _head(feature_dim=24, old_dim=24, extra_dim=8, scale=2.0, num_labels=5, seed=0) -> BasisTransformationHead:
    torch.manual_seed(seed)
    head = BasisTransformationHead(
        input_dim=20,
        feature_dim=feature_dim,
        old_embedding_dim=old_dim,
        extra_dim=extra_dim,
        feature_scale=scale,
        num_labels=num_labels,
    )
    head.feature_rotation.reset_parameters()
    head.old_rotation.reset_parameters()
    # Move away from the identity rotation so the test covers a trained-looking map.
    with torch.no_grad():
        head.feature_rotation.skew.normal_(std=0.3)
        head.old_rotation.skew.normal_(std=0.3)
    return head


@pytest.mark.parametrize("dim", [1, 7, 64])
def test_orthogonal_linear_is_orthogonal(dim):
    layer = OrthogonalLinear(dim)
    layer.reset_parameters(torch.Generator().manual_seed(dim))
    with torch.no_grad():
        layer.skew.normal_(std=0.5)
    weight = layer.weight
    assert torch.allclose(weight @ weight.T, torch.eye(dim), atol=1e-5)
    assert torch.allclose(weight.T @ weight, torch.eye(dim), atol=1e-5)


def test_orthogonal_linear_preserves_norms():
    layer = OrthogonalLinear(16)
    layer.reset_parameters(torch.Generator().manual_seed(1))
    x = torch.randn(10, 16)
    assert torch.allclose(layer(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


@pytest.mark.parametrize(("feature_dim", "old_dim", "extra_dim"), [(24, 24, 8), (32, 24, 4), (16, 24, 16)])
def test_bt2_head_contract(feature_dim, old_dim, extra_dim):
    head = _head(feature_dim, old_dim, extra_dim)
    pooled = torch.randn(6, 20)
    out = head(pooled)
    assert out.embeddings.shape == (6, feature_dim + extra_dim)
    assert out.compatible_embeddings.shape == (6, old_dim)
    assert out.features.shape == (6, feature_dim)
    assert out.logits.shape == (6, 5)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert torch.allclose(out.compatible_embeddings.norm(dim=-1), torch.ones(6), atol=1e-5)
    # The old-compatible block is exactly the (re-normalised) first old_dim dimensions of the embedding.
    prefix = torch.nn.functional.normalize(out.embeddings[:, :old_dim], dim=-1)
    assert torch.allclose(prefix, out.compatible_embeddings, atol=1e-6)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def _rotation(layer: OrthogonalLinear) -> np.ndarray:
    """``base · expm(A − Aᵀ)`` in float64 with SciPy's matrix exponential (not torch's)."""
    skew = _numpy(layer.skew)
    return _numpy(layer.base) @ scipy.linalg.expm(skew - skew.T)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.sqrt((matrix**2).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("nonlinearity", ["relu", "none"])
@pytest.mark.parametrize(("feature_dim", "old_dim", "extra_dim"), [(12, 12, 4), (16, 10, 2), (8, 12, 6)])
def test_bt2_head_against_float64_matrix_maths(nonlinearity, feature_dim, old_dim, extra_dim):
    head = _head(feature_dim, old_dim, extra_dim, scale=3.0)
    head.nonlinearity = nonlinearity
    head.logit_scale = 4.0
    with torch.no_grad():  # non-zero biases, so that a dropped bias shows
        head.projection.bias.normal_()
        head.added_projection.bias.normal_()
    x = np.random.default_rng(0).normal(size=(5, 20))
    h = x @ _numpy(head.projection.weight).T + _numpy(head.projection.bias)
    if nonlinearity == "relu":
        h = np.maximum(h, 0.0)
    f = _unit_rows(h[:, :feature_dim])
    a = _unit_rows(h @ _numpy(head.added_projection.weight).T + _numpy(head.added_projection.bias))
    z = np.concatenate([a, 3.0 * f @ _rotation(head.feature_rotation).T], axis=1)
    b = z[:, :old_dim] @ _rotation(head.old_rotation).T
    e = z[:, old_dim:]
    embedding = _unit_rows(np.concatenate([b, e], axis=1))
    out = head(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(_numpy(out.embeddings), embedding, atol=2e-6)
    np.testing.assert_allclose(_numpy(out.compatible_embeddings), _unit_rows(b), atol=2e-6)
    np.testing.assert_allclose(_numpy(out.features), f, atol=2e-6)
    np.testing.assert_allclose(_numpy(out.logits), 4.0 * f @ _numpy(head.classifier.weight).T, atol=1e-5)
    # before normalising, ‖[b ; e]‖ = √(1 + C²) for every input (float32 parameters: orthogonal to ~1e-8)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([b, e], axis=1), axis=1), np.sqrt(10.0), rtol=1e-6)


def test_orthogonal_linear_against_scipy_expm():
    layer = OrthogonalLinear(6)
    layer.reset_parameters(torch.Generator().manual_seed(3))
    with torch.no_grad():
        layer.skew.normal_(std=0.5)
    x = np.random.default_rng(1).normal(size=(4, 6))
    np.testing.assert_allclose(_numpy(layer.weight), _rotation(layer), atol=2e-6)
    np.testing.assert_allclose(_numpy(layer(torch.tensor(x, dtype=torch.float32))), x @ _rotation(layer).T, atol=1e-5)


@pytest.mark.parametrize(("nonlinearity", "compatible_dim"), [("none", 8), ("relu", 8), ("none", 12)])
def test_linear_head_against_float64_matrix_maths(nonlinearity, compatible_dim):
    torch.manual_seed(0)
    head = LinearHead(10, 12, num_labels=3, compatible_dim=compatible_dim, nonlinearity=nonlinearity, logit_scale=2.5)
    x = np.random.default_rng(2).normal(size=(6, 10))
    h = x @ _numpy(head.projection.weight).T + _numpy(head.projection.bias)
    if nonlinearity == "relu":
        h = np.maximum(h, 0.0)
    embedding = _unit_rows(h)
    out = head(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(_numpy(out.embeddings), embedding, atol=2e-6)
    np.testing.assert_allclose(_numpy(out.features), embedding, atol=2e-6)
    np.testing.assert_allclose(_numpy(out.compatible_embeddings), _unit_rows(embedding[:, :compatible_dim]), atol=2e-6)
    np.testing.assert_allclose(_numpy(out.logits), 2.5 * embedding @ _numpy(head.classifier.weight).T, atol=1e-5)


@pytest.mark.parametrize(("feature_dim", "old_dim", "extra_dim"), [(24, 24, 8), (32, 16, 4), (16, 24, 12)])
def test_bt2_keeps_all_information_of_f(feature_dim, old_dim, extra_dim):
    head = _head(feature_dim, old_dim, extra_dim)
    out = head(torch.randn(8, 20))
    recovered = head.recover_features(out.embeddings)
    assert torch.allclose(recovered, out.features, atol=1e-5)


def test_linear_head_prefix_and_norms():
    torch.manual_seed(0)
    head = LinearHead(input_dim=10, embedding_dim=12, num_labels=3, compatible_dim=8)
    out = head(torch.randn(4, 10))
    assert out.embeddings.shape == (4, 12)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(4), atol=1e-6)
    expected = torch.nn.functional.normalize(out.embeddings[:, :8], dim=-1)
    assert torch.allclose(out.compatible_embeddings, expected)
    assert out.logits.shape == (4, 3)


@pytest.mark.parametrize(
    ("feature_dim", "old_dim", "extra_dim", "message"),
    [
        (16, 24, 8, "extra_dim \\+ feature_dim > old_embedding_dim"),
        (16, 16, 0, "Use extra_dim >= 1"),
        (0, 16, 8, "feature_dim must be positive"),
        (16, 16, -1, "extra_dim must be >= 0"),
    ],
)
def test_bad_bt2_dims_are_refused(feature_dim, old_dim, extra_dim, message):
    with pytest.raises(ValueError, match=message):
        validate_bt2_dims(feature_dim, old_dim, extra_dim)


def test_logit_scale_multiplies_only_the_logits():
    torch.manual_seed(0)
    plain = LinearHead(input_dim=10, embedding_dim=8, num_labels=3)
    scaled = LinearHead(input_dim=10, embedding_dim=8, num_labels=3, logit_scale=16.0)
    scaled.load_state_dict(plain.state_dict())
    pooled = torch.randn(4, 10)
    a, b = plain(pooled), scaled(pooled)
    assert torch.equal(a.embeddings, b.embeddings)
    assert torch.allclose(b.logits, 16.0 * a.logits)


def test_orthogonal_base_is_the_sign_corrected_qr_of_a_gaussian():
    """The base is Haar-distributed: Q of the QR of a Gaussian, with the signs that make diag(R) positive (that
    decomposition is unique, so NumPy's QR of the same draw must give the same matrix)."""
    layer = OrthogonalLinear(5)
    with torch.no_grad():
        layer.skew.normal_()  # reset must also bring the trained rotation back to the identity
    layer.reset_parameters(torch.Generator().manual_seed(7))
    gaussian = torch.randn(5, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
    q, r = np.linalg.qr(gaussian)
    q = q * np.sign(np.diag(r))[None, :]
    np.testing.assert_allclose(_numpy(layer.base), q, atol=1e-6)
    assert torch.equal(layer.skew, torch.zeros(5, 5))
    np.testing.assert_allclose(_numpy(layer.weight), q, atol=1e-6)


def test_orthogonal_weight_is_reused_without_gradients_and_follows_every_change():
    import torch

    from bt2_hf.heads import OrthogonalLinear

    layer = OrthogonalLinear(6)
    layer.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.skew.normal_(std=0.3)
        first = layer.weight
        assert layer.weight is first  # reused
        torch.testing.assert_close(first, layer._compute_weight(), rtol=0, atol=0)
        layer.skew.add_(0.1)  # an in-place change (an optimizer step, a load) invalidates it
        changed = layer.weight
    assert not torch.equal(changed, first)
    torch.testing.assert_close(changed, layer._compute_weight().detach(), rtol=0, atol=0)
    torch.testing.assert_close(changed @ changed.T, torch.eye(6), rtol=0, atol=1e-5)
    layer.load_state_dict({"skew": torch.zeros(6, 6), "base": torch.eye(6)})
    with torch.no_grad():
        torch.testing.assert_close(layer.weight, torch.eye(6), rtol=0, atol=0)
    # with gradients it is computed afresh and differentiable
    weight = layer.weight
    assert weight.requires_grad and weight is not layer.weight
