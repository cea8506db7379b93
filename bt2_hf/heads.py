"""Embedding heads: what turns a backbone's pooled features into a (compatible) embedding.

* :class:`LinearHead` — projection → L2 norm → classifier. Used for old, independent and BCT models.
* :class:`BasisTransformationHead` — the BT² head (Zhou et al., ICCV 2023): two orthonormal basis transformations
  and ``extra_dim`` added dimensions, so that the first ``old_embedding_dim`` dimensions live in the old model's space
  while nothing of the new model's own feature is lost.

Both heads return a :class:`HeadOutput`; ``BT2Model`` turns it into the public ``BT2Output``. Heads are registered by
name (:func:`register_head`; ``BT2Config.head_type`` picks one and :func:`build_head` builds it), so a new head is one
file and one registration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class HeadOutput:
    """What a head returns (internal; see ``BT2Output`` for the public fields)."""

    embeddings: torch.Tensor  # (B, embedding_dim), unit norm
    compatible_embeddings: torch.Tensor  # (B, compatible_dim), unit norm
    features: torch.Tensor  # (B, feature_dim), unit norm: the classifier's input, matched to the independent model
    logits: torch.Tensor | None  # (B, num_labels)


def unit_rows(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise each row; a row with no direction (all zero, e.g. every unit of a ReLU dead for that input) becomes
    the fixed unit vector ``1/√d``, so that every embedding is unit-norm, as the contract says, whatever the input.

    Args:
        vectors (`torch.Tensor` of shape `(..., d)`): the rows.
        eps (`float`, *optional*, defaults to 1e-12): norms at or below it count as zero (F.normalize's epsilon).
    """
    norms = vectors.norm(dim=-1, keepdim=True)
    fallback = torch.full_like(vectors, 1.0 / math.sqrt(max(vectors.shape[-1], 1)))
    return torch.where(norms > eps, vectors / norms.clamp_min(eps), fallback)


class OrthogonalLinear(nn.Module):
    """A bias-free square linear map whose weight is exactly orthogonal at every step.

    The weight is ``W = base @ matrix_exp(A - Aᵀ)``: the exponential of a skew-symmetric matrix is a rotation, and
    ``base`` (a fixed random orthogonal matrix, saved with the model) makes the initial map a random orthogonal one,
    as with PyTorch's ``parametrizations.orthogonal`` "dynamic trivialisation". Only ``skew`` is trained. Keeping the
    parametrisation in plain parameters and buffers (rather than ``torch.nn.utils.parametrize``) keeps the state dict
    flat, safetensors-friendly and loadable on the meta device.

    Args:
        dim (`int`): size of the square map.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.skew = nn.Parameter(torch.zeros(dim, dim))
        self.register_buffer("base", torch.eye(dim))
        # The weight without gradients, kept until the parameters change (a matrix exponential per forward pass
        # dominated inference time at 768 dims); never saved, and invalidated by any in-place change, load or move.
        self._cached_weight: torch.Tensor | None = None
        self._cached_key: tuple | None = None

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw a Haar-random orthogonal ``base`` and start the trainable rotation at the identity."""
        gaussian = torch.randn(self.dim, self.dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        # Sign correction makes the distribution Haar-uniform rather than biased by QR's convention.
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        self.base.copy_(q.to(self.base.dtype))
        self.skew.zero_()

    def _compute_weight(self) -> torch.Tensor:
        skew = self.skew.float()
        rotation = torch.linalg.matrix_exp(skew - skew.T)
        return self.base.float() @ rotation

    @property
    def weight(self) -> torch.Tensor:
        """The orthogonal matrix (dim, dim), computed in float32 for accuracy whatever the autocast dtype.

        With gradients (training) it is recomputed at every call; without (inference, frozen heads) it is computed
        once and reused until ``skew`` or ``base`` changes (in place, by loading or by moving the module).
        """
        if torch.is_grad_enabled() and self.skew.requires_grad:
            return self._compute_weight()
        key = (self.skew._version, self.base._version, self.skew.data_ptr(), self.base.data_ptr(), self.skew.device)
        if self._cached_weight is None or self._cached_key != key:
            with torch.no_grad():
                self._cached_weight = self._compute_weight()
            self._cached_key = key
        return self._cached_weight

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs @ self.weight.T.to(inputs.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


_HEADS: dict[str, type[nn.Module]] = {}


def register_head(head_type: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding an embedding head to the registry under ``head_type`` (``BT2Config.head_type``).

    A head is an ``nn.Module`` mapping pooled features ``(batch, input_dim)`` to a :class:`HeadOutput`, with three
    class-level hooks (see :class:`LinearHead` for the simplest one):

    - ``default_nonlinearity`` (`str`): ``BT2Config.head_nonlinearity`` when none is given;
    - ``widths(config_values) -> (embedding_dim, compatible_dim)``: checks the config's width fields and derives the
      two widths every model states;
    - ``from_config(config, input_dim)``: builds the head from a :class:`~bt2_hf.BT2Config` (its own settings, if
      any, live in ``config.head_config``).
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if head_type in _HEADS and _HEADS[head_type] is not cls:
            raise ValueError(f"A head named {head_type!r} is already registered ({_HEADS[head_type].__name__}).")
        cls.head_type = head_type
        _HEADS[head_type] = cls
        return cls

    return decorator


def get_head_class(head_type: str) -> type[nn.Module]:
    """The head class registered as ``head_type``; a clear error lists the known names otherwise."""
    if head_type not in _HEADS:
        raise ValueError(f"Unknown head_type {head_type!r}; choose one of {sorted(_HEADS)}.")
    return _HEADS[head_type]


def list_heads() -> list[str]:
    """Names of every registered head."""
    return list(_HEADS)


def build_head(config: Any, input_dim: int) -> nn.Module:
    """The head ``config.head_type`` names, built from the config for pooled features of width ``input_dim``."""
    return get_head_class(config.head_type).from_config(config, input_dim)


@register_head("linear")
class LinearHead(nn.Module):
    """Projection → (optional ReLU) → L2 normalisation → bias-free classifier.

    This is the head of the old model, of the independently trained new model, and of BCT. For BCT with a wider new
    embedding than the old one ("naive dimension increase"), ``compatible_dim`` is the old width: the first
    ``compatible_dim`` dimensions are the part meant to be compared with the old gallery.

    Args:
        input_dim (`int`): width of the backbone's pooled features.
        embedding_dim (`int`): width of the output embedding.
        num_labels (`int`, *optional*, defaults to 0): classes of the training classifier; 0 means no classifier.
        compatible_dim (`int`, *optional*): prefix length compatible with an older model; defaults to ``embedding_dim``.
        nonlinearity (`str`, *optional*, defaults to `"none"`): ``"relu"`` applies a ReLU before normalising (the
            research code's ResNets do), ``"none"`` does not.
        logit_scale (`float`, *optional*, defaults to 1.0): fixed factor on the classifier's logits (see
            ``BT2Config.logit_scale``).
    """

    default_nonlinearity = "none"

    @classmethod
    def widths(cls, values: dict[str, Any]) -> tuple[int, int]:
        """``embedding_dim`` (128 unless given) and ``compatible_dim`` (the whole embedding unless given)."""
        embedding_dim = 128 if values.get("embedding_dim") is None else int(values["embedding_dim"])
        if embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}.")
        compatible_dim = values.get("compatible_dim")
        compatible_dim = embedding_dim if compatible_dim is None else int(compatible_dim)
        if not 0 < compatible_dim <= embedding_dim:
            raise ValueError(f"compatible_dim must be in [1, embedding_dim={embedding_dim}], got {compatible_dim}.")
        return embedding_dim, compatible_dim

    @classmethod
    def from_config(cls, config: Any, input_dim: int) -> LinearHead:
        # head_*: the head's own widths (an adapted model's embedding_dim is its adapter's output, not the head's)
        return cls(input_dim=input_dim, embedding_dim=config.head_embedding_dim, num_labels=config.num_classes,
                   compatible_dim=config.head_compatible_dim, nonlinearity=config.head_nonlinearity,
                   logit_scale=config.logit_scale)  # fmt: skip

    def __init__(
        self,
        input_dim: int,
        embedding_dim: int,
        num_labels: int = 0,
        compatible_dim: int | None = None,
        nonlinearity: str = "none",
        logit_scale: float = 1.0,
    ):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.compatible_dim = embedding_dim if compatible_dim is None else compatible_dim
        self.nonlinearity = nonlinearity
        self.logit_scale = logit_scale
        self.projection = nn.Linear(input_dim, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_labels, bias=False) if num_labels > 0 else None

    def forward(self, pooled: torch.Tensor) -> HeadOutput:
        hidden = self.projection(pooled)
        if self.nonlinearity == "relu":
            hidden = F.relu(hidden)
        embeddings = unit_rows(hidden)
        logits = self.logit_scale * self.classifier(embeddings) if self.classifier is not None else None
        if self.compatible_dim == self.embedding_dim:
            compatible = embeddings
        else:
            compatible = unit_rows(embeddings[:, : self.compatible_dim])
        return HeadOutput(embeddings=embeddings, compatible_embeddings=compatible, features=embeddings, logits=logits)


@register_head("basis_transformation")
class BasisTransformationHead(nn.Module):
    """The BT² head: old-compatible block + extra dimensions through two orthonormal basis transformations.

    With ``D = feature_dim``, ``D_old = old_embedding_dim``, ``k = extra_dim`` and ``C = feature_scale``::

        h = projection(x)                    # (B, D + D_old), ReLU'd if nonlinearity == "relu"
        f = normalize(h[:, :D])              # the new model's own feature; feeds the classifier
        a = normalize(affine(h))             # (B, k) "added" branch (the paper's pink ovals)
        z = [a ; C · P f]                    # (B, k + D), P ∈ O(D)
        b = Q z[:, :D_old]                   # Q ∈ O(D_old): the old-compatible block
        e = z[:, D_old:]                     # (B, k + D - D_old): the extra dimensions
        embedding = normalize([b ; e])       # (B, D + k); ‖[b ; e]‖ = √(1 + C²) before normalising (C if k = 0)

    The map ``z → [b ; e]`` is block-orthogonal, so ``f = Pᵀ z[:, k:] / C`` is recoverable from the embedding: the
    basis transformation loses none of the new model's information (see :meth:`recover_features`).

    Args:
        input_dim (`int`): width of the backbone's pooled features.
        feature_dim (`int`): ``D``, the new model's own feature width (that of the independently trained model).
        old_embedding_dim (`int`): ``D_old``, the width of the old model's embedding.
        extra_dim (`int`): ``k >= 0``, the dimensions added on top of ``D`` (see :func:`bt2_embedding_dim` for the
            width rule). With ``k = 0`` there is no added branch: ``z = C · P f``.
        feature_scale (`float`, *optional*, defaults to 2.0): ``C``; ``a`` carries ``1 / (1 + C²)`` of the squared norm.
        num_labels (`int`, *optional*, defaults to 0): classes of the classifier on ``f``; 0 means no classifier.
        nonlinearity (`str`, *optional*, defaults to `"relu"`): ``"relu"`` (the research code's post-ReLU features)
            or ``"none"``.
        logit_scale (`float`, *optional*, defaults to 1.0): fixed factor on the classifier's logits.
    """

    default_nonlinearity = "relu"

    @classmethod
    def widths(cls, values: dict[str, Any]) -> tuple[int, int]:
        """``embedding_dim = feature_dim + extra_dim`` and ``compatible_dim = old_embedding_dim`` (given values must
        agree)."""
        feature_dim, old_dim, extra_dim = values["feature_dim"], values.get("old_embedding_dim"), values["extra_dim"]
        if old_dim is None:
            raise ValueError("A BT² head needs old_embedding_dim: the width of the old model's embedding.")
        validate_bt2_dims(feature_dim, old_dim, extra_dim)
        derived = bt2_embedding_dim(feature_dim, extra_dim)
        if values.get("embedding_dim") is not None and values["embedding_dim"] != derived:
            raise ValueError(
                f"For a BT² head embedding_dim is feature_dim + extra_dim = {derived}, got embedding_dim="
                f"{values['embedding_dim']}."
            )
        if values.get("compatible_dim") is not None and values["compatible_dim"] != old_dim:
            raise ValueError(
                f"For a BT² head compatible_dim is old_embedding_dim = {old_dim}, got {values['compatible_dim']}."
            )
        return derived, old_dim

    @classmethod
    def from_config(cls, config: Any, input_dim: int) -> BasisTransformationHead:
        return cls(input_dim=input_dim, feature_dim=config.feature_dim, old_embedding_dim=config.old_embedding_dim,
                   extra_dim=config.extra_dim, feature_scale=config.feature_scale, num_labels=config.num_classes,
                   nonlinearity=config.head_nonlinearity, logit_scale=config.logit_scale)  # fmt: skip

    def __init__(
        self,
        input_dim: int,
        feature_dim: int,
        old_embedding_dim: int,
        extra_dim: int,
        feature_scale: float = 2.0,
        num_labels: int = 0,
        nonlinearity: str = "relu",
        logit_scale: float = 1.0,
    ):
        super().__init__()
        validate_bt2_dims(feature_dim, old_embedding_dim, extra_dim)
        self.feature_dim = feature_dim
        self.old_embedding_dim = old_embedding_dim
        self.extra_dim = extra_dim
        self.feature_scale = feature_scale
        self.nonlinearity = nonlinearity
        self.logit_scale = logit_scale
        self.embedding_dim = bt2_embedding_dim(feature_dim, extra_dim)
        self.compatible_dim = old_embedding_dim
        self.projection = nn.Linear(input_dim, feature_dim + old_embedding_dim)
        self.added_projection = nn.Linear(feature_dim + old_embedding_dim, extra_dim)
        # ‖z‖ for unit f and a: √(1 + C²), or C when there is no added branch (k = 0).
        self.norm_constant = math.sqrt(float(extra_dim > 0) + feature_scale**2)
        self.feature_rotation = OrthogonalLinear(feature_dim)  # P
        self.old_rotation = OrthogonalLinear(old_embedding_dim)  # Q
        self.classifier = nn.Linear(feature_dim, num_labels, bias=False) if num_labels > 0 else None

    def forward(self, pooled: torch.Tensor) -> HeadOutput:
        hidden = self.projection(pooled)
        if self.nonlinearity == "relu":
            hidden = F.relu(hidden)
        features = unit_rows(hidden[:, : self.feature_dim])
        added = unit_rows(self.added_projection(hidden))
        transformed = torch.cat([added, self.feature_scale * self.feature_rotation(features)], dim=-1)
        old_block = self.old_rotation(transformed[:, : self.old_embedding_dim])
        extra_block = transformed[:, self.old_embedding_dim :]
        # f and a are unit rows, so ‖[b ; e]‖ = norm_constant exactly (the identity recover_features inverts).
        embeddings = torch.cat([old_block, extra_block], dim=-1) / self.norm_constant
        logits = self.logit_scale * self.classifier(features) if self.classifier is not None else None
        return HeadOutput(
            embeddings=embeddings,
            compatible_embeddings=unit_rows(old_block),
            features=features,
            logits=logits,
        )

    @torch.no_grad()
    def recover_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Invert the basis transformation: the unit feature ``f`` from a (normalised) embedding.

        Args:
            embeddings (`torch.Tensor` of shape `(batch, embedding_dim)`): outputs of this head.

        Returns:
            `torch.Tensor` of shape `(batch, feature_dim)`.
        """
        raw = embeddings * self.norm_constant
        old_block = raw[:, : self.old_embedding_dim] @ self.old_rotation.weight.to(raw.dtype)  # Qᵀ b (row form)
        transformed = torch.cat([old_block, raw[:, self.old_embedding_dim :]], dim=-1)
        scaled = transformed[:, self.extra_dim :] / self.feature_scale
        return scaled @ self.feature_rotation.weight.to(raw.dtype)  # Pᵀ (C P f) / C


def bt2_embedding_dim(feature_dim: int, extra_dim: int) -> int:
    """The width rule of a BT² embedding, stated once: ``feature_dim + extra_dim`` (``D + k``).

    The first ``old_embedding_dim`` dimensions are the old-compatible block, so the rule needs ``D + k > D_old``
    (:func:`validate_bt2_dims`); ``k = 0`` is valid when ``D > D_old``.
    """
    return int(feature_dim) + int(extra_dim)


def validate_bt2_dims(feature_dim: int, old_embedding_dim: int, extra_dim: int) -> None:
    """Raise a clear `ValueError` when the BT² dimensions cannot work (``bt2_embedding_dim`` must exceed the old
    width)."""
    for name, value in (("feature_dim", feature_dim), ("old_embedding_dim", old_embedding_dim)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}.")
    if extra_dim < 0:
        raise ValueError(f"extra_dim must be >= 0, got {extra_dim}.")
    if bt2_embedding_dim(feature_dim, extra_dim) <= old_embedding_dim:
        raise ValueError(
            f"BT² needs extra_dim + feature_dim > old_embedding_dim, got {extra_dim} + {feature_dim} <= "
            f"{old_embedding_dim}: the embedding would have no dimension left beyond the old-compatible block. "
            f"Use extra_dim >= {old_embedding_dim - feature_dim + 1} or a wider feature_dim (the paper adds 32 dims to "
            "128-d models)."
        )
