"""Post-hoc adapters: maps fitted after the fact from a new model's embedding space into an old gallery's space.

The practitioner's first try at an upgrade without re-embedding: keep the independently trained new model, and fit a
small map from its embeddings to the old model's embeddings of the same items. These are the three adapters of
Drift-Adapter (EMNLP 2025), fitted here on paired, unit-normalised embeddings ``(x_i, y_i)`` (row ``i`` of each is
the same training item):

- :class:`ProcrustesAdapter`: ``x ↦ x Q`` with orthonormal ``Q`` (a rotation; closed form from one SVD);
- :class:`LowRankAffineAdapter`: ``x ↦ x W + b`` with ``rank(W) ≤ r`` (reduced-rank ridge regression, closed form);
- :class:`ResidualMLPAdapter`: ``x ↦ x Q + MLP(x)``, the Procrustes rotation plus a small learned correction
  (trained with Adam on the cosine loss, from a fixed seed).

Every adapter is a ``torch.nn.Module`` whose output is L2-normalised (the retrieval protocol's cosine), with a
JSON-able :meth:`~EmbeddingAdapter.config_dict` and its weights in ``state_dict`` (safetensors-ready), so it can be
saved beside a query model. :func:`fit_adapter` fits any registered kind by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ADAPTERS: dict[str, type[EmbeddingAdapter]] = {}


def register_adapter(kind: str) -> Callable[[type[EmbeddingAdapter]], type[EmbeddingAdapter]]:
    """Class decorator: make an adapter fittable and loadable by ``kind``."""

    def decorate(cls: type[EmbeddingAdapter]) -> type[EmbeddingAdapter]:
        if kind in ADAPTERS:
            raise ValueError(f"An adapter named {kind!r} is already registered ({ADAPTERS[kind].__name__}).")
        cls.kind = kind
        ADAPTERS[kind] = cls
        return cls

    return decorate


def checked_rows(values: Any, name: str) -> np.ndarray:
    """``values`` (numpy or torch rows) as a float64 matrix, checked: two-dimensional, non-empty, finite."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty (rows, dim) matrix; got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; embed the items again.")
    return array


def paired_rows(new_embeddings: Any, old_embeddings: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices as float64 unit rows, checked: same row count, finite, non-empty."""

    def unit(values: Any, name: str) -> np.ndarray:
        array = checked_rows(values, name)
        return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)

    x, y = unit(new_embeddings, "new_embeddings"), unit(old_embeddings, "old_embeddings")
    if len(x) != len(y):
        raise ValueError(
            f"{len(x)} new embeddings but {len(y)} old ones: the training pairs need one old embedding per new "
            "embedding (row i of each is the same item)."
        )
    return x, y


def procrustes_rotation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Q = U Vᵀ`` from the thin SVD of ``Xᵀ Y``: the map with orthonormal columns (or rows) maximising
    ``Σ <x_i Q, y_i>``. With equal widths it is orthogonal, and it recovers an exact rotation ``Y = X R``."""
    u, _, vt = np.linalg.svd(x.T @ y, full_matrices=False)
    return u @ vt


def reduced_rank_regression(x: np.ndarray, y: np.ndarray, rank: int | None, ridge: float) -> tuple[np.ndarray, ...]:
    """``(W, b)`` minimising ``Σ ||x_i W + b − y_i||² + ridge·N·||W||²`` subject to ``rank(W) ≤ rank``.

    The ridge solution ``W₀`` is projected onto the top ``rank`` right singular vectors of its fitted values
    ``X W₀`` (the classical reduced-rank regression solution; exact for ``ridge = 0``). ``rank=None`` keeps full rank.
    """
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + ridge * len(x) * np.eye(x.shape[1])
    weight = np.linalg.lstsq(gram, xc.T @ yc, rcond=None)[0]
    if rank is not None and rank < min(weight.shape):
        _, _, vt = np.linalg.svd(xc @ weight, full_matrices=False)
        projection = vt[:rank].T @ vt[:rank]
        weight = weight @ projection
    return weight, y_mean - x_mean @ weight


class EmbeddingAdapter(nn.Module):
    """Base class: a map from ``input_dim``-d new embeddings to unit-norm ``output_dim``-d old-space embeddings.

    Subclasses implement :meth:`fit` (a classmethod returning a fitted adapter) and :meth:`transform` (the raw map);
    ``forward`` normalises. Construct one with its config (:meth:`config_dict`) and load its ``state_dict`` to restore
    a saved adapter.
    """

    kind: ClassVar[str] = "base"

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        if input_dim < 1 or output_dim < 1:
            raise ValueError(f"Adapter widths must be positive; got input_dim={input_dim}, output_dim={output_dim}.")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)

    def config_dict(self) -> dict[str, Any]:
        """What rebuilds this adapter (its kind and widths and hyper-parameters), JSON-able."""
        return {"kind": self.kind, "input_dim": self.input_dim, "output_dim": self.output_dim}

    def transform(self, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.shape[-1] != self.input_dim:
            raise ValueError(
                f"This {self.kind} adapter maps {self.input_dim}-d embeddings; got {embeddings.shape[-1]}-d ones. "
                "Feed it the embeddings of the model it was fitted on."
            )
        embeddings = F.normalize(embeddings.to(self._dtype()), dim=-1)
        return F.normalize(self.transform(embeddings), dim=-1)

    @torch.no_grad()
    def apply(self, embeddings: Any, batch_size: int = 65536) -> np.ndarray:
        """Map a matrix of new embeddings (numpy or torch rows) to unit-norm old-space rows, as float32 numpy."""
        array = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        chunks = [self(array[start : start + batch_size]) for start in range(0, len(array), batch_size)]
        return torch.cat(chunks).float().numpy() if chunks else np.zeros((0, self.output_dim), np.float32)

    def _dtype(self) -> torch.dtype:
        return next(iter(self.parameters()), torch.zeros(())).dtype

    @classmethod
    def fit(cls, new_embeddings: Any, old_embeddings: Any, **kwargs: Any) -> EmbeddingAdapter:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EmbeddingAdapter:
        """An unfitted adapter of the shape ``config`` describes (load its ``state_dict`` next)."""
        kind = config.get("kind")
        if kind not in ADAPTERS:
            raise ValueError(f"Unknown adapter kind {kind!r}; registered: {sorted(ADAPTERS)}.")
        arguments = {key: value for key, value in config.items() if key != "kind"}
        return ADAPTERS[kind](**arguments)


@register_adapter("procrustes")
class ProcrustesAdapter(EmbeddingAdapter):
    """``x ↦ normalise(x Q)``, ``Q`` with orthonormal columns: keeps the new space's geometry, only turns it.

    Example:

    ```python
    >>> adapter = ProcrustesAdapter.fit(new_train, old_train)  # (N, d_new), (N, d_old): the same N items
    >>> queries_in_old_space = adapter.apply(new_queries)
    ```
    """

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__(input_dim, output_dim)
        self.weight = nn.Parameter(torch.zeros(input_dim, output_dim), requires_grad=False)

    def transform(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.weight

    @classmethod
    def fit(cls, new_embeddings: Any, old_embeddings: Any) -> ProcrustesAdapter:
        """The orthogonal Procrustes solution on the paired rows (closed form)."""
        x, y = paired_rows(new_embeddings, old_embeddings)
        adapter = cls(x.shape[1], y.shape[1])
        adapter.weight.data = torch.from_numpy(procrustes_rotation(x, y)).float()
        return adapter


@register_adapter("low_rank_affine")
class LowRankAffineAdapter(EmbeddingAdapter):
    """``x ↦ normalise(x W + b)`` with ``rank(W) ≤ rank``: an affine map that can also stretch and shear.

    ``rank=None`` fits a full-rank affine map (least squares). Stored as ``W = A B`` (``input_dim × rank`` and
    ``rank × output_dim``), so a low rank also means few parameters.
    """

    def __init__(self, input_dim: int, output_dim: int, rank: int | None = None, ridge: float = 1e-3):
        super().__init__(input_dim, output_dim)
        self.rank = min(input_dim, output_dim) if rank is None else int(rank)
        if not 1 <= self.rank <= min(input_dim, output_dim):
            raise ValueError(f"rank must be between 1 and {min(input_dim, output_dim)}; got {rank}.")
        self.ridge = float(ridge)
        self.down = nn.Parameter(torch.zeros(input_dim, self.rank), requires_grad=False)
        self.up = nn.Parameter(torch.zeros(self.rank, output_dim), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(output_dim), requires_grad=False)

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "rank": self.rank, "ridge": self.ridge}

    def transform(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.down @ self.up + self.bias

    @classmethod
    def fit(
        cls, new_embeddings: Any, old_embeddings: Any, rank: int | None = None, ridge: float = 1e-3
    ) -> LowRankAffineAdapter:
        """Reduced-rank ridge regression on the paired rows (closed form).

        Args:
            new_embeddings, old_embeddings (`np.ndarray` of shape `(N, d)`): paired rows.
            rank (`int`, *optional*): the rank bound (default: full rank, i.e. plain least squares).
            ridge (`float`, *optional*, defaults to 1e-3): L2 penalty on ``W`` relative to ``N``.
        """
        if not ridge >= 0:
            raise ValueError(f"ridge must be ≥ 0; got {ridge}.")
        x, y = paired_rows(new_embeddings, old_embeddings)
        adapter = cls(x.shape[1], y.shape[1], rank=rank, ridge=ridge)
        weight, bias = reduced_rank_regression(x, y, adapter.rank, ridge)
        # W = A B through the SVD of W (exactly rank ≤ r after the projection)
        u, s, vt = np.linalg.svd(weight, full_matrices=False)
        r = adapter.rank
        adapter.down.data = torch.from_numpy(u[:, :r] * s[:r]).float()
        adapter.up.data = torch.from_numpy(vt[:r]).float()
        adapter.bias.data = torch.from_numpy(bias).float()
        return adapter


@register_adapter("residual_mlp")
class ResidualMLPAdapter(EmbeddingAdapter):
    """``x ↦ normalise(x Q + MLP(x))``: the Procrustes rotation plus a small nonlinear correction.

    The MLP (``input_dim → hidden_dim → output_dim``, GELU) starts at zero output, so training starts from the
    Procrustes solution and only learns what a rotation cannot express.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int = 256):
        super().__init__(input_dim, output_dim)
        self.hidden_dim = int(hidden_dim)
        self.rotation = nn.Parameter(torch.zeros(input_dim, output_dim))
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim))

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "hidden_dim": self.hidden_dim}

    def transform(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.rotation + self.mlp(embeddings)

    @classmethod
    def fit(
        cls,
        new_embeddings: Any,
        old_embeddings: Any,
        hidden_dim: int = 256,
        epochs: int = 30,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ) -> ResidualMLPAdapter:
        """Start from Procrustes, then train everything with Adam on ``1 − cos(adapter(x_i), y_i)``.

        Args:
            new_embeddings, old_embeddings (`np.ndarray` of shape `(N, d)`): paired rows.
            hidden_dim (`int`, *optional*, defaults to 256): the MLP's hidden width.
            epochs, batch_size, learning_rate, weight_decay: the optimisation (AdamW); deterministic for a seed.
            seed (`int`, *optional*, defaults to 0): initialisation and batch order.
        """
        x, y = paired_rows(new_embeddings, old_embeddings)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            adapter = cls(x.shape[1], y.shape[1], hidden_dim=hidden_dim)
        adapter.rotation.data = torch.from_numpy(procrustes_rotation(x, y)).float()
        nn.init.zeros_(adapter.mlp[-1].weight)
        nn.init.zeros_(adapter.mlp[-1].bias)
        inputs, targets = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=learning_rate, weight_decay=weight_decay)
        adapter.train()
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                loss = 1 - (adapter(inputs[rows]) * targets[rows]).sum(dim=1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        adapter.eval()
        adapter.requires_grad_(False)
        return adapter


def fit_adapter(kind: str, new_embeddings: Any, old_embeddings: Any, **kwargs: Any) -> EmbeddingAdapter:
    """Fit a registered adapter (``procrustes``, ``low_rank_affine``, ``residual_mlp``) on paired embeddings.

    Args:
        kind (`str`): the adapter's registered name.
        new_embeddings (`np.ndarray` of shape `(N, d_new)`): the new model's embeddings of N training items.
        old_embeddings (`np.ndarray` of shape `(N, d_old)`): the old model's embeddings of the same items.
        **kwargs: the adapter's own fitting arguments (``rank``, ``hidden_dim``, ``epochs`` …).

    Returns:
        The fitted :class:`EmbeddingAdapter` (in eval mode, no gradients).
    """
    if kind not in ADAPTERS:
        raise ValueError(f"Unknown adapter {kind!r}; choose one of {sorted(ADAPTERS)}.")
    return ADAPTERS[kind].fit(new_embeddings, old_embeddings, **kwargs)


__all__ = [
    "ADAPTERS",
    "EmbeddingAdapter",
    "LowRankAffineAdapter",
    "ProcrustesAdapter",
    "ResidualMLPAdapter",
    "checked_rows",
    "fit_adapter",
    "paired_rows",
    "procrustes_rotation",
    "reduced_rank_regression",
    "register_adapter",
]
