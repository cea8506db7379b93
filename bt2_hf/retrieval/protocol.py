"""The comparison protocol: which vectors are compared with which, at which width, and how they are scaled.

DESIGN §3.1: when two models of different widths are compared, the wider side is cut to its first ``d`` dimensions
(``d`` = the narrower width, the BT² prefix rule), then both sides are re-normalised, then the score is a cosine.
The BT² research code skips the re-normalisation (its "cosine" is ``x·yᵀ`` of the truncated vectors); pass
``renormalize=False`` to reproduce its numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


def as_embedding_array(embeddings, name: str = "embeddings") -> np.ndarray:
    """Convert a tensor / array-like to a C-contiguous ``float32`` array of shape ``(N, d)``.

    Args:
        embeddings (`np.ndarray`, `torch.Tensor` or array-like): the vectors, one per row.
        name (`str`, *optional*, defaults to `"embeddings"`): how the argument is called in error messages.
    """
    if hasattr(embeddings, "detach"):  # a torch.Tensor, possibly on an accelerator
        embeddings = embeddings.detach().float().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (num_items, dim); got shape {array.shape}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); give at least one item of at least one dimension.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the encoder output before evaluating.")
    return array


FLOAT32_MAX = float(np.finfo(np.float32).max)


def l2_normalize(embeddings, eps: float = 0.0) -> np.ndarray:
    """Divide each row by its L2 norm, as float32; rows whose norm is at most ``eps`` (by default: zero rows) are left
    as they are. Float64 rows are divided in float64, any other type in float32.

    The norms are taken in float64 when float32 cannot hold them: squared and summed, a row of 1e20s overflows float32
    (it came out as zeros) and one of 1e-25s underflows it.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.dtype != np.float64:
        embeddings = embeddings.astype(np.float32, copy=False)
    if len(embeddings) == 1 and embeddings.ndim == 2 and embeddings.dtype == np.float32:
        # One float32 row (a served query): one dot product in float64, where no float32 number squared overflows or
        # vanishes, so no floating-point state to silence; few operations matter on a served search's path.
        row = embeddings[0]
        norm = math.sqrt(np.dot(row, row.astype(np.float64)))
        if norm <= eps:
            return embeddings
        if norm < FLOAT32_MAX:
            return embeddings / np.float32(norm)
        return (embeddings.astype(np.float64) / norm).astype(np.float32)
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if not np.all((norms > 0) & np.isfinite(norms)):
        norms = np.linalg.norm(embeddings.astype(np.float64), axis=1, keepdims=True)
    return (embeddings / np.where(norms > eps, norms, 1.0)).astype(np.float32, copy=False)


def truncate(embeddings: np.ndarray, dim: int, renormalize: bool = True) -> np.ndarray:
    """Keep the first ``dim`` dimensions (the BT² prefix rule) and, by default, re-normalise.

    Args:
        embeddings (`np.ndarray` of shape `(N, d)`): the vectors.
        dim (`int`): the prefix length, ``1 <= dim <= d``.
        renormalize (`bool`, *optional*, defaults to `True`): L2-normalise the prefix so that inner products are
            cosines. `False` reproduces the BT² research code, which compares un-normalised prefixes.
    """
    if not 1 <= dim <= embeddings.shape[1]:
        raise ValueError(f"Cannot take a prefix of {dim} dimensions from embeddings of width {embeddings.shape[1]}.")
    prefix = embeddings[:, :dim]
    if renormalize:
        return l2_normalize(prefix)
    return np.ascontiguousarray(prefix)


def align_widths(query: np.ndarray, gallery: np.ndarray, renormalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Bring query and gallery embeddings to a common width so that their inner product is the protocol's score.

    The wider side is cut to the narrower width. With ``renormalize=True`` both sides are L2-normalised afterwards
    (also the side that was not cut, which is a no-op for unit vectors but makes un-normalised inputs safe).

    Returns:
        `tuple[np.ndarray, np.ndarray]`: query and gallery, both of width ``min(d_query, d_gallery)``.
    """
    dim = min(query.shape[1], gallery.shape[1])
    return truncate(query, dim, renormalize), truncate(gallery, dim, renormalize)


@dataclass
class GalleryPart:
    """A block of gallery items embedded by one model.

    A gallery is a list of parts. The usual gallery is one part; a partially backfilled gallery has two (items
    already re-embedded by the new model, and items still in the old model's space), searched as one ranked list.

    Args:
        embeddings (`np.ndarray` of shape `(n, d)`): the part's vectors.
        positions (`np.ndarray` of shape `(n,)`): the row of each vector in the whole gallery, ascending. Ties in
            score are broken by this position, so the ranking does not depend on how the gallery is split.
    """

    embeddings: np.ndarray
    positions: np.ndarray

    def __post_init__(self):
        self.embeddings = as_embedding_array(self.embeddings, "gallery part embeddings")
        self.positions = np.asarray(self.positions, dtype=np.int64)
        if self.positions.shape != (self.embeddings.shape[0],):
            raise ValueError(
                f"A gallery part has {self.embeddings.shape[0]} embeddings but {self.positions.shape} positions."
            )
        if len(self.positions) > 1 and not (np.diff(self.positions) > 0).all():
            order = np.argsort(self.positions, kind="stable")
            self.positions = self.positions[order]
            self.embeddings = np.ascontiguousarray(self.embeddings[order])
            if not (np.diff(self.positions) > 0).all():
                raise ValueError("Gallery positions must be unique.")


def gallery_parts(gallery) -> list[GalleryPart]:
    """Normalise a gallery argument to a list of parts: an array becomes one part covering rows ``0..N-1``."""
    if isinstance(gallery, GalleryPart):
        return [gallery]
    if isinstance(gallery, Sequence) and gallery and all(isinstance(part, GalleryPart) for part in gallery):
        parts = list(gallery)
        positions = np.concatenate([part.positions for part in parts])
        if (
            len(np.unique(positions)) != len(positions)
            or positions.min() != 0
            or positions.max() != len(positions) - 1
        ):
            raise ValueError("The positions of the gallery parts must together cover 0..N-1 exactly once.")
        return parts
    array = as_embedding_array(gallery, "gallery_embeddings")
    return [GalleryPart(array, np.arange(array.shape[0]))]


def mixed_gallery(old_embeddings, new_embeddings, use_new: np.ndarray) -> list[GalleryPart]:
    """A gallery where the items marked in ``use_new`` carry the new model's embedding and the others the old one.

    Each part is compared with the query at its own width (new items at full width, old items at the prefix), each
    re-normalised, so all scores are cosines and one ranked list over both parts is meaningful.

    Args:
        old_embeddings (`np.ndarray` of shape `(N, d_old)`): the gallery embedded by the old model.
        new_embeddings (`np.ndarray` of shape `(N, d_new)`): the same items embedded by the new model.
        use_new (`np.ndarray` of `bool`, shape `(N,)`): which items have been re-embedded (backfilled).
    """
    old_embeddings = as_embedding_array(old_embeddings, "old_embeddings")
    new_embeddings = as_embedding_array(new_embeddings, "new_embeddings")
    use_new = np.asarray(use_new, dtype=bool)
    if not (old_embeddings.shape[0] == new_embeddings.shape[0] == use_new.shape[0]):
        raise ValueError(
            f"old ({old_embeddings.shape[0]}), new ({new_embeddings.shape[0]}) and use_new ({use_new.shape[0]}) "
            "must describe the same gallery items."
        )
    parts = []
    for mask, source in ((~use_new, old_embeddings), (use_new, new_embeddings)):
        positions = np.flatnonzero(mask)
        if len(positions):
            parts.append(GalleryPart(source[positions], positions))
    return parts
