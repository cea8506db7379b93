"""A gallery search prepared once for a query model: what a served query runs.

A service answers the same few query models on every request, and what a gallery decides for a query model (its
admission, the prefix compared with the encoder's vectors, whether a backfill in progress takes part) depends on the
gallery's manifest and the model's config only. :func:`prepare_search` decides it once; :meth:`PreparedSearch.hits`
then runs one query with nothing left to decide: the prefix cut and normalised, the encoder-space search, the hits.
The hits are those of :func:`~bt2_hf.galleries.search_gallery` for the same query (the tests compare them).

Where a query needs more than the encoder's space (a backfill in progress that its model takes part in, a prefix
shared with the gallery's vectors), there is nothing to prepare: :func:`prepare_search` returns ``None`` and
:func:`~bt2_hf.galleries.search_gallery` answers.

Why: a served vector search takes about half a millisecond, and the Python around it runs right after faiss and the
re-ranking have taken the CPU's caches, where each step costs several times what it costs in a loop. In one process,
each query in turn, the service's steps around a 0.55 ms search had cost 0.23 ms; with the decisions taken once and
one-query paths, 0.11 ms (``benchmarks/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..retrieval.protocol import l2_normalize
from .mixed import backfill_query_prefix, check_query_width, hit_dicts


@dataclass(frozen=True)
class PreparedSearch:
    """One query model's encoder-space search of one gallery, as of one manifest.

    Args:
        store (`FaissGallery` or `MilvusGallery`): the gallery.
        manifest (`dict`): the manifest it was prepared on (a gallery replaces its manifest on every change).
        query_config: the query model's config.
        admission (`Admission`): why the model was admitted.
        prefix (`int`): the query prefix compared with the encoder's vectors.
        labels (`bool`): the gallery keeps its items' labels (hits carry them).
        paths (`bool`): the gallery keeps its items' paths.
    """

    store: Any
    manifest: dict
    query_config: Any
    admission: Any
    prefix: int
    labels: bool = False
    paths: bool = False

    def current(self, store, query_config) -> bool:
        """Whether this is still the search to run: the same gallery, unchanged, and the same config object."""
        return store is self.store and store.manifest is self.manifest and query_config is self.query_config

    def hits(self, queries: np.ndarray, k: int) -> list[dict]:
        """The hits of one query, as :meth:`GallerySearchResult.hits` gives them for it.

        Args:
            queries (`np.ndarray` of shape `(1, d)`): the query model's embedding (its full width or its prefix).
            k (`int`): neighbours to return.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or len(queries) != 1:
            raise ValueError(f"A prepared search takes one query of shape (1, d), got shape {queries.shape}.")
        check_query_width(queries, self.query_config, self.prefix)
        store = self.store
        scores, rows = store.search_encoder_space(l2_normalize(queries[:, : self.prefix]), k)
        rows, scores = rows[0], scores[0]
        if len(rows) and rows[-1] < 0:  # fewer items than k: the missing rows come last
            rows, scores = rows[rows >= 0], scores[rows >= 0]
        return hit_dicts(store.ids_of(rows), rows, scores, None, store.labels_of(rows) if self.labels else None,
                         store.paths_of(rows) if self.paths else None)  # fmt: skip


def prepare_search(store, query_config, allow_unmeasured: bool = False) -> PreparedSearch | None:
    """Decide once what a query model's searches of a gallery need; ``None`` when they need more than the encoder's
    space (see the module docstring), where :func:`~bt2_hf.galleries.search_gallery` answers.

    Raises:
        `IncompatibleModelsError`: the query model is not admitted to the gallery.
    """
    manifest = store.manifest  # first: a manifest replaced meanwhile leaves this one stale, never the other way
    admission = store.admit(query_config, allow_unmeasured)
    if admission.gallery_prefix_dim is not None or backfill_query_prefix(store, query_config, allow_unmeasured):
        return None
    # whether hits carry labels and paths: decided by the manifest (and the appended rows it commits)
    none = np.zeros(0, dtype=np.int64)
    labels = hasattr(store, "labels_of") and store.labels_of(none) is not None
    paths = hasattr(store, "paths_of") and store.paths_of(none) is not None
    return PreparedSearch(store, manifest, query_config, admission, int(admission.prefix_dim), labels, paths)
