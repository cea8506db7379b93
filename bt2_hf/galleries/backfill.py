"""In-place backfill: re-embed a fraction of a gallery with a newer model, a batch at a time, crash-safe.

The order (``random`` or ``priority``) is fixed when a backfill starts and stored beside the gallery; the manifest
records the new model and ``done``, the number of items of that order that carry the new embedding. A batch writes
its rows (which nothing reads until they are counted) and then the manifest with the new ``done``, atomically: a
``kill -9`` at any moment leaves the gallery as it was before or after a completed batch, and the same command run
again continues at ``done``. Searches (:func:`bt2_hf.galleries.search_gallery`) read ``done`` and rank old and
re-embedded items on one comparable score.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from ..compatibility import same_fingerprint
from ..retrieval.backfill import backfill_order, priority_order  # noqa: F401 - priority_order is re-exported
from .embed import encode_items, model_identity
from .faiss_store import GalleryError
from .sources import open_source

logger = logging.getLogger(__name__)

# The orders an in-place backfill takes (label-free: a production gallery may have no labels); see
# retrieval.backfill.backfill_order, the one order function.
BACKFILL_ORDERS = ("random", "priority")


def backfill(
    store,
    model=None,
    data=None,
    *,
    fraction: float,
    order: str | None = None,
    seed: int | None = None,
    batch_size: int = 1024,
    embed_batch_size: int = 256,
    device=None,
    split: str | None = None,
    column: str | None = None,
    id_column: str | None = None,
    embed_rows: Callable[[np.ndarray], np.ndarray] | None = None,
    identity: dict | None = None,
    query_config=None,
    allow_unmeasured: bool = False,
    show_progress: bool = True,
) -> dict:
    """Re-embed the first ``fraction`` of the gallery's backfill order with a new model, in place.

    Args:
        store (`FaissGallery` or `MilvusGallery`): the gallery (see :func:`bt2_hf.galleries.open_gallery`).
        model (`BT2Model`, *optional*): the new model; it must be compatible with the gallery's encoder.
        data (`str` or `GallerySource`, *optional*): the gallery's dataset (matched by its hash, else by item ids).
        fraction (`float`): the backfilled fraction to reach, in [0, 1]; rerun with a larger one to continue.
        order (`str`, *optional*): ``"random"`` or ``"priority"`` (see :func:`~bt2_hf.retrieval.backfill.priority_order`); fixed for the whole
            backfill: a backfill in progress continues in the order it recorded (``None``), and a new one starts in
            ``"random"`` order unless told otherwise.
        seed (`int`, *optional*): seed of the order (``None``: the recorded one, or 0 for a new backfill).
        batch_size (`int`, *optional*, defaults to `1024`): items per committed batch (the unit of crash safety).
        embed_batch_size (`int`, *optional*, defaults to `256`): items per forward pass.
        embed_rows (`Callable`, *optional*): instead of ``model`` + ``data``: gallery rows → new vectors (with
            ``identity`` and ``query_config``, e.g. vectors computed elsewhere).
        identity (`dict`, *optional*): the new model's identity when ``embed_rows`` is given.
        query_config (`BT2Config`, *optional*): the new model's config when ``embed_rows`` is given.
        allow_unmeasured (`bool`, *optional*, defaults to `False`): accept a new model whose compatibility with the
            gallery's encoder is declared but not measured.

    Returns:
        `dict`: the backfill state (``model``, ``order``, ``done``, ``target``, ``count``, ``items_per_second``).

    Raises:
        `IncompatibleModelsError`: the new model is not compatible with the gallery's encoder.
        `GalleryError`: another model's backfill is in progress, or the order differs from the one started.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    if order is not None and order not in BACKFILL_ORDERS:
        raise ValueError(f"Unknown backfill order {order!r}; choose one of {BACKFILL_ORDERS}.")
    recorded = store.backfill_state
    if recorded is not None:
        # A backfill continues in the order it started with: only a differing explicit choice is refused below.
        order = recorded["order"] if order is None else order
        seed = recorded["seed"] if seed is None else seed
    order, seed = order or "random", 0 if seed is None else seed
    if model is not None:
        identity, query_config = model_identity(model), model.config
        source = open_source(data, split=split, column=column, id_column=id_column)
        positions = _dataset_positions(store, source)

        def embed_rows(rows: np.ndarray) -> np.ndarray:
            wanted = positions[rows]
            ordering = np.argsort(wanted, kind="stable")  # read the dataset in increasing position, then restore
            items = source.take(wanted[ordering])
            vectors = encode_items(model, items, embed_batch_size, device)
            restored = np.empty_like(vectors)
            restored[ordering] = vectors
            return restored
    elif embed_rows is None or identity is None or query_config is None:
        raise ValueError("Pass a model and data, or embed_rows with identity and query_config.")
    # The same admission as a search (the gallery's policy and its own admission log included): a model never made
    # compatible with the gallery cannot share it with old items.
    store.admit(query_config, allow_unmeasured=allow_unmeasured)
    state = store.backfill_state
    count = len(store)
    if state is None:
        state = {"model": identity, "dimension": int(identity["embedding_dim"]), "order": order, "seed": int(seed),
                 "done": 0, "count": count, "target": 0, "batch_size": int(batch_size)}  # fmt: skip
        store.start_backfill(state, backfill_order(store, None, order, seed))
    else:
        if not same_fingerprint(state["model"]["fingerprint"], identity["fingerprint"]):
            raise GalleryError(
                f"A backfill with model {state['model'].get('name_or_path')} is in progress ({state['done']}/{count} "
                "items): continue it with that model, or finalize it (`bt2 backfill --finalize`) first."
            )
        if (state["order"], state["seed"]) != (order, int(seed)):
            raise GalleryError(
                f"This gallery's backfill runs in {state['order']!r} order (seed {state['seed']}), not {order!r} "
                f"(seed {seed}): leave --order and --seed out to continue in the recorded order, so that no item is "
                "re-embedded twice."
            )
    target = int(math.floor(fraction * count + 1e-9))
    if target > store.backfill_state["target"]:
        store.update_backfill_state(target=target)
    rows_in_order = store.backfill_order()
    done = store.backfill_state["done"]
    started, embedded = time.perf_counter(), 0
    with tqdm(total=max(0, target - done), desc="backfill", unit="item", disable=not show_progress) as bar:
        while done < target:
            rows = rows_in_order[done : min(target, done + batch_size)]
            vectors = np.asarray(embed_rows(rows), dtype=np.float32)
            if vectors.shape != (len(rows), state["dimension"]):
                raise GalleryError(
                    f"The new model gave {vectors.shape} vectors for {len(rows)} rows of {state['dimension']} dims."
                )
            done += len(rows)
            store.write_backfill_batch(rows, vectors, done)
            embedded += len(rows)
            bar.update(len(rows))
    elapsed = time.perf_counter() - started
    rate = embedded / elapsed if embedded and elapsed > 0 else None
    logger.info("Backfill: %d/%d items re-embedded (%.1f %%).", done, count, 100.0 * done / count)
    return dict(store.backfill_state, items_per_second=rate)


def _dataset_positions(store, source) -> np.ndarray:
    """For each gallery row, its position in ``source`` (the same dataset: by hash, else by item id)."""
    dataset = (store.manifest.get("dataset") or {}) if hasattr(store, "manifest") else {}
    if dataset.get("hash") and dataset.get("hash") == source.fingerprint() and len(source) == len(store):
        return np.arange(len(store))
    position_of = {item: position for position, item in enumerate(source.ids())}
    gallery_ids = store.ids_of(np.arange(len(store)))
    missing = [item for item in gallery_ids if item not in position_of and str(item) not in position_of]
    if missing:
        raise GalleryError(
            f"{len(missing)} gallery items (e.g. {missing[:3]}) are not in the dataset {source.name}: pass the dataset "
            "the gallery was embedded from."
        )
    return np.asarray([position_of.get(item, position_of.get(str(item))) for item in gallery_ids], dtype=np.int64)


def finalize_backfill(store, index_type: str | None = None, **index_params):
    """Make a fully backfilled gallery a plain gallery of the new model (a faiss gallery is rebuilt atomically).

    Afterwards searches compare full new/new embeddings everywhere: the curve's end point is new/new exactly.
    """
    state = store.backfill_state
    if not state or state["done"] < len(store):
        done = state["done"] if state else 0
        raise GalleryError(f"Only {done}/{len(store)} items are backfilled: finish the backfill before finalizing.")
    return store.finalize(index_type, **index_params)
