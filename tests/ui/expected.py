"""The page's lists computed independently of it: brute-force cosines for the old gallery, the library's one
search (its mixed ranking) for the backfilled copy."""

from __future__ import annotations

import numpy as np

from bt2_hf.galleries import FaissGallery, search_gallery


def brute_force(gallery_dir, queries: np.ndarray, prefix_dim: int, k: int) -> tuple[list, np.ndarray, np.ndarray]:
    """Top ``k`` ids and scores by cosine between the queries' re-normalised prefix and the gallery's vectors, and
    every item's score (for comparing near-ties by score rather than by order)."""
    gallery = FaissGallery.open(gallery_dir)
    vectors = np.asarray(gallery.vectors, dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = np.asarray(queries, dtype=np.float64)[0, :prefix_dim]
    scores = vectors @ (query / np.linalg.norm(query))
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    ids = gallery.ids_of(order)
    return [str(i) for i in ids], scores[order], scores


def score_of(gallery_dir, all_scores: np.ndarray, item_id) -> float:
    """The brute-force score of one item, by id."""
    gallery = FaissGallery.open(gallery_dir)
    ids = [str(i) for i in gallery.ids_of(np.arange(len(gallery)))]
    return float(all_scores[ids.index(str(item_id))])


def library_search(gallery_dir, model, queries: np.ndarray, k: int, allow_unmeasured: bool = True):
    result = search_gallery(FaissGallery.open(gallery_dir), queries, k=k, query_config=model.config,
                            allow_unmeasured=allow_unmeasured)  # fmt: skip
    return [str(i) for i in result.ids[0]], result.scores[0]
