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
item. The top-k is exact whenever both searches are: the encoder-space search (flat; approximate indexes bound it by
their recall) and the search over the re-embedded items, exact up to
:data:`~bt2_hf.galleries.backfill_search.EXACT_SCAN_LIMIT` of them and an IVF index beyond, whose slot fill matches
the exact one's at recall ≥ 0.99 at depths up to 100 (``benchmarks/README.md``).

The ``"calibrated"`` rule (selectable; the slot rule stays the default): a query whose ``NEIGHBOURHOOD`` nearest
items in the encoder space hold at least ``GATE × β`` re-embedded items is ranked in one sort of calibrated scores
(old items by their encoder-space cosine; re-embedded items by their new/new cosine mapped per query onto the encoder
space's mean and spread, both measured over a sample of re-embedded items, :mod:`bt2_hf.galleries.calibration`);
every other query, and every query while fewer than ``MIN_CALIBRATION_ITEMS`` items are re-embedded, by the slot
rule. The gate is what keeps it above new→old on a priority order (a neighbourhood the backfill has not reached
yet would otherwise be outranked by atypical re-embedded items); on the demo's test split it gains little over the
slot rule (``benchmarks/README.md``), which is why it is not the default.

The ``"compatible"`` rule (selectable; not the default): the positions are decided in the compatible space, the slots
are filled as above. An item not yet re-embedded is scored by its encoder-space cosine; a re-embedded item by the
larger of its encoder-space cosine and its promoted score: the cosine between the query's prefix and the item's new
compatible block (the first ``d_old`` dims of its new embedding, re-normalised, which the new model was trained to keep
in the encoder's space) minus a per-query margin, ``MARGIN_SPREADS`` times the gap between the query's best and
``SPREAD_RANK``-th best encoder-space cosines (a margin in units of the query's own spread, so that one setting serves
cosines of any scale); one sort; then the positions held by re-embedded items are filled, best first, by the
re-embedded items ranked by full new/new score. β = 0 is new→old, β = 1 is new/new. A re-embedded item's score is never
below the one the slot rule gives it, and passes an old item's only when its new compatible block beats that item's
cosine by the margin: new/new compatible-block cosines run higher than new→old ones, most of all for the atypical items
a priority order re-embeds first, and without the margin those win positions they do not deserve (9 points below
new→old on the demo's centroid-distance order). Measured (``benchmarks/README.md``): on the validation splits of the
demo and of the text upgrade it rises about as fast as naive scoring on a random order and stays above new→old on every
order at β = 0.1, 0.2, …; but it dips below new→old (by up to 0.9 point) while fewer than 5 % of the items are
re-embedded, and on the demo's test split it falls 2.7 points below on the centroid-distance order (5.7 with an earlier
demo model), where the slot rule never does: the margin chosen on validation does not carry over, hence not the
default. The search scans the re-embedded items' compatible blocks exactly (:func:`compatible_block_scan`): its cost
grows with the number re-embedded.

The ``"adaptive"`` rule (selectable): on a random backfill order, once ``ADAPTIVE_MIN_FRACTION`` (5 %) of the gallery
is re-embedded, one sort of every item by its own cosine (new/new for re-embedded items, new→old for the others, the
re-embedded ones found by the second search, so the top-k is exact whenever both searches are); before that, and on
any other order, the slot rule. What makes the one sort safe on a random order and unsafe on a priority order is the
sample: a random order re-embeds a uniform sample of the gallery, so a query's best re-embedded item is one of its
true neighbours as often as any item is, and the new model's better cosine wins fairly; a priority order re-embeds
the least typical items first, whose new/new cosines outrank the typical old item a query should get. With only a
few re-embedded items the one sort still dips (by up to 0.66 point of top-1 at 1 %, 10,000 items), hence the slot
rule below 5 %. A random order is believed only when the recorded order is the permutation its seed draws (an edited
manifest does not turn the one sort on). Measured (``benchmarks/README.md``): as fast as naive scoring on random orders (top-1 area within 0.1
on the demo's models, the same on the text upgrade), never lower than the slot rule's own lowest point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..compatibility import IncompatibleModelsError, admit_to_gallery, compatible_prefix
from ..retrieval.protocol import l2_normalize
from .calibration import calibration_sample, standardise_queries

RULES = ("calibrated", "slots", "naive", "compatible", "adaptive")
DEFAULT_RULE = "slots"
# The adaptive rule ranks a random-order backfill by one sort of both cosines once this fraction of the gallery is
# re-embedded, and by the slot rule before that and on any other order (see the module docstring).
ADAPTIVE_MIN_FRACTION = 0.05
# Learned mixing (relevance_calibration.py): measured by the evaluation functions given a fitted calibration; not a
# rule of search_gallery.
LEARNED = "learned"
EVALUATION_RULES = (*RULES, LEARNED)
# The calibrated rule measures each query's spread over re-embedded items: below this many, the slot rule ranks.
MIN_CALIBRATION_ITEMS = 50
# The calibrated rule's gate: a query is ranked by calibrated scores when at least GATE × β of its NEIGHBOURHOOD
# nearest items (encoder space) are re-embedded; chosen on training-split items of the demo, checked on its validation
# split (benchmarks/README.md).
NEIGHBOURHOOD = 20
GATE = 1.2
DEFAULT_DEPTH = 100
# Rows read at a time by the exact scans (shared-prefix queries, the compatible blocks of re-embedded items).
SCAN_CHUNK = 65536
# The compatible rule's margin: MARGIN_SPREADS × (a query's best encoder-space cosine − its SPREAD_RANK-th best);
# chosen on the validation splits of the demo and of the text upgrade (benchmarks/README.md).
MARGIN_SPREADS = 2.0
SPREAD_RANK = 10


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
        rule (`str`, *optional*): what ranked the hits: ``"calibrated"``, ``"slots"``, ``"compatible"``,
            ``"adaptive"`` or ``"naive"`` over a partly backfilled gallery, ``"encoder"`` (the encoder's space only: no backfill the query may use),
            ``"shared-prefix"`` (an exact scan on a prefix shared with the gallery's vectors).
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
    rule: str | None = None

    def hits(self) -> list[list[dict]]:
        """Each query's hits as dicts: ``id``, ``row``, ``score``, ``backfilled`` and, when the gallery has them,
        ``label`` and ``path``; what ``bt2 index search`` prints."""
        return [hit_dicts(ids, rows, scores, flags, None if self.labels is None else self.labels[query],
                          None if self.paths is None else self.paths[query])
                for query, (ids, rows, scores, flags) in enumerate(zip(self.ids, self.rows, self.scores,
                                                                       self.backfilled))]  # fmt: skip


def hit_dicts(ids: list, rows: np.ndarray, scores: np.ndarray, backfilled: np.ndarray | None,
              labels: list | None = None, paths: list | None = None) -> list[dict]:  # fmt: skip
    """One query's hits as dicts (``id``, ``row``, ``score`` rounded to 6 decimals, ``backfilled`` (``None``: none
    is), and ``label`` and ``path`` when given), one per id: the hits of :meth:`GallerySearchResult.hits` and of a
    served search."""
    # (whole rows converted to Python at once: indexing numpy one element at a time costs more than the rest)
    rows, scores = rows.tolist(), scores.tolist()
    backfilled = [False] * len(ids) if backfilled is None else backfilled.tolist()
    hits = [{"id": item_id, "row": rows[position], "score": round(scores[position], 6),
             "backfilled": backfilled[position]} for position, item_id in enumerate(ids)]  # fmt: skip
    for name, values in (("label", labels), ("path", paths)):
        if values is not None:
            for hit, value in zip(hits, values):
                hit[name] = value
    return hits


def _described(store, rows: np.ndarray, scores, backfilled, new_scores, prefix, admission, rule):
    """The result with each hit's id, and label and path when the store keeps them."""
    # (the valid rows cut once: a served search meets this right after faiss has taken the CPU's caches)
    kept = list(rows) if len(rows) and rows.min() >= 0 else [row[row >= 0] for row in rows]
    ids = [store.ids_of(row) for row in kept]
    labels = [store.labels_of(row) for row in kept] if hasattr(store, "labels_of") else None
    paths = [store.paths_of(row) for row in kept] if hasattr(store, "paths_of") else None
    labels = None if labels is None or any(part is None for part in labels) else labels
    paths = None if paths is None or any(part is None for part in paths) else paths
    return GallerySearchResult(ids, scores, rows, backfilled, new_scores, prefix, admission, labels, paths, rule)


def _check_rules(rules: Sequence[str], relevance, random_order: bool | None = None) -> None:
    for name in rules:
        if name not in EVALUATION_RULES:
            raise ValueError(f"rule must be one of {EVALUATION_RULES}, got {name!r}.")
    if LEARNED in rules and relevance is None:
        raise ValueError("The 'learned' rule needs relevance=RelevanceCalibration (fit_relevance_calibration).")
    if "adaptive" in rules and random_order is None:
        raise ValueError("The 'adaptive' rule needs random_order=True or False: whether the backfill order is random.")


def _effective(rule: str, random_order: bool | None, done: int, count: int) -> str:
    """The rule that ranks a state: ``"adaptive"`` is naive scoring or the slot rule (see the module docstring)."""
    if rule != "adaptive":
        return rule
    return "naive" if _adaptive_sorts(random_order, done, count) else "slots"


def _adaptive_sorts(random_order: bool, done: int, count: int) -> bool:
    """Whether the ``"adaptive"`` rule ranks by one sort (else by the slot rule)."""
    return bool(random_order) and count > 0 and done >= ADAPTIVE_MIN_FRACTION * count


class _SameScale:
    """The identity map of new/new cosines onto the encoder space: one sort of both as they are (``"adaptive"``)."""

    @staticmethod
    def new_to_encoder(scores, queries=None):
        return scores


_SAME_SCALE = _SameScale()


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
    return _scan(queries, store.iter_vectors(), prefix_dim, k)


def compatible_block_scan(store, queries: np.ndarray, prefix_dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` re-embedded rows by cosine between unit ``queries`` and the compatible block of their new
    vectors (the first ``prefix_dim`` dims, re-normalised), read a chunk at a time; ``(scores, rows)``, best first,
    -1 pads.

    A scan rather than a search of the backfill index: that index holds whole new vectors, whose compatible blocks
    have unequal norms, so an inner product over them would not rank by this cosine.
    """
    done = int(store.backfill_state["done"]) if store.backfill_state else 0
    rows_done = np.asarray(store.backfill_order()[:done], dtype=np.int64) if done else np.zeros(0, np.int64)
    chunks = ((rows, store.backfill_vectors(rows)) for rows in
              (rows_done[start:start + SCAN_CHUNK] for start in range(0, done, SCAN_CHUNK)))  # fmt: skip
    return _scan(queries, chunks, prefix_dim, k)


def _scan(queries: np.ndarray, chunks, prefix_dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of ``(rows, vectors)`` chunks by cosine with unit ``queries`` on the vectors' first ``prefix_dim``
    dims (re-normalised); ties go to the lowest row."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), 0), -1, dtype=np.int64)
    for rows, vectors in chunks:
        scores = queries @ l2_normalize(vectors[:, :prefix_dim]).T
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
    rule: str = DEFAULT_RULE,
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
        rule (`str`, *optional*, defaults to `"slots"`): how a partly backfilled gallery is ranked (see the module
            docstring): ``"slots"``, ``"adaptive"``, ``"calibrated"``, ``"compatible"``, or
            ``"naive"`` (the encoder-space top ``depth`` re-scored, re-embedded items by new/new and the others by
            new/old, in one sort: shown for comparison only; it mixes the two scales). The result's ``rule`` says which
            ranked.
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
        check_query_width(queries, query_config, prefix)
    else:
        admission, prefix = None, store.dimension
        if queries.shape[1] != prefix:
            raise ValueError(
                f"Query embeddings are {queries.shape[1]}-d, the gallery is {prefix}-d; without the compatibility check "
                "nothing is cut: pass query_config (the prefix rule) or queries of the gallery's width."
            )
    if admission is not None and admission.gallery_prefix_dim is not None:
        # A shared prefix of the gallery's vectors (an older or sibling model's queries): an exact scan of the
        # encoder's vectors cut to it. The index was built on whole vectors, so it cannot serve this search.
        scores, rows = prefix_scan(store, l2_normalize(queries[:, :prefix]), admission.gallery_prefix_dim, k)
        flags, nan = np.zeros(rows.shape, dtype=bool), np.full(rows.shape, np.nan, dtype=np.float32)
        return _described(store, rows, scores, flags, nan, prefix, admission.to_dict(), "shared-prefix")
    state = store.backfill_state
    new_prefix = backfill_query_prefix(store, query_config, allow_unmeasured)
    if new_prefix and rule == "adaptive":
        rows, scores, backfilled, new_scores = _adaptive_search(store, queries, prefix, new_prefix, k, search_params)
        return _described(store, rows, scores, backfilled, new_scores, prefix,
                          admission.to_dict() if admission else None, rule)  # fmt: skip
    if new_prefix and rule == "calibrated" and state["done"] < MIN_CALIBRATION_ITEMS:
        rule = "slots"  # too few re-embedded items to measure a spread: the slot rule ranks meanwhile
    if new_prefix and rule == "compatible" and not _ranks_compatible(state, prefix, store.dimension):
        rule = "slots"
    if new_prefix and rule == "compatible":
        rows, scores, backfilled = _merge_compatible(store, l2_normalize(queries[:, :prefix]), k, search_params)
        new_scores = np.full(rows.shape, np.nan, dtype=np.float32)
        if backfilled.any():
            backfill_scores, backfill_rows = store.search_backfilled(l2_normalize(queries[:, :new_prefix]),
                                                                     int(backfilled.sum(1).max()))  # fmt: skip
            rows, new_scores = fill_slots(rows, backfilled, backfill_rows, backfill_scores)
        return _described(store, rows, scores, backfilled, new_scores, prefix,
                          admission.to_dict() if admission else None, rule)  # fmt: skip
    if new_prefix and rule == "calibrated":
        prefix_queries, new_queries = l2_normalize(queries[:, :prefix]), l2_normalize(queries[:, :new_prefix])
        sample = calibration_sample(store.backfill_order()[: state["done"]])
        calibration = standardise_queries(prefix_queries, new_queries, l2_normalize(store.vectors_at(sample)),
                                          l2_normalize(store.backfill_vectors(sample)[:, :new_prefix]))  # fmt: skip
        # The gate: queries whose neighbourhood holds fewer re-embedded items than their share are left to the slots.
        _, neighbours = store.search_encoder_space(prefix_queries, min(NEIGHBOURHOOD, len(store)), **search_params)
        flags = np.zeros(neighbours.shape, dtype=bool)
        flags[neighbours >= 0] = store.backfilled(neighbours[neighbours >= 0])
        covered = flags.mean(axis=1) >= GATE * state["done"] / len(store)
        rows, scores, backfilled, new_scores = _slots_search(store, queries, prefix, new_prefix, k, search_params)
        if covered.any():
            merged = _merge_calibrated(store, prefix_queries[covered], new_queries[covered], k,
                                       _subset(calibration, covered), search_params)  # fmt: skip
            for array, part in zip((rows, scores, backfilled, new_scores), merged):
                array[covered] = part
        return _described(store, rows, scores, backfilled, new_scores, prefix,
                          admission.to_dict() if admission else None, rule)  # fmt: skip
    if rule == "slots" or not new_prefix:
        rows, scores, backfilled, new_scores = _slots_search(store, queries, prefix, new_prefix, k, search_params)
    else:
        depth = max(k, depth or DEFAULT_DEPTH)
        scores, rows = store.search_encoder_space(l2_normalize(queries[:, :prefix]), depth, **search_params)
        backfilled = np.zeros(rows.shape, dtype=bool)
        new_scores = np.full(rows.shape, np.nan, dtype=np.float32)
        valid = rows >= 0
        backfilled[valid] = store.backfilled(rows[valid])
        if backfilled.any():
            new_queries = l2_normalize(queries[:, :new_prefix])
            query_of = np.broadcast_to(np.arange(len(rows))[:, None], rows.shape)[backfilled]
            vectors = store.backfill_vectors(rows[backfilled])
            new_scores[backfilled] = np.einsum("nd,nd->n", vectors, new_queries[query_of])
            combined = np.where(backfilled, new_scores, scores)
            order = np.argsort(-combined, axis=1, kind="stable")
            rows, backfilled = np.take_along_axis(rows, order, 1), np.take_along_axis(backfilled, order, 1)
            new_scores, scores = np.take_along_axis(new_scores, order, 1), np.take_along_axis(combined, order, 1)
    rows, scores, backfilled, new_scores = rows[:, :k], scores[:, :k], backfilled[:, :k], new_scores[:, :k]
    return _described(store, rows, scores, backfilled, new_scores, prefix,
                      admission.to_dict() if admission else None, rule if new_prefix else "encoder")  # fmt: skip


def check_query_width(queries: np.ndarray, query_config, prefix: int) -> None:
    """Refuse query embeddings of a width their model does not give: its full width (cut to ``prefix`` by the
    search) or its compatible prefix (cut by the caller) are taken; any other comes from another model and would be
    cut silently."""
    query_dim = getattr(query_config, "embedding_dim", None)
    if query_dim is not None and queries.shape[1] not in (int(query_dim), prefix):
        raise ValueError(
            f"Query embeddings are {queries.shape[1]}-d but the query model "
            f"{getattr(query_config, 'name_or_path', '') or ''} embeds {query_dim}-d (compatible prefix {prefix}): "
            "they were not made by that model. Pass the embeddings and the config of the same model."
        )
    if queries.shape[1] < prefix:
        raise ValueError(f"Query embeddings are {queries.shape[1]}-d, narrower than the gallery's {prefix}-d prefix.")


def backfill_query_prefix(store, query_config, allow_unmeasured: bool = False) -> int | None:
    """The query prefix compared with the re-embedded items of the gallery's backfill in progress, or ``None`` when
    none is (no backfill, nothing re-embedded yet, or a query model not compatible with the backfill's model: the
    old model itself searches the encoder's vectors only)."""
    state = store.backfill_state
    if not state or state["done"] <= 0 or query_config is None:
        return None
    try:
        return compatible_prefix(query_config, state["model"]["fingerprint"], state["dimension"],
                                 state["model"].get("name_or_path"), allow_unmeasured=allow_unmeasured)  # fmt: skip
    except IncompatibleModelsError:
        return None


def _slots_search(store, queries: np.ndarray, prefix: int, new_prefix: int | None, k: int, search_params: dict):
    """The slot rule's top ``k`` (see the module docstring): ``(rows, scores, backfilled, new_scores)``."""
    scores, rows = store.search_encoder_space(l2_normalize(queries[:, :prefix]), k, **search_params)
    backfilled = np.zeros(rows.shape, dtype=bool)
    new_scores = np.full(rows.shape, np.nan, dtype=np.float32)
    if new_prefix:
        valid = rows >= 0
        backfilled[valid] = store.backfilled(rows[valid])
        if backfilled.any():
            # The second search: the re-embedded items by new/new score; they fill the slots, best first.
            new_queries = l2_normalize(queries[:, :new_prefix])
            backfill_scores, backfill_rows = store.search_backfilled(new_queries, int(backfilled.sum(1).max()))
            rows, new_scores = fill_slots(rows, backfilled, backfill_rows, backfill_scores)
    return rows, scores.astype(np.float32), backfilled, new_scores


def _adaptive_search(store, queries: np.ndarray, prefix: int, new_prefix: int, k: int, search_params: dict):
    """The ``"adaptive"`` rule's top ``k``: one sort of both cosines on a random order from 5 % re-embedded (the
    calibrated rule's exact merge, with the cosines left as they are), the slot rule otherwise."""
    state = store.backfill_state
    if not _adaptive_sorts(_recorded_random_order(store, state), state["done"], len(store)):
        return _slots_search(store, queries, prefix, new_prefix, k, search_params)
    return _merge_calibrated(store, l2_normalize(queries[:, :prefix]), l2_normalize(queries[:, :new_prefix]), k, _SAME_SCALE,
                             search_params)  # fmt: skip


def _recorded_random_order(store, state: dict) -> bool:
    """Whether a gallery's backfill runs in a random order: its state says so and the order it recorded is the
    permutation that the state's seed draws (:func:`~bt2_hf.retrieval.backfill.backfill_order`). The one sort is safe
    only on a random order, so a manifest edited to say ``"random"`` over another order is not believed: that gallery
    is ranked by the slot rule. Checked once per opened gallery and backfill."""
    if state.get("order") != "random":
        return False
    key = (state.get("seed"), state.get("count"))
    checked = store.__dict__.get("_random_order_checked")
    if checked is None or checked[0] != key:
        table = getattr(store, "backfill_table_order", store.backfill_order)()  # the rows of the backfill's start
        drawn = np.random.default_rng(int(state.get("seed") or 0)).permutation(len(table))
        checked = store.__dict__["_random_order_checked"] = (key, bool(np.array_equal(table, drawn)))
    return checked[1]


def _ranks_compatible(state: dict, prefix: int, encoder_dim: int) -> bool:
    """Whether the ``"compatible"`` rule can rank this backfill: the backfill model records a compatible block of
    the encoder's width, the one the query's prefix is compared on (otherwise the slot rule ranks)."""
    compatible_dim = state["model"].get("compatible_dim")
    return prefix == encoder_dim and compatible_dim == encoder_dim


def _merge_compatible(
    store, prefix_queries: np.ndarray, k: int, search_params: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``"compatible"`` rule's positions: items not re-embedded by their encoder-space cosine, re-embedded items
    by the larger of that and their promoted compatible-block cosine, in one sort; ``(rows, scores, backfilled)``,
    before the slots are filled.

    The candidates come from an exact scan of the re-embedded items' compatible blocks (``k`` deep) and from the
    encoder-space search (every item, by its encoder vector); an item found by both keeps its better score; exact
    whenever the encoder-space search is (:func:`_deepening_merge`).
    """
    count, queries = len(store), len(prefix_queries)
    compatible_scores, compatible_rows = compatible_block_scan(store, prefix_queries, store.dimension, k)
    spread_scores, spread_rows = store.search_encoder_space(prefix_queries, min(SPREAD_RANK, count), **search_params)
    margin = MARGIN_SPREADS * _spread(np.where(spread_rows >= 0, spread_scores, -np.inf))
    compatible_scores = (compatible_scores - margin[:, None]).astype(np.float32)
    rows = np.full((queries, k), -1, dtype=np.int64)
    scores = np.full((queries, k), -np.inf, dtype=np.float32)
    backfilled = np.zeros((queries, k), dtype=bool)

    def merge(pending, encoder_scores, encoder_rows, valid, is_new):
        candidate_rows = np.concatenate([encoder_rows, compatible_rows[pending]], axis=1)
        candidate_scores = np.concatenate([np.where(valid, encoder_scores, -np.inf).astype(np.float32),
                                           compatible_scores[pending]], axis=1)  # fmt: skip
        candidate_new = np.concatenate([is_new, compatible_rows[pending] >= 0], axis=1)
        order = np.argsort(-candidate_scores, axis=1, kind="stable")
        # A re-embedded item found by both searches keeps its better score: its first place in the sorted row.
        repeated = _repeated(np.take_along_axis(candidate_rows, order, 1))
        sorted_scores = np.where(repeated, -np.inf, np.take_along_axis(candidate_scores, order, 1))
        order = np.take_along_axis(order, np.argsort(-sorted_scores, axis=1, kind="stable")[:, :k], 1)
        return [np.take_along_axis(column, order, 1) for column in (candidate_scores, candidate_rows, candidate_new)]

    _deepening_merge(store, prefix_queries, k, search_params, merge, (scores, rows, backfilled))
    missing = ~np.isfinite(scores)
    rows[missing], backfilled[missing] = -1, False
    return rows, scores, backfilled


def _deepening_merge(store, prefix_queries: np.ndarray, k: int, search_params: dict, merge, outputs) -> None:
    """The exact merge of the encoder-space ranking with a second list of candidates, shared by the calibrated,
    compatible and adaptive rules: the encoder space is searched ``depth`` deep and ``merge(pending, encoder_scores,
    encoder_rows, valid, is_new)`` gives each pending query's best ``k`` candidates as columns, merged scores first.
    A query is finished when its ``k``-th merged score is at least the last encoder-space score seen (every item
    beyond it scores lower), and its columns are written into ``outputs`` (same order); the others are searched
    again, four times deeper, so the result is exact whenever the encoder-space search is."""
    count = len(store)
    pending, depth = np.arange(len(prefix_queries)), min(count, max(2 * k, DEFAULT_DEPTH))
    while pending.size:
        encoder_scores, encoder_rows = store.search_encoder_space(prefix_queries[pending], depth, **search_params)
        valid = encoder_rows >= 0
        is_new = np.zeros(encoder_rows.shape, dtype=bool)
        is_new[valid] = store.backfilled(encoder_rows[valid])
        columns = merge(pending, encoder_scores, encoder_rows, valid, is_new)
        last_seen = np.where(valid[:, -1], encoder_scores[:, -1], -np.inf)
        finished = (depth >= count) | ~valid[:, -1] | (columns[0][:, -1] >= last_seen)
        for output, column in zip(outputs, columns):
            output[pending[finished]] = column[finished]
        pending, depth = pending[~finished], min(count, depth * 4)


def _repeated(rows: np.ndarray) -> np.ndarray:
    """Per row of ``rows``, the entries whose gallery row already appeared to their left (-1 pads never repeat)."""
    repeated = np.zeros(rows.shape, dtype=bool)
    for query, row in enumerate(rows):
        _, first = np.unique(row, return_index=True)
        repeated[query] = row >= 0
        repeated[query, first] = False
    return repeated


def _subset(calibration, queries: np.ndarray):
    """A per-query calibration restricted to some of its queries (a boolean mask)."""
    return type(calibration)(*(getattr(calibration, name)[queries] for name in
                               ("old_mean", "old_sd", "new_mean", "new_sd")))  # fmt: skip


def _merge_calibrated(
    store, prefix_queries: np.ndarray, new_queries: np.ndarray, k: int, calibration, search_params: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``"calibrated"`` rule's top ``k``: items not re-embedded by their encoder-space cosine, re-embedded items
    by their new-space cosine put on the encoder space's scale, in one sort; ``(rows, scores, backfilled,
    new_scores)``.

    Two searches give the candidates: the re-embedded items by new/new cosine (exact, ``k`` deep) and the encoder
    space (re-embedded rows skipped there); exact whenever the encoder-space search is (:func:`_deepening_merge`).
    """
    queries = len(prefix_queries)
    backfill_scores, backfill_rows = store.search_backfilled(new_queries, k)
    mapped = np.where(backfill_rows >= 0, calibration.new_to_encoder(backfill_scores, np.arange(queries)), -np.inf)
    rows = np.full((queries, k), -1, dtype=np.int64)
    scores = np.full((queries, k), -np.inf, dtype=np.float64)
    backfilled = np.zeros((queries, k), dtype=bool)
    new_scores = np.full((queries, k), np.nan, dtype=np.float32)

    def merge(pending, encoder_scores, encoder_rows, valid, is_new):
        old_scores = np.where(valid & ~is_new, encoder_scores, -np.inf).astype(np.float64)
        candidate_rows = np.concatenate([encoder_rows, backfill_rows[pending]], axis=1)
        candidate_scores = np.concatenate([old_scores, mapped[pending]], axis=1)
        candidate_new = np.concatenate([np.zeros(encoder_rows.shape, bool), backfill_rows[pending] >= 0], axis=1)
        raw = np.concatenate([np.full(encoder_rows.shape, np.nan, np.float32), backfill_scores[pending]], axis=1)
        order = np.argsort(-candidate_scores, axis=1, kind="stable")[:, :k]
        return [np.take_along_axis(column, order, 1) for column in (candidate_scores, candidate_rows, candidate_new,
                                                                     raw)]  # fmt: skip

    _deepening_merge(store, prefix_queries, k, search_params, merge, (scores, rows, backfilled, new_scores))
    rows[~np.isfinite(scores)] = -1
    return rows, scores.astype(np.float32), backfilled, new_scores


def _covered(old_scores: np.ndarray, use_new: np.ndarray, same_items: bool) -> np.ndarray:
    """Which queries the calibrated rule ranks by calibrated scores: at least ``GATE × β`` of their ``NEIGHBOURHOOD``
    nearest items by encoder-space cosine (``old_scores``, one row per query over the gallery) are re-embedded."""
    count = old_scores.shape[1] - (1 if same_items else 0)  # leave-one-out: the query's own item is no neighbour
    size = max(1, min(NEIGHBOURHOOD, count))
    neighbours = np.argpartition(-old_scores, size - 1, axis=1)[:, :size]
    return use_new[neighbours].mean(axis=1) >= GATE * use_new.mean()


def _margin(old_scores: np.ndarray) -> np.ndarray:
    """Each query's promotion margin from its encoder-space cosines over the whole gallery (one row per query):
    ``MARGIN_SPREADS`` times the gap between its best and its ``SPREAD_RANK``-th best cosine."""
    scores = np.where(np.isfinite(old_scores), old_scores, np.nan)
    rank = min(SPREAD_RANK, scores.shape[1]) - 1
    if rank < 0:
        return np.zeros(len(scores))
    return MARGIN_SPREADS * _spread(-np.sort(-np.nan_to_num(scores, nan=-np.inf), axis=1)[:, : rank + 1])


def _spread(best_first: np.ndarray) -> np.ndarray:
    """The gap between the first and the last finite score of each row (scores sorted best first)."""
    finite = np.isfinite(best_first)
    last = np.where(finite.any(1), finite.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1), 0)
    gap = best_first[:, 0] - best_first[np.arange(len(best_first)), last]
    return np.where(np.isfinite(gap), gap, 0.0)


def _compatible_top1(old_scores, compatible_scores, new_scores, use_new: np.ndarray) -> np.ndarray:
    """The ``"compatible"`` rule's top-1 from full score rows (one per query): the first position of the one sort of
    encoder-space cosines (items not re-embedded) and compatible-block cosines (re-embedded items); when a
    re-embedded item holds it, the best re-embedded item by new/new score. Ties go to the lowest row."""
    first = np.argmax(np.where(use_new[None, :], np.maximum(compatible_scores, old_scores), old_scores), axis=1)
    if not use_new.any():
        return first
    best_new = np.argmax(np.where(use_new[None, :], new_scores, -np.inf), axis=1)
    return np.where(use_new[first], best_new, first)


def _compatible_top1_from_candidates(old_side, compatible_side, new_side, backfill_rank, count) -> np.ndarray:
    """:func:`_compatible_top1` from each query's best candidates by encoder-space, compatible-block and new/new
    score (best first); -1 where the candidates cannot decide (a side needed is missing from them)."""
    (old_top, old_top_scores, old_is_new), (compatible_top, compatible_top_scores) = old_side, compatible_side
    new_top, first_new, has_new = new_side
    rows = np.arange(len(old_top))
    first_old = np.argmax(~old_is_new, axis=1)  # the best item not re-embedded, by new → old
    has_old = ~old_is_new[rows, first_old]
    first_new_old = np.argmax(old_is_new, axis=1)  # the best re-embedded item, by its encoder vector
    has_new_old = old_is_new[rows, first_new_old]
    compatible_is_new = backfill_rank[compatible_top] < count
    first_compatible = np.argmax(compatible_is_new, axis=1)  # the best re-embedded item, by compatible block
    has_compatible = compatible_is_new[rows, first_compatible]
    old_choice, compatible_choice = old_top[rows, first_old], compatible_top[rows, first_compatible]
    old_value = np.where(has_old, old_top_scores[rows, first_old], -np.inf)
    compatible_value = np.where(has_compatible, compatible_top_scores[rows, first_compatible], -np.inf)
    # A re-embedded item's position score is the larger of its two cosines: the better of the two bests.
    by_encoder_choice = old_top[rows, first_new_old]
    by_encoder_value = np.where(has_new_old, old_top_scores[rows, first_new_old], -np.inf)
    encoder_wins = (by_encoder_value > compatible_value) | (
        (by_encoder_value == compatible_value) & (by_encoder_choice < compatible_choice))  # fmt: skip
    compatible_choice = np.where(encoder_wins, by_encoder_choice, compatible_choice)
    compatible_value = np.where(encoder_wins, by_encoder_value, compatible_value)
    take_new = (compatible_value > old_value) | ((compatible_value == old_value) & (compatible_choice < old_choice))
    best = np.where(take_new, new_top[rows, first_new], old_choice)
    num_items = len(backfill_rank)
    unresolved = (~has_compatible & (count > 0)) | (~has_old & (count < num_items)) | (take_new & ~has_new)
    best[unresolved] = -1
    return best


def _standardiser(prefix_queries, new_queries, old_gallery, new_gallery, sample, query_items=None):
    """The ``"calibrated"`` rule's per-query map over ``sample`` (unit galleries; ``query_items``: each query's own
    gallery row when the queries are the gallery items, left out of its statistics)."""
    exclude = None if query_items is None else np.asarray(query_items)[:, None] == sample[None, :]
    return standardise_queries(prefix_queries, new_queries, old_gallery[sample], new_gallery[sample], exclude)


def top1_under_rule(
    old_gallery: np.ndarray,
    new_gallery: np.ndarray,
    queries: np.ndarray,
    prefix_dim: int,
    use_new: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray | None = None,
    *,
    rule: str | Sequence[str] = DEFAULT_RULE,
    chunk: int = 1024,
    random_order: bool | None = None,
) -> float | dict[str, float]:
    """Top-1 accuracy (%) of new queries over a gallery whose ``use_new`` items are re-embedded, under a rule.

    Exact (brute force), for evaluation: ``old_gallery`` (N, d_old), ``new_gallery`` (N, d_new), ``queries``
    (n, d_new) of the new model; ``gallery_labels=None`` means the queries are the gallery items (leave-one-out).
    ``rule="naive"`` is :mod:`bt2_hf.retrieval.backfill`'s scoring (one sort of new/new and new/old cosines). Give a
    sequence of rules to get ``{rule: top1}`` from one pass over the scores. ``"adaptive"`` needs ``random_order``
    (whether ``use_new`` is a prefix of a random backfill order).
    """
    rules = [rule] if isinstance(rule, str) else list(rule)
    for name in rules:
        if name not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {name!r}.")
    _check_rules(rules, None, random_order)
    old_gallery, new_gallery, queries = (
        l2_normalize(old_gallery),
        l2_normalize(new_gallery),
        np.asarray(queries, np.float32),
    )
    use_new = np.asarray(use_new, dtype=bool)
    same_items = gallery_labels is None
    gallery_labels = np.asarray(query_labels if same_items else gallery_labels)
    query_labels = np.asarray(query_labels)
    prefix_queries, full_queries = l2_normalize(queries[:, :prefix_dim]), l2_normalize(queries)
    compatible_gallery = l2_normalize(new_gallery[:, :prefix_dim]) if "compatible" in rules else None
    correct = dict.fromkeys(rules, 0)
    sample = calibration_sample(np.flatnonzero(use_new))
    for start in range(0, len(queries), chunk):
        stop = min(len(queries), start + chunk)
        old_scores = prefix_queries[start:stop] @ old_gallery.T
        new_scores = full_queries[start:stop] @ new_gallery.T
        compatible_scores = None if compatible_gallery is None else prefix_queries[start:stop] @ compatible_gallery.T
        if same_items:
            for scores in (old_scores, new_scores, compatible_scores):
                if scores is not None:
                    scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        if compatible_scores is not None:  # the margin over the other items only (leave-one-out)
            compatible_scores -= _margin(old_scores)[:, None]
        for name in rules:
            effective = _effective(name, random_order, int(use_new.sum()), len(use_new))
            if effective == "naive":
                best = np.argmax(np.where(use_new[None, :], new_scores, old_scores), axis=1)
            elif effective == "compatible":
                best = _compatible_top1(old_scores, compatible_scores, new_scores, use_new)
            else:
                # Top-1 slot: new→old's best item, replaced by new/new's best re-embedded item when it is re-embedded.
                best = np.argmax(old_scores, axis=1)
                if use_new.any():
                    best_new = np.argmax(np.where(use_new[None, :], new_scores, -np.inf), axis=1)
                    best = np.where(use_new[best], best_new, best)
                if effective == "calibrated" and len(sample) >= MIN_CALIBRATION_ITEMS:
                    calibration = _standardiser(prefix_queries[start:stop], full_queries[start:stop], old_gallery,
                                                new_gallery, sample, np.arange(start, stop) if same_items else None)  # fmt: skip
                    mapped = calibration.new_to_encoder(new_scores)
                    calibrated = np.argmax(np.where(use_new[None, :], mapped, old_scores), axis=1)
                    best = np.where(_covered(old_scores, use_new, same_items), calibrated, best)
            correct[name] += int((gallery_labels[best] == query_labels[start:stop]).sum())
    values = {name: 100.0 * count / len(queries) for name, count in correct.items()}
    return values[rule] if isinstance(rule, str) else values


def top_k_under_rule(
    old_space_queries: np.ndarray,
    old_gallery: np.ndarray,
    new_queries: np.ndarray,
    new_gallery: np.ndarray,
    use_new: np.ndarray,
    k: int,
    *,
    rule: str = DEFAULT_RULE,
    compatible_gallery: np.ndarray | None = None,
    chunk: int = 512,
    relevance=None,
    random_order: bool | None = None,
) -> np.ndarray:
    """Each query's first ``k`` gallery rows under a rule, for a gallery whose ``use_new`` items are re-embedded.

    Exact (brute force), for evaluating retrieval sets (relevance judgements rather than classes): the rows go to any
    top-``k`` metric. The query's old-space side is given whole rather than as a prefix, so it may be a compatible
    prefix or a post-hoc adapter's output. ``"slots"`` and ``"calibrated"`` rank as :func:`search_gallery` does on a
    flat gallery; ``"naive"`` sorts every item (new/new cosine if re-embedded, new → old otherwise) rather than the
    encoder space's top ``depth``; ``"compatible"`` ranks as :func:`search_gallery` does (its margin from each
    query's encoder-space cosines over the whole gallery). Ties go to the lowest gallery row.

    Args:
        old_space_queries (`np.ndarray` of shape `(n, d_old)`): the queries in the gallery encoder's space.
        old_gallery (`np.ndarray` of shape `(N, d_old)`): every item's encoder vector.
        new_queries (`np.ndarray` of shape `(n, d_new)`), new_gallery (`np.ndarray` of shape `(N, d_new)`): the new
            model's embeddings (rows of ``new_gallery`` outside ``use_new`` are never read into a score that counts).
        use_new (`np.ndarray` of `bool`, shape `(N,)`): which items are re-embedded.
        k (`int`): rows per query (at most ``N``).
        rule (`str`, *optional*, defaults to `"slots"`): one of ``RULES``.
        compatible_gallery (`np.ndarray` of shape `(N, d_old)`, *optional*): the ``"compatible"`` rule's vectors of
            the re-embedded items in the encoder's space (default: the first ``d_old`` dims of ``new_gallery``, a BT²
            model's compatible block; give e.g. an adapter's output for a post-hoc pair).
        relevance (`RelevanceCalibration`, *optional*): the maps of ``rule="learned"``: every item sorted by its
            mapped score (:mod:`bt2_hf.galleries.relevance_calibration`).
        random_order (`bool`, *optional*): whether ``use_new`` is a prefix of a random backfill order (needed by
            ``rule="adaptive"``: naive scoring from 5 % re-embedded on a random order, the slot rule otherwise).

    Returns:
        `np.ndarray` of int64, shape `(n, k)`.
    """
    _check_rules([rule], relevance, random_order)
    rule = _effective(rule, random_order, int(np.count_nonzero(use_new)), len(use_new))
    old_gallery, new_gallery = l2_normalize(old_gallery), l2_normalize(new_gallery)
    old_space_queries, new_queries = l2_normalize(old_space_queries), l2_normalize(new_queries)
    use_new = np.asarray(use_new, dtype=bool)
    if use_new.shape != (len(old_gallery),) or len(new_gallery) != len(old_gallery):
        raise ValueError("old_gallery, new_gallery and use_new must describe the same items.")
    if len(old_space_queries) != len(new_queries):
        raise ValueError(f"{len(old_space_queries)} old-space queries but {len(new_queries)} new queries.")
    k = min(k, len(old_gallery))
    sample = calibration_sample(np.flatnonzero(use_new))
    if rule == "compatible":
        compatible_gallery = l2_normalize(new_gallery[:, : old_space_queries.shape[1]] if compatible_gallery is None
                                   else compatible_gallery)  # fmt: skip
        if compatible_gallery.shape != old_gallery.shape:
            raise ValueError(f"compatible_gallery must be {old_gallery.shape}, got {compatible_gallery.shape}.")

    def best_first(scores: np.ndarray) -> np.ndarray:  # stable: equal scores keep the lower row first
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    out = np.empty((len(new_queries), k), dtype=np.int64)
    for start in range(0, len(new_queries), chunk):
        stop = min(len(new_queries), start + chunk)
        old_scores = old_space_queries[start:stop] @ old_gallery.T
        new_scores = new_queries[start:stop] @ new_gallery.T
        if rule == "naive":
            out[start:stop] = best_first(np.where(use_new[None, :], new_scores, old_scores))
            continue
        if rule == LEARNED:
            out[start:stop] = best_first(np.where(use_new[None, :], relevance.new_logits(new_scores),
                                                  relevance.encoder_logits(old_scores)))  # fmt: skip
            continue
        if rule == "compatible":  # positions by the one sort of encoder-space and compatible-block cosines
            compatible_scores = old_space_queries[start:stop] @ compatible_gallery.T - _margin(old_scores)[:, None]
            rows = best_first(np.where(use_new[None, :], np.maximum(compatible_scores, old_scores), old_scores))
        else:
            rows = best_first(old_scores)
        if use_new.any():
            backfill_scores = np.where(use_new[None, :], new_scores, -np.inf)
            backfill_rows = best_first(backfill_scores)
            backfill_rows = np.where(
                np.take_along_axis(backfill_scores, backfill_rows, 1) > -np.inf, backfill_rows, -1
            )
            rows, _ = fill_slots(rows, use_new[rows], backfill_rows, np.zeros(backfill_rows.shape, np.float32))
        if rule == "calibrated" and len(sample) >= MIN_CALIBRATION_ITEMS:
            calibration = _standardiser(old_space_queries[start:stop], new_queries[start:stop], old_gallery,
                                        new_gallery, sample)  # fmt: skip
            merged = best_first(np.where(use_new[None, :], calibration.new_to_encoder(new_scores), old_scores))
            rows = np.where(_covered(old_scores, use_new, same_items=False)[:, None], merged, rows)
        out[start:stop] = rows
    return out


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
    rules: Sequence[str] | None = None,
    candidates: int = 64,
    chunk: int = 1024,
    relevance=None,
    random_order: bool | None = None,
) -> dict[str, list[float]]:
    """:func:`top1_under_rule` for every backfill state ``order[:count]``, ``count`` in ``counts``: ``{rule: [top-1]}``.

    Exact, and the same values as :func:`top1_under_rule` (ties too: the lowest gallery row wins), but the scores are
    computed once: each query keeps its ``candidates`` best items by new→old and by new/new score, which decide its
    top-1 at every state unless none of them has the re-embedded status needed; those few queries are re-scored in
    full. ``rules`` may include ``"learned"`` given ``relevance`` (a
    :class:`~bt2_hf.galleries.relevance_calibration.RelevanceCalibration`): one sort of both spaces' mapped scores;
    ``"adaptive"`` given ``random_order`` (whether ``order`` is a random order).
    """
    if rules is None:  # every rule of the galleries that the arguments define
        rules = [name for name in RULES if name != "adaptive" or random_order is not None]
    _check_rules(rules, relevance, random_order)
    old_gallery, new_gallery, queries = (
        l2_normalize(old_gallery),
        l2_normalize(new_gallery),
        np.asarray(queries, np.float32),
    )
    same_items = gallery_labels is None
    gallery_labels = np.asarray(query_labels if same_items else gallery_labels)
    query_labels = np.asarray(query_labels)
    num_items = len(old_gallery)
    backfill_rank = np.full(num_items, num_items, dtype=np.int64)  # item j is re-embedded when its rank < count
    backfill_rank[np.asarray(order)] = np.arange(len(order))
    prefix_queries, full_queries = l2_normalize(queries[:, :prefix_dim]), l2_normalize(queries)
    compatible_gallery = l2_normalize(new_gallery[:, :prefix_dim]) if "compatible" in rules else None
    depth = min(candidates, num_items)
    correct = {rule: np.zeros(len(counts), dtype=np.int64) for rule in rules}
    # Each state's calibration sample, drawn as a gallery in that state draws it: from its re-embedded items.
    samples = [calibration_sample(np.flatnonzero(backfill_rank < count)) for count in counts]

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
        if compatible_gallery is not None:
            compatible_scores = prefix_queries[start:stop] @ compatible_gallery.T - _margin(old_scores)[:, None]
            if same_items:
                compatible_scores[rows, np.arange(start, stop)] = -np.inf
            compatible_top = best_first(compatible_scores)
            compatible_top_scores = np.take_along_axis(compatible_scores, compatible_top, 1)
        expected = query_labels[start:stop]
        for position, count in enumerate(counts):
            calibration = None
            if "calibrated" in rules and len(samples[position]) >= MIN_CALIBRATION_ITEMS:
                calibration = _standardiser(prefix_queries[start:stop], full_queries[start:stop], old_gallery,
                                            new_gallery, samples[position], np.arange(start, stop) if same_items
                                            else None)  # fmt: skip
            old_is_new = backfill_rank[old_top] < count
            new_is_new = backfill_rank[new_top] < count
            first_new = np.argmax(new_is_new, axis=1)  # the best re-embedded item among the new/new candidates
            has_new = new_is_new[rows, first_new]
            use_new = backfill_rank < count
            for name in rules:
                rule = _effective(name, random_order, count, num_items)
                if rule == "compatible":
                    best = _compatible_top1_from_candidates(
                        (old_top, old_top_scores, old_is_new), (compatible_top, compatible_top_scores),
                        (new_top, first_new, has_new), backfill_rank, count)  # fmt: skip
                    unresolved = best < 0
                    for row in np.flatnonzero(unresolved):  # rare: score the query against every item
                        best[row] = _compatible_top1(old_scores[row][None], compatible_scores[row][None],
                                                     new_scores[row][None], use_new)[0]  # fmt: skip
                    correct[name][position] += int((gallery_labels[best] == expected).sum())
                    continue
                # The slot rule's choice (also the calibrated rule's for the queries it leaves to the slots).
                best = old_top[:, 0].copy()
                swap = old_is_new[:, 0]
                best[swap] = new_top[rows, first_new][swap]
                unresolved = swap & ~has_new
                for row in np.flatnonzero(unresolved):  # rare: score the query against every item
                    best[row] = np.argmax(np.where(use_new, new_scores[row], -np.inf))
                if rule in ("naive", LEARNED) or (rule == "calibrated" and calibration is not None):
                    first_old = np.argmax(~old_is_new, axis=1)  # the best item not re-embedded, by new→old
                    has_old = ~old_is_new[rows, first_old]
                    old_choice, new_choice = old_top[rows, first_old], new_top[rows, first_new]
                    old_value = np.where(has_old, old_top_scores[rows, first_old], -np.inf)
                    new_value = np.where(has_new, new_top_scores[rows, first_new], -np.inf)
                    if rule == "calibrated":
                        new_value = calibration.new_to_encoder(new_value[:, None])[:, 0]
                    elif rule == LEARNED:  # both maps increase: each side's best item stays its best
                        old_value, new_value = relevance.encoder_logits(old_value), relevance.new_logits(new_value)
                    take_new = (new_value > old_value) | ((new_value == old_value) & (new_choice < old_choice))
                    mixed = np.where(take_new, new_choice, old_choice)
                    # Unresolved: a side missing from its candidates although such items exist.
                    unresolved = (~has_new & (count > 0)) | (~has_old & (count < num_items))
                    for row in np.flatnonzero(unresolved):  # rare: score the query against every item
                        scores = new_scores[row]
                        old_row = old_scores[row]
                        if rule == "calibrated":
                            scores = calibration.new_to_encoder(new_scores[row][None, :], [row])[0]
                        elif rule == LEARNED:
                            scores, old_row = relevance.new_logits(scores), relevance.encoder_logits(old_row)
                        mixed[row] = np.argmax(np.where(use_new, scores, old_row))
                    best = (
                        mixed
                        if rule in ("naive", LEARNED)
                        else np.where(_covered(old_scores, use_new, same_items), mixed, best)
                    )
                correct[name][position] += int((gallery_labels[best] == expected).sum())
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
    rule: str = DEFAULT_RULE,
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
    relevance=None,
) -> dict[str, dict]:
    """:func:`mixed_backfill_curve` for several rules at once (one pass over the scores per β): ``{rule: curve}``
    (``"learned"`` needs ``relevance``, see :func:`top1_along_backfill`)."""
    from ..retrieval.backfill import backfill_order

    betas = np.linspace(0.0, 1.0, 11) if betas is None else np.asarray(betas, dtype=np.float64)
    permutation = backfill_order(old_embeddings, labels, order, seed)
    counts = [int(np.floor(beta * len(old_embeddings))) for beta in betas]
    values = top1_along_backfill(old_embeddings, new_embeddings, new_embeddings, prefix_dim, permutation, counts,
                                 labels, rules=rules, relevance=relevance,
                                 random_order=isinstance(order, str) and order == "random")  # fmt: skip
    name = order if isinstance(order, str) else "custom"
    return {rule: {"order": name, "rule": rule, "betas": betas.tolist(), "top1": values[rule],
                   "area": float(np.trapezoid(values[rule], betas))} for rule in rules}  # fmt: skip
