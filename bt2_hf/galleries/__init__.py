"""Galleries in production: embed datasets into shards, store them (faiss on disk, Milvus), backfill them in place.

- :func:`embed_dataset` (``bt2 embed``): any image or text dataset → resumable fp16/fp32 shards with ids + manifest.
- :class:`FaissGallery` (``bt2 index build|search``): flat, IVF-Flat, IVF-PQ (exact re-ranking from memory-mapped
  vectors) or HNSW on disk with its manifest.
- :class:`~bt2_hf.galleries.milvus_store.MilvusGallery`: the same gallery in a Milvus collection (milvus-lite file or
  server URI), manifest in the collection's properties; :func:`~bt2_hf.galleries.stores.open_gallery` opens either.
- :func:`backfill` (``bt2 backfill``): re-embed a fraction of a gallery with a newer model, crash-safe, and
  :func:`mixed_search`, which ranks old and re-embedded items on one scale.
"""

from .backfill import BACKFILL_ORDERS, backfill, finalize_backfill, priority_order
from .embed import embed_dataset, model_identity
from .faiss_store import INDEX_TYPES, FaissGallery, GalleryError, default_index_params, is_gallery_directory
from .mixed import (
    GallerySearchResult,
    fill_slots,
    mixed_backfill_curve,
    mixed_backfill_curves,
    search_gallery,
    top1_under_rule,
    top_k_under_rule,
)
from .relevance_calibration import RelevanceCalibration, fit_relevance_calibration
from .shards import EmbeddingDirectory, EmbeddingDirectoryError
from .sources import (
    GalleryDataSourceError,
    GallerySource,
    GallerySourceError,
    TensorSource,
    UnreadableItemError,
    open_source,
)

__all__ = [
    "BACKFILL_ORDERS",
    "INDEX_TYPES",
    "FaissGallery",
    "GalleryError",
    "GallerySearchResult",
    "backfill",
    "default_index_params",
    "finalize_backfill",
    "is_gallery_directory",
    "mixed_backfill_curve",
    "priority_order",
    "search_gallery",
    "fill_slots",
    "mixed_backfill_curves",
    "top1_under_rule",
    "top_k_under_rule",
    "RelevanceCalibration",
    "fit_relevance_calibration",
    "EmbeddingDirectory",
    "EmbeddingDirectoryError",
    "GallerySource",
    "GalleryDataSourceError",
    "GallerySourceError",
    "TensorSource",
    "UnreadableItemError",
    "embed_dataset",
    "model_identity",
    "open_source",
]
