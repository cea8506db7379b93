"""The BT² head's mathematics: orthogonality, unit norms, the prefix contract, and invertibility."""

from __future__ import annotations

import math

import pytest
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


def test_bt2_head_matches_hand_computation():
    head = _head(feature_dim=12, old_dim=12, extra_dim=4, scale=3.0)
    pooled = torch.randn(5, 20)
    hidden = torch.relu(head.projection(pooled))
    f = torch.nn.functional.normalize(hidden[:, :12], dim=-1)
    a = torch.nn.functional.normalize(head.added_projection(hidden), dim=-1)
    z = torch.cat([a, 3.0 * f @ head.feature_rotation.weight.T], dim=-1)
    b = z[:, :12] @ head.old_rotation.weight.T
    e = z[:, 12:]
    raw = torch.cat([b, e], dim=-1)
    # Before normalising, every embedding has norm sqrt(1 + C²).
    assert torch.allclose(raw.norm(dim=-1), torch.full((5,), math.sqrt(10.0)), atol=1e-5)
    out = head(pooled)
    assert torch.allclose(out.embeddings, raw / math.sqrt(10.0), atol=1e-6)
    assert torch.allclose(out.features, f, atol=1e-6)
    assert torch.allclose(out.logits, f @ head.classifier.weight.T, atol=1e-6)


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
