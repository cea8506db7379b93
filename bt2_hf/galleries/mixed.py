"""Search a gallery, partly backfilled or not, ranking old and re-embedded items on one comparable score.

Why not compare scores directly: a new/new cosine and a new/old cosine are not on one scale. New/new cosines of
matching items are typically higher, so re-embedded items outrank the old items that new→old retrieval ranked
first; when the backfill starts with the hardest (least typical) items, those are the ones pushed to the top, and
top-1 falls well below not backfilling at all (70.6 → 48.6 at 10 % in the demo).

The rule used here ("slots"): the positions of the ranking belong to the gallery encoder's space, the items that
fill the backfilled positions to the new model's.

1. every item is scored in the gallery encoder's space: the query's compatible prefix against the encoder's vector,
   which the gallery keeps for every item until the backfill is finalised; this ranking is exactly new→old;
2. the positions that ranking gives to re-embedded items ("slots") are filled, best slot first, by the re-embedded
   items ranked by their full new/new score, found by a second search over the re-embedded items only;
   positions held by items not yet re-embedded are unchanged.

Every score that decides between two positions is an encoder-space cosine, so the two scales are never compared.
At β = 0 this is new→old exactly; at β = 1 (before finalising) every position is a slot and the ranking is new/new
exactly. In between, a query's top-1 changes only when new→old's top-1 was re-embedded, and then to new/new's best
re-embedded item: the rule trades new→old's choice among the re-embedded items for new/new's choice among the same
items. The curve rises from new→old to new/new without the scale mismatch ever deciding between an old and a new
item. The top-k is exact whenever the encoder-space search is (flat; approximate indexes bound it by their recall).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..compatibility import IncompatibleModelsError, admit_to_gallery, compatible_prefix
from .calibration import ScoreMap, fit_score_map

RULES = ("calibrated", "slots", "naive")
DEFAULT_DEPTH = 100


@dataclass
class GallerySearchResult:
    """Neighbours of each query, best first.

    Args:
        ids (`list[list]`): item ids.
        scores (`np.ndarray` of shape `(n, k)`): the comparable score of each position (the encoder-space cosine that
            earned it); non-increasing along a row.
        rows (`np.ndarray` of shape `(n, k)`): gallery rows.
        backfilled (`np.ndarray` of `bool`, shape `(n, k)`): the hit carries the backfill model's embedding.
        new_scores (`np.ndarray` of shape `(n, k)`): full new/new cosine of backfilled hits, NaN for the others.
        prefix_dim (`int`): the query prefix compared with the encoder's vectors.
        admission (`dict`, *optional*): why the query model was admitted to the encoder's gallery
            (:meth:`bt2_hf.compatibility.Admission.to_dict`; records an ``allow_unmeasured`` override); ``None`` when
            the check was skipped.
        labels (`list[list]`, *optional*): each hit's class name (or id), when the gallery stores labels.
        paths (`list[list]`, *optional*): each hit's file path or dataset row, when the gallery stores them.
    """

    ids: list[list]
    scores: np.ndarray
    rows: np.ndarray
    backfilled: np.ndarray
    new_scores: np.ndarray
    prefix_dim: int
    admission: dict | None = None
    labels: list[list] | None = None
    paths: list[list] | None = None

    def hits(self) -> list[list[dict]]:
        """Each query's hits as dicts: ``id``, ``row``, ``score``, ``backfilled`` and, when the gallery has them,
        ``label`` and ``path``; what ``bt2 index search`` prints."""
        table = []
        for query, ids in enumerate(self.ids):
            row_hits = []
            for position, item_id in enumerate(ids):
                hit = {"id": item_id, "row": int(self.rows[query, position]),
                       "score": round(float(self.scores[query, position]), 6),
                       "backfilled": bool(self.backfilled[query, position])}  # fmt: skip
                if self.labels is not None:
                    hit["label"] = self.labels[query][position]
                if self.paths is not None:
                    hit["path"] = self.paths[query][position]
                row_hits.append(hit)
            table.append(row_hits)
        return table


def _described(store, rows: np.ndarray, ids, scores, backfilled, new_scores, prefix, admission):
    """The result with each hit's label and path read from the store (when it keeps them)."""
    kept = [row[row >= 0] for row in rows]
    labels = [store.labels_of(row) for row in kept] if hasattr(store, "labels_of") else None
    paths = [store.paths_of(row) for row in kept] if hasattr(store, "paths_of") else None
    labels = None if labels is None or any(part is None for part in labels) else labels
    paths = None if paths is None or any(part is None for part in paths) else paths
    return GallerySearchResult(ids, scores, rows, backfilled, new_scores, prefix, admission, labels, paths)


def _unit(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def fill_slots(
    rows: np.ndarray, backfilled: np.ndarray, backfill_rows: np.ndarray, backfill_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fill, in every row, the positions held by re-embedded items with the best re-embedded items by new/new score.

    Args:
        rows (`np.ndarray` of shape `(n, k)`): encoder-space ranking (gallery rows, best first; -1 = no item).
        backfilled (`np.ndarray` of `bool`, same shape): which positions hold re-embedded items ("slots").
        backfill_rows (`np.ndarray` of shape `(n, m)`): the re-embedded items ranked by new/new score, best first
            (-1 = no item); ``m`` must be at least the number of slots in each row.
        backfill_scores (`np.ndarray`, same shape as ``backfill_rows``): their new/new scores.

    Returns:
        `tuple`: the new rows and the new/new score of each position (NaN where the item was not re-embedded).

    >>> import numpy as np
    >>> rows, scores = fill_slots(np.array([[7, 8, 9]]), np.array([[True, False, True]]), np.array([[4, 9]]),
    ...                           np.array([[0.9, 0.5]]))
    >>> rows
    array([[4, 8, 9]])
    """
    rows = rows.copy()
    new_scores = np.full(rows.shape, np.nan, dtype=np.float32)
    # The j-th slot of a row (in position order) gets that row's j-th best re-embedded item.
    slot_rank = np.cumsum(backfilled, axis=1) - 1
    if backfilled.any():
        if int(slot_rank.max()) >= backfill_rows.shape[1]:
            raise ValueError("fewer re-embedded candidates than slots: search the re-embedded items deeper.")
        query_of, position = np.nonzero(backfilled)
        rows[query_of, position] = backfill_rows[query_of, slot_rank[query_of, position]]
        new_scores[query_of, position] = backfill_scores[query_of, slot_rank[query_of, position]]
    return rows, new_scores


def prefix_scan(store, queries: np.ndarray, prefix_dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` rows by cosine between unit ``queries`` and the gallery vectors' first ``prefix_dim`` dims
    (re-normalised), read a chunk at a time; ``(scores, rows)``, best first, -1 pads."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), 0), -1, dtype=np.int64)
    for rows, vectors in store.iter_vectors():
        scores = queries @ _unit(vectors[:, :prefix_dim]).T
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, np.broadcast_to(rows, scores.shape)], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores, best_rows = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best_rows, keep, 1)
    order = np.lexsort((best_rows, -best_scores), axis=1) if best_scores.size else np.zeros(best_rows.shape, int)
    best_scores, best_rows = np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)
    if best_rows.shape[1] < k:
        pad = k - best_rows.shape[1]
        best_scores = np.pad(best_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_rows = np.pad(best_rows, ((0, 0), (0, pad)), constant_values=-1)
    return best_scores, best_rows


def search_gallery(
    store,
    queries,
    k: int = 10,
    query_config=None,
    *,
    check_compatibility: bool = True,
    depth: int | None = None,
    rule: str = "slots",
    allow_unmeasured: bool = False,
    **search_params,
) -> GallerySearchResult:
    """Search a gallery (faiss or Milvus) with query embeddings, applying the prefix and compatibility rules.

    Args:
        store (`FaissGallery` or `MilvusGallery`): the gallery.
        queries (`np.ndarray` or `torch.Tensor` of shape `(n, d_q)`): query embeddings of the query model.
        k (`int`, *optional*, defaults to `10`): neighbours per query.
        query_config (`BT2Config`): the query model's config (``fingerprint``, ``embedding_dim``, ``compatible_with``).
        check_compatibility (`bool`, *optional*, defaults to `True`): `False` compares the first ``d`` dims unchecked.
        rule (`str`, *optional*, defaults to `"slots"`): ``"slots"`` (see the module docstring) or ``"naive"``
            (the encoder-space top ``depth`` re-scored, re-embedded items by new/new and the others by new/old, in
            one sort: shown for comparison only; it mixes the two scales).
        depth (`int`, *optional*): candidates the ``"naive"`` rule re-scores (default: 100, at least ``k``).
        allow_unmeasured (`bool`, *optional*, defaults to `False`): admit a query model whose compatibility with the
            gallery's encoder is declared but not measured (`bt2 verify` measures it).
        search_params: ``nprobe``, ``ef_search``, ``rerank`` for this search.

    Raises:
        `IncompatibleModelsError`: the query model is not compatible with the gallery's encoder.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    queries = np.asarray(getattr(queries, "numpy", lambda: queries)(), dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"Query embeddings must be 2-d (n, d), got shape {queries.shape}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive number of neighbours, got {k!r}.")
    encoder = store.encoder
    if check_compatibility:
        if query_config is None:
            raise ValueError(
                "Pass query_config=model.config so that the query model can be checked against the gallery."
            )
        if hasattr(store, "admit"):  # the store's own policy and admission log take part
            admission = store.admit(query_config, allow_unmeasured)
        else:
            admission = admit_to_gallery(query_config, encoder, store.dimension, allow_unmeasured=allow_unmeasured)
        prefix = admission.prefix_dim
        query_dim = getattr(query_config, "embedding_dim", None)
        if query_dim is not None and queries.shape[1] not in (int(query_dim), prefix):
            # The query model's full embeddings (cut here) or its compatible prefix (cut by the caller); any other
            # width comes from another model and would be cut silently.
            raise ValueError(
                f"Query embeddings are {queries.shape[1]}-d but the query model "
                f"{getattr(query_config, 'name_or_path', '') or ''} embeds {query_dim}-d (compatible prefix {prefix}): "
                "they were not made by that model. Pass the embeddings and the config of the same model."
            )
    else:
        admission, prefix = None, store.dimension
        if queries.shape[1] != prefix:
            raise ValueError(
                f"Query embeddings are {queries.shape[1]}-d, the gallery is {prefix}-d; without the compatibility check "
                "nothing is cut: pass query_config (the prefix rule) or queries of the gallery's width."
            )
    if queries.shape[1] < prefix:
        raise ValueError(f"Query embeddings are {queries.shape[1]}-d, narrower than the gallery's {prefix}-d prefix.")
    if admission is not None and admission.gallery_prefix_dim is not None:
        # A shared prefix of the gallery's vectors (an older or sibling model's queries): an exact scan of the
        # encoder's vectors cut to it. The index was built on whole vectors, so it cannot serve this search.
        scores, rows = prefix_scan(store, _unit(queries[:, :prefix]), admission.gallery_prefix_dim, k)
        flags, nan = np.zeros(rows.shape, dtype=bool), np.full(rows.shape, np.nan, dtype=np.float32)
        ids = [store.ids_of(row[row >= 0]) for row in rows]
        return _described(store, rows, ids, scores, flags, nan, prefix, admission.to_dict())
    state = store.backfill_state
    new_prefix = None
    if state and state["done"] > 0 and query_config is not None:
        try:
            new_prefix = compatible_prefix(query_config, state["model"]["fingerprint"], state["dimension"],
                                           state["model"].get("name_or_path"), allow_unmeasured=allow_unmeasured)  # fmt: skip
        except IncompatibleModelsError:
            new_prefix = None  # e.g. the old model itself: it searches the encoder's vectors only
    depth = max(k, depth or DEFAULT_DEPTH) if new_prefix and rule == "naive" else k
    scores, rows = store.search_encoder_space(_unit(queries[:, :prefix]), depth, **search_params)
    backfilled = np.zeros(rows.shape, dtype=bool)
    new_scores = np.full(rows.shape, np.nan, dtype=np.float32)
    if new_prefix:
        valid = rows >= 0
        backfilled[valid] = store.backfilled(rows[valid])
        if backfilled.any():
            new_queries = _unit(queries[:, :new_prefix])
            if rule == "slots":
                # The second search: the re-embedded items by new/new score; they fill the slots, best first.
                backfill_scores, backfill_rows = store.search_backfilled(new_queries, int(backfilled.sum(1).max()))
                rows, new_scores = fill_slots(rows, backfilled, backfill_rows, backfill_scores)
            else:
                query_of = np.broadcast_to(np.arange(len(rows))[:, None], rows.shape)[backfilled]
                vectors = store.backfill_vectors(rows[backfilled])
                new_scores[backfilled] = np.einsum("nd,nd->n", vectors, new_queries[query_of])
                combined = np.where(backfilled, new_scores, scores)
                order = np.argsort(-combined, axis=1, kind="stable")
                rows, backfilled = np.take_along_axis(rows, order, 1), np.take_along_axis(backfilled, order, 1)
                new_scores, scores = np.take_along_axis(new_scores, order, 1), np.take_along_axis(combined, order, 1)
    rows, scores, backfilled, new_scores = rows[:, :k], scores[:, :k], backfilled[:, :k], new_scores[:, :k]
    ids = [store.ids_of(row[row >= 0]) for row in rows]
    return _described(store, rows, ids, scores, backfilled, new_scores, prefix,
                      admission.to_dict() if admission else None)  # fmt: skip


def _fitted_map(new_gallery: np.ndarray, old_gallery: np.ndarray, use_new: np.ndarray, prefix_dim: int) -> ScoreMap:
    """The ``"calibrated"`` rule's map for a gallery whose ``use_new`` items are re-embedded (fitted on them only)."""
    use_new = np.asarray(use_new, dtype=bool)
    return fit_score_map(new_gallery[use_new], old_gallery[use_new], prefix_dim)


def top1_under_rule(
    old_gallery: np.ndarray,
    new_gallery: np.ndarray,
    queries: np.ndarray,
    prefix_dim: int,
    use_new: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray | None = None,
    *,
    rule: str | Sequence[str] = "slots",
    chunk: int = 1024,
) -> float | dict[str, float]:
    """Top-1 accuracy (%) of new queries over a gallery whose ``use_new`` items are re-embedded, under a rule.

    Exact (brute force), for evaluation: ``old_gallery`` (N, d_old), ``new_gallery`` (N, d_new), ``queries``
    (n, d_new) of the new model; ``gallery_labels=None`` means the queries are the gallery items (leave-one-out).
    ``rule="naive"`` is :mod:`bt2_hf.retrieval.backfill`'s scoring (one sort of new/new and new/old cosines). Give a
    sequence of rules to get ``{rule: top1}`` from one pass over the scores.
    """
    rules = [rule] if isinstance(rule, str) else list(rule)
    for name in rules:
        if name not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {name!r}.")
    old_gallery, new_gallery, queries = _unit(old_gallery), _unit(new_gallery), np.asarray(queries, np.float32)
    use_new = np.asarray(use_new, dtype=bool)
    same_items = gallery_labels is None
    gallery_labels = np.asarray(query_labels if same_items else gallery_labels)
    query_labels = np.asarray(query_labels)
    prefix_queries, full_queries = _unit(queries[:, :prefix_dim]), _unit(queries)
    correct = dict.fromkeys(rules, 0)
    score_map = _fitted_map(new_gallery, old_gallery, use_new, prefix_dim) if "calibrated" in rules else None
    for start in range(0, len(queries), chunk):
        stop = min(len(queries), start + chunk)
        old_scores = prefix_queries[start:stop] @ old_gallery.T
        new_scores = full_queries[start:stop] @ new_gallery.T
        if same_items:
            old_scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
            new_scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        for name in rules:
            if name == "naive":
                best = np.argmax(np.where(use_new[None, :], new_scores, old_scores), axis=1)
            elif name == "calibrated":
                best = np.argmax(np.where(use_new[None, :], score_map(new_scores), old_scores), axis=1)
            else:
                # Top-1 slot: new→old's best item, replaced by new/new's best re-embedded item when it is re-embedded.
                best = np.argmax(old_scores, axis=1)
                if use_new.any():
                    best_new = np.argmax(np.where(use_new[None, :], new_scores, -np.inf), axis=1)
                    best = np.where(use_new[best], best_new, best)
            correct[name] += int((gallery_labels[best] == query_labels[start:stop]).sum())
    values = {name: 100.0 * count / len(queries) for name, count in correct.items()}
    return values[rule] if isinstance(rule, str) else values


def top1_along_backfill(
    old_gallery: np.ndarray,
    new_gallery: np.ndarray,
    queries: np.ndarray,
    prefix_dim: int,
    order: np.ndarray,
    counts: Sequence[int],
    query_labels: np.ndarray,
    gallery_labels: np.ndarray | None = None,
    *,
    rules: Sequence[str] = RULES,
    candidates: int = 64,
    chunk: int = 1024,
) -> dict[str, list[float]]:
    """:func:`top1_under_rule` for every backfill state ``order[:count]``, ``count`` in ``counts``: ``{rule: [top-1]}``.

    Exact, and the same values as :func:`top1_under_rule` (ties too: the lowest gallery row wins), but the scores are
    computed once: each query keeps its ``candidates`` best items by new→old and by new/new score, which decide its
    top-1 at every state unless none of them has the re-embedded status needed; those few queries are re-scored in
    full.
    """
    old_gallery, new_gallery, queries = _unit(old_gallery), _unit(new_gallery), np.asarray(queries, np.float32)
    same_items = gallery_labels is None
    gallery_labels = np.asarray(query_labels if same_items else gallery_labels)
    query_labels = np.asarray(query_labels)
    num_items = len(old_gallery)
    backfill_rank = np.full(num_items, num_items, dtype=np.int64)  # item j is re-embedded when its rank < count
    backfill_rank[np.asarray(order)] = np.arange(len(order))
    prefix_queries, full_queries = _unit(queries[:, :prefix_dim]), _unit(queries)
    depth = min(candidates, num_items)
    correct = {rule: np.zeros(len(counts), dtype=np.int64) for rule in rules}
    # Each state's map, fitted as a gallery in that state fits it: on its re-embedded items only.
    maps = [_fitted_map(new_gallery, old_gallery, backfill_rank < count, prefix_dim) if "calibrated" in rules
            else None for count in counts]  # fmt: skip

    def best_first(scores: np.ndarray) -> np.ndarray:  # top `depth` rows, by score then by lowest row (argmax's rule)
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth] if depth < num_items else np.tile(
            np.arange(num_items), (len(scores), 1))  # fmt: skip
        top_scores = np.take_along_axis(scores, top, 1)
        return np.take_along_axis(top, np.lexsort((top, -top_scores), axis=1), 1)

    for start in range(0, len(queries), chunk):
        stop = min(len(queries), start + chunk)
        rows = np.arange(stop - start)
        old_scores = prefix_queries[start:stop] @ old_gallery.T
        new_scores = full_queries[start:stop] @ new_gallery.T
        if same_items:
            old_scores[rows, np.arange(start, stop)] = -np.inf
            new_scores[rows, np.arange(start, stop)] = -np.inf
        old_top, new_top = best_first(old_scores), best_first(new_scores)
        old_top_scores = np.take_along_axis(old_scores, old_top, 1)
        new_top_scores = np.take_along_axis(new_scores, new_top, 1)
        expected = query_labels[start:stop]
        for position, count in enumerate(counts):
            old_is_new = backfill_rank[old_top] < count
            new_is_new = backfill_rank[new_top] < count
            first_new = np.argmax(new_is_new, axis=1)  # the best re-embedded item among the new/new candidates
            has_new = new_is_new[rows, first_new]
            for rule in rules:
                if rule == "slots":
                    best = old_top[:, 0].copy()
                    swap = old_is_new[:, 0]
                    best[swap] = new_top[rows, first_new][swap]
                    unresolved = swap & ~has_new
                else:
                    first_old = np.argmax(~old_is_new, axis=1)  # the best item not re-embedded, by new→old
                    has_old = ~old_is_new[rows, first_old]
                    old_choice, new_choice = old_top[rows, first_old], new_top[rows, first_new]
                    old_value = np.where(has_old, old_top_scores[rows, first_old], -np.inf)
                    new_value = np.where(has_new, new_top_scores[rows, first_new], -np.inf)
                    if rule == "calibrated":
                        new_value = maps[position](new_value)
                    take_new = (new_value > old_value) | ((new_value == old_value) & (new_choice < old_choice))
                    best = np.where(take_new, new_choice, old_choice)
                    # Unresolved: a side missing from its candidates although such items exist.
                    unresolved = (~has_new & (count > 0)) | (~has_old & (count < num_items))
                for row in np.flatnonzero(unresolved):  # rare: score the query against every item
                    use_new = backfill_rank < count
                    if rule == "slots":
                        best[row] = np.argmax(np.where(use_new, new_scores[row], -np.inf))
                    elif rule == "calibrated":
                        best[row] = np.argmax(np.where(use_new, maps[position](new_scores[row]), old_scores[row]))
                    else:
                        best[row] = np.argmax(np.where(use_new, new_scores[row], old_scores[row]))
                correct[rule][position] += int((gallery_labels[best] == expected).sum())
    return {rule: (100.0 * correct[rule] / len(queries)).tolist() for rule in rules}


def mixed_backfill_curve(
    old_embeddings: np.ndarray,
    new_embeddings: np.ndarray,
    labels: np.ndarray,
    prefix_dim: int,
    *,
    betas: Sequence[float] | None = None,
    order: str | np.ndarray = "random",
    seed: int = 0,
    rule: str = "slots",
) -> dict:
    """Top-1 against the backfilled fraction β for one order and rule (queries = gallery items, leave-one-out).

    Returns:
        `dict`: ``{"order", "rule", "betas", "top1", "area"}``.
    """
    return mixed_backfill_curves(old_embeddings, new_embeddings, labels, prefix_dim, betas=betas, order=order,
                                 seed=seed, rules=(rule,))[rule]  # fmt: skip


def mixed_backfill_curves(
    old_embeddings: np.ndarray,
    new_embeddings: np.ndarray,
    labels: np.ndarray,
    prefix_dim: int,
    *,
    betas: Sequence[float] | None = None,
    order: str | np.ndarray = "random",
    seed: int = 0,
    rules: Sequence[str] = RULES,
) -> dict[str, dict]:
    """:func:`mixed_backfill_curve` for several rules at once (one pass over the scores per β): ``{rule: curve}``."""
    from ..retrieval.backfill import backfill_order

    betas = np.linspace(0.0, 1.0, 11) if betas is None else np.asarray(betas, dtype=np.float64)
    permutation = backfill_order(old_embeddings, labels, order, seed)
    counts = [int(np.floor(beta * len(old_embeddings))) for beta in betas]
    values = top1_along_backfill(old_embeddings, new_embeddings, new_embeddings, prefix_dim, permutation, counts,
                                 labels, rules=rules)  # fmt: skip
    name = order if isinstance(order, str) else "custom"
    return {rule: {"order": name, "rule": rule, "betas": betas.tolist(), "top1": values[rule],
                   "area": float(np.trapezoid(values[rule], betas))} for rule in rules}  # fmt: skip
