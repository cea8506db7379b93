"""Every valid configuration gives unit-norm embeddings, including BT² with extra_dim = 0 (the width rule D + k)."""

from __future__ import annotations

import itertools

import pytest
import torch

from bt2_hf import BT2Config, BT2Model
from bt2_hf.heads import BasisTransformationHead, LinearHead, bt2_embedding_dim, unit_rows, validate_bt2_dims

GRID = [
    (feature_dim, old_dim, extra_dim, scale, nonlinearity)
    for feature_dim, old_dim, extra_dim, scale, nonlinearity in itertools.product(
        (4, 8, 16), (4, 12), (0, 4), (0.5, 2.0), ("relu", "none")
    )
    if bt2_embedding_dim(feature_dim, extra_dim) > old_dim
]


def test_grid_covers_extra_dim_zero():
    assert any(extra == 0 and feature > old for feature, old, extra, _, _ in GRID) and len(GRID) > 20


@pytest.mark.parametrize(("feature_dim", "old_dim", "extra_dim", "scale", "nonlinearity"), GRID)
def test_bt2_head_embeddings_are_unit_norm(feature_dim, old_dim, extra_dim, scale, nonlinearity):
    torch.manual_seed(feature_dim * 100 + old_dim * 10 + extra_dim)
    head = BasisTransformationHead(
        12, feature_dim, old_dim, extra_dim, feature_scale=scale, num_labels=3, nonlinearity=nonlinearity
    )
    for module in (head.feature_rotation, head.old_rotation):
        module.reset_parameters()
    # Include a row that kills every ReLU unit (large negative input through a positive-only projection).
    inputs = torch.randn(64, 12)
    with torch.no_grad():
        head.projection.weight.abs_()
        head.projection.bias.zero_()
    inputs[0] = -10.0
    out = head(inputs)
    assert out.embeddings.shape == (64, feature_dim + extra_dim)
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.compatible_embeddings.norm(dim=-1), torch.ones(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.features.norm(dim=-1), torch.ones(64), atol=1e-5, rtol=0)
    # The basis transformation still keeps all of f (also without the added branch).
    torch.testing.assert_close(head.recover_features(out.embeddings), out.features, atol=1e-4, rtol=0)


def test_extra_dim_zero_wider_feature_was_the_0894_case():
    """feature_dim > old width with extra_dim = 0 used to give norm C/√(1+C²) = 0.894 for C = 2."""
    torch.manual_seed(0)
    config = BT2Config(
        backbone_type="small_cnn",
        backbone_config={"num_channels": 1, "widths": [8, 16], "image_size": 28},
        head_type="basis_transformation",
        feature_dim=24,
        old_embedding_dim=16,
        extra_dim=0,
    )
    assert (config.embedding_dim, config.compatible_dim) == (24, 16)
    model = BT2Model(config).eval()
    with torch.no_grad():
        embeddings = model(pixel_values=torch.randn(8, 1, 28, 28)).embeddings
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("nonlinearity", ["relu", "none"])
@pytest.mark.parametrize("compatible_dim", [2, 8])
def test_linear_head_embeddings_are_unit_norm(nonlinearity, compatible_dim):
    torch.manual_seed(1)
    head = LinearHead(12, 8, num_labels=3, compatible_dim=compatible_dim, nonlinearity=nonlinearity)
    inputs = torch.randn(32, 12)
    with torch.no_grad():
        head.projection.weight.abs_()
        head.projection.bias.zero_()
    inputs[0] = -10.0  # every ReLU unit dead for this row
    out = head(inputs)
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.compatible_embeddings.norm(dim=-1), torch.ones(32), atol=1e-5, rtol=0)


def test_unit_rows_and_width_rule():
    rows = unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(rows, torch.tensor([[0.6, 0.8], [2**-0.5, 2**-0.5]]))
    assert bt2_embedding_dim(24, 0) == 24
    validate_bt2_dims(24, 16, 0)  # k = 0 is valid when D > D_old
    with pytest.raises(ValueError, match="extra_dim >= 1"):
        validate_bt2_dims(16, 16, 0)
