"""k-nearest-neighbour backends behind one interface (inner-product similarity; inputs are already aligned).

Every backend answers ``search(queries, gallery, k, exclude_self_ids=None) -> (scores, indices)`` with rows sorted by
descending score. Exact backends also share one **tie rule**: equal scores are ordered by ascending gallery row, and
which of several tied items make it into the top k follows the same rule. Neither faiss nor ``torch.topk`` promise
an order among ties, so the base class over-fetches a few neighbours, sorts them canonically, and recomputes the rare
rows whose tie group runs past the fetched list. That is what makes the exact backends return identical neighbours
and equal a ``np.argsort(-scores, kind="stable")`` reference.

Memory stays bounded: queries are processed in chunks and nothing of size ``N_query x N_gallery`` is materialised.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .protocol import as_embedding_array

logger = logging.getLogger(__name__)

FAISS_INSTALL_HINT = (
    "faiss is required for this backend: `pip install faiss-cpu` (or `pip install bt2_hf[retrieval]`)."
)


def import_faiss():
    """Import faiss lazily, with an install hint instead of a bare ``ModuleNotFoundError``."""
    # faiss's loader logs, at INFO, the failed probe of each optional CPU build before the one that loads: noise.
    # (Set once: setLevel clears every logger's cache, 0.1 ms on each served search otherwise.)
    loader = logging.getLogger("faiss.loader")
    if loader.level != logging.WARNING:
        loader.setLevel(logging.WARNING)
    try:
        import faiss
    except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(FAISS_INSTALL_HINT) from error
    return faiss


def exact_topk_from_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of each row of a dense score matrix under the tie rule (ties by ascending column).

    Args:
        scores (`np.ndarray` of shape `(n, N)`): similarities; ``-inf`` marks excluded items.
        k (`int`): how many to keep, ``k <= N``.
    """
    n, num_items = scores.shape
    out_scores = np.empty((n, k), dtype=np.float32)
    out_indices = np.empty((n, k), dtype=np.int64)
    for row in range(n):
        values = scores[row]
        if k < num_items:
            threshold = np.partition(values, num_items - k)[num_items - k]  # the k-th largest value
            above = np.flatnonzero(values > threshold)
            tied = np.flatnonzero(values == threshold)[: k - len(above)]
            candidates = np.concatenate([above, tied])
        else:
            candidates = np.arange(num_items)
        order = np.lexsort((candidates, -values[candidates]))
        out_indices[row] = candidates[order]
        out_scores[row] = values[candidates[order]]
    return out_scores, out_indices


class KNNBackend:
    """Base class: subclasses implement :meth:`prepare` and :meth:`_raw_search`.

    Args:
        chunk_size (`int`, *optional*, defaults to `4096`): queries per block; bounds memory to
            ``chunk_size x k`` results (plus ``chunk_size x gallery_chunk`` scores for the torch backend).
        tie_margin (`int`, *optional*, defaults to `8`): extra neighbours fetched by exact backends to resolve ties
            at the k-th position without a recomputation.
    """

    exact: bool = True
    name: str = "base"

    def __init__(self, chunk_size: int = 4096, tie_margin: int = 8):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.chunk_size = chunk_size
        self.tie_margin = tie_margin

    def prepare(self, gallery: np.ndarray) -> Any:
        """Build whatever the backend searches (an index, a tensor) once per gallery."""
        raise NotImplementedError

    def _raw_search(self, queries: np.ndarray, prepared: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, indices) with no promise about ties; missing neighbours have index ``-1``."""
        raise NotImplementedError

    def search(self, queries, gallery, k: int, exclude_self_ids: np.ndarray | None = None):
        """Find the ``k`` gallery items with the largest inner product for every query.

        Args:
            queries (`np.ndarray` of shape `(n, d)`): query vectors, already aligned with the gallery.
            gallery (`np.ndarray` of shape `(N, d)` or the result of :meth:`prepare`): the gallery.
            k (`int`): neighbours per query; capped at the number of candidates.
            exclude_self_ids (`np.ndarray` of shape `(n,)`, *optional*): for each query, a gallery row that must not
                be returned (leave-one-out), or ``-1`` for none.

        Returns:
            `tuple[np.ndarray, np.ndarray]`: ``scores`` (float32) and ``indices`` (int64), both ``(n, k')`` with
            ``k' = min(k, N)``, rows sorted by descending score then ascending index. Where fewer than ``k'``
            candidates exist (a left-out item in a tiny gallery), the row is padded with score ``-inf`` and index
            ``-1``.
        """
        queries = as_embedding_array(queries, "queries")
        prepared = gallery if isinstance(gallery, _Prepared) else self.prepare(as_embedding_array(gallery, "gallery"))
        num_items = prepared.num_items
        if queries.shape[1] != prepared.dim:
            raise ValueError(
                f"Query width {queries.shape[1]} differs from gallery width {prepared.dim}; align them first "
                "(bt2_hf.retrieval.protocol.align_widths)."
            )
        excluding = exclude_self_ids is not None
        if excluding:
            exclude_self_ids = np.asarray(exclude_self_ids, dtype=np.int64)
            if exclude_self_ids.shape != (queries.shape[0],):
                raise ValueError("exclude_self_ids must hold one gallery row (or -1) per query.")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        k_out = min(k, num_items)
        fetch = min(num_items, k_out + int(excluding) + (self.tie_margin if self.exact else 0))

        scores_out = np.empty((queries.shape[0], k_out), dtype=np.float32)
        indices_out = np.empty((queries.shape[0], k_out), dtype=np.int64)
        for start in range(0, queries.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, queries.shape[0])
            scores, indices = self._raw_search(queries[start:stop], prepared, fetch)
            scores = scores.astype(np.float32, copy=True)
            scores[indices < 0] = -np.inf
            excluded_here = None
            if excluding:
                excluded_here = exclude_self_ids[start:stop]
                scores[indices == excluded_here[:, None]] = -np.inf
            # Canonical order: descending score, then ascending gallery row (missing rows, -1, are at -inf anyway).
            sort_key_index = np.where(indices < 0, np.iinfo(np.int64).max, indices)
            order = np.lexsort((sort_key_index, -scores), axis=-1)
            scores = np.take_along_axis(scores, order, axis=1)
            indices = np.take_along_axis(indices, order, axis=1)
            if self.exact and fetch < num_items:
                self._repair_ties(queries[start:stop], prepared, scores, indices, k_out, excluded_here)
            indices[~np.isfinite(scores)] = -1
            scores_out[start:stop] = scores[:, :k_out]
            indices_out[start:stop] = indices[:, :k_out]
        return scores_out, indices_out

    def _repair_ties(self, queries, prepared, scores, indices, k_out, excluded):
        # A row needs care when the k-th score equals the last valid fetched score: the tie group may continue past
        # the fetched list, and the backend chose arbitrarily which tied rows it returned.
        valid = np.isfinite(scores)
        last_valid = np.where(valid.any(axis=1), valid.sum(axis=1) - 1, 0)
        kth = scores[:, k_out - 1]
        last = scores[np.arange(len(scores)), last_valid]
        rows = np.flatnonzero(np.isfinite(kth) & (kth == last))
        if len(rows) == 0:
            return
        logger.debug("Recomputing %d row(s) whose ties cross the k-th position.", len(rows))
        gallery = prepared.embeddings
        for row in rows:
            full = gallery @ queries[row]
            if excluded is not None and excluded[row] >= 0:
                full[excluded[row]] = -np.inf
            row_scores, row_indices = exact_topk_from_scores(full[None, :], k_out)
            scores[row, :k_out] = row_scores[0]
            indices[row, :k_out] = row_indices[0]


class _Prepared:
    """A gallery made ready for one backend (keeps the embeddings for tie repair)."""

    def __init__(self, embeddings: np.ndarray, handle: Any = None):
        self.embeddings = embeddings
        self.handle = handle
        self.num_items, self.dim = embeddings.shape


class FaissFlatKNN(KNNBackend):
    """Exact inner-product search with ``faiss.IndexFlatIP`` (the default backend).

    >>> import numpy as np
    >>> from bt2_hf.retrieval.knn import FaissFlatKNN
    >>> gallery = np.eye(3, dtype=np.float32)
    >>> scores, indices = FaissFlatKNN().search(gallery[:1], gallery, k=2)
    >>> indices.tolist()
    [[0, 1]]
    """

    name = "faiss-flat"

    def prepare(self, gallery: np.ndarray) -> _Prepared:
        faiss = import_faiss()
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery)
        return _Prepared(gallery, index)

    def _raw_search(self, queries, prepared, k):
        return prepared.handle.search(queries, k)


class FaissIVFKNN(KNNBackend):
    """Approximate search with an inverted-file index (``IndexIVFFlat``, inner product) for large galleries.

    Args:
        nlist (`int`, *optional*): number of coarse clusters; defaults to ``4 * sqrt(N)``, capped so that each cluster
            has at least 39 training points (faiss' own minimum).
        nprobe (`int`, *optional*, defaults to `16`): clusters visited per query (recall vs speed).
        train_size (`int`, *optional*, defaults to `262144`): points sampled to train the coarse quantiser.
        seed (`int`, *optional*, defaults to `0`): sampling seed.
    """

    exact = False
    name = "faiss-ivf"

    def __init__(self, nlist: int | None = None, nprobe: int = 16, train_size: int = 262_144, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.nlist, self.nprobe, self.train_size, self.seed = nlist, nprobe, train_size, seed

    def prepare(self, gallery: np.ndarray) -> _Prepared:
        faiss = import_faiss()
        num_items, dim = gallery.shape
        nlist = self.nlist or int(4 * np.sqrt(num_items))
        nlist = max(1, min(nlist, num_items // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(self.seed)
        sample = gallery if num_items <= self.train_size else gallery[rng.choice(num_items, self.train_size, False)]
        index.train(np.ascontiguousarray(sample))
        index.add(gallery)
        index.nprobe = min(self.nprobe, nlist)
        return _Prepared(gallery, index)

    def _raw_search(self, queries, prepared, k):
        return prepared.handle.search(queries, k)


class FaissHNSWKNN(KNNBackend):
    """Approximate search with a HNSW graph (``IndexHNSWFlat``, inner product).

    Args:
        m (`int`, *optional*, defaults to `32`): graph degree.
        ef_construction (`int`, *optional*, defaults to `80`): build-time beam width.
        ef_search (`int`, *optional*, defaults to `128`): search-time beam width (raised to ``k`` when smaller).
    """

    exact = False
    name = "faiss-hnsw"

    def __init__(self, m: int = 32, ef_construction: int = 80, ef_search: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search

    def prepare(self, gallery: np.ndarray) -> _Prepared:
        faiss = import_faiss()
        index = faiss.IndexHNSWFlat(gallery.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.add(gallery)
        return _Prepared(gallery, index)

    def _raw_search(self, queries, prepared, k):
        prepared.handle.hnsw.efSearch = max(self.ef_search, k)
        return prepared.handle.search(queries, k)


class TorchChunkedKNN(KNNBackend):
    """Exact search with chunked ``torch`` matrix products (on a GPU when one is present).

    Args:
        device (`str` or `torch.device`, *optional*): defaults to ``"cuda"`` when available, else ``"cpu"``.
        gallery_chunk_size (`int`, *optional*, defaults to `262144`): gallery rows per block; with ``chunk_size``
            it bounds the score block to ``chunk_size x gallery_chunk_size`` floats.
    """

    name = "torch"

    def __init__(self, device=None, gallery_chunk_size: int = 262_144, chunk_size: int = 1024, **kwargs):
        super().__init__(chunk_size=chunk_size, **kwargs)
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.gallery_chunk_size = gallery_chunk_size

    def prepare(self, gallery: np.ndarray) -> _Prepared:
        import torch

        return _Prepared(gallery, torch.from_numpy(gallery).to(self.device))

    def _raw_search(self, queries, prepared, k):
        import torch

        query_tensor = torch.from_numpy(queries).to(self.device)
        gallery_tensor = prepared.handle
        best_scores = best_indices = None
        with torch.no_grad():
            for start in range(0, gallery_tensor.shape[0], self.gallery_chunk_size):
                block = query_tensor @ gallery_tensor[start : start + self.gallery_chunk_size].T  # (n, g)
                block_scores, block_indices = torch.topk(block, min(k, block.shape[1]), dim=1)
                block_indices += start
                if best_scores is None:
                    best_scores, best_indices = block_scores, block_indices
                else:
                    merged_scores = torch.cat([best_scores, block_scores], dim=1)
                    merged_indices = torch.cat([best_indices, block_indices], dim=1)
                    top_scores, top_positions = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
                    best_scores, best_indices = top_scores, torch.gather(merged_indices, 1, top_positions)
        return best_scores.cpu().numpy(), best_indices.cpu().numpy()


BACKENDS: dict[str, type[KNNBackend]] = {
    "faiss": FaissFlatKNN,
    "faiss-flat": FaissFlatKNN,
    "faiss-ivf": FaissIVFKNN,
    "faiss-hnsw": FaissHNSWKNN,
    "torch": TorchChunkedKNN,
}


def get_backend(backend: str | KNNBackend | None = None, **kwargs) -> KNNBackend:
    """Resolve a backend name (``faiss`` / ``faiss-flat``, ``faiss-ivf``, ``faiss-hnsw``, ``torch``) or pass one through."""
    if backend is None:
        backend = "faiss"
    if isinstance(backend, KNNBackend):
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"Unknown k-NN backend {backend!r}; choose one of {sorted(BACKENDS)} or pass a KNNBackend.")
    return BACKENDS[backend](**kwargs)
