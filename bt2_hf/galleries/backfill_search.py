"""The search over a backfill's re-embedded rows, grown a commit at a time: exact while they are few, an IVF index
beyond.

During a backfill, new-model queries and the slot rule search the rows already re-embedded. A commit adds one batch
of rows; rebuilding a flat index over every re-embedded row at each commit made the commit's CPU grow with the
backfill's progress (it competes with the searches on the same cores). Here each commit copies only its batch's
vectors, into a row table that only grows.

An exact scan of that table grows with it (2.6 ms a query at 99k rows of 160 dimensions, 46 ms at 906k), so past
``EXACT_SCAN_LIMIT`` rows an IVF-Flat index takes over: trained once, on a sample of the rows re-embedded by then,
with about 2·√(gallery size) lists, then grown by each commit's rows (``add``, never rebuilt). Its scores are the exact
inner products of the rows it finds; only the rows in lists it does not probe can be missed (recall against the
exact scan, measured in ``benchmarks/README.md``, sets ``nprobe``).

A :class:`BackfillSearch` is an immutable snapshot: the first ``done`` rows of the backfill order and their vectors.
:meth:`BackfillSearch.extended` returns the next snapshot without changing this one, so a search holding the old
snapshot keeps reading exactly the old state while the next one is prepared, and publishing the new snapshot is one
assignment (the caller's lock discipline decides when searches see it). The index is shared by the snapshots of one
table, as the table is: its ids are positions in the table, and each snapshot searches only ids below its ``done``
(a range selector), so rows added for the next snapshot are never found by an older one. A faiss index cannot be
searched while rows are added to it, so adding takes a lock that searches share; the rows' assignment to lists (most
of an add's work) is computed before it is taken.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..retrieval.knn import import_faiss
from ..utils.locks import ReadWriteLock

# The row table starts this small and doubles when full: the copies cost at most as much again as the rows they copy.
MIN_CAPACITY = 1024
CHUNK = 65_536
# Up to this many re-embedded rows a query scans them all (2.6 ms at 99k × 160 on idle cores, 46 ms at 906k;
# benchmarks/README.md); beyond, the IVF index answers. A gallery that never gets there never trains one, and the
# limit's rows train the lists of a 1M gallery (2,000 × 39).
EXACT_SCAN_LIMIT = 100_000
# Lists probed per query: recall of the top 1 / 10 / 100 against the exact scan ≥ 0.99 at 2·√N lists on the demo's
# BT² embeddings (0.9995 at depth 100) and on a 1M mixture of Gaussians, even for queries far from every cluster
# (0.990); 16 fell to 0.96 there (benchmarks/README.md: "The search over re-embedded items at scale").
NPROBE = 32
# Lists: 2·√(gallery size), 2,000 at 1M. Finer lists scan fewer rows for the same recall (the demo's BT² embeddings,
# nprobe 32: recall@100 0.9998 / 0.9993 / 0.9981 with 1 / 2 / 4·√N lists, scanning 7.8k / 3.9k / 2.0k of 60k rows),
# but each commit assigns its rows to them (1,024 × lists dot products) and the limit's rows must train them.
LISTS_PER_SQRT_ROWS = 2
# k-means wants at least 39 training rows per list (faiss warns below); a sample of up to 64 per list is enough.
MIN_TRAINING_ROWS_PER_LIST, TRAINING_ROWS_PER_LIST = 39, 64
MAX_LISTS = 4096


def list_count(expected: int, training_rows: int) -> int:
    """How many lists the index gets: 2·√(the rows it is expected to hold), as many as its training rows allow."""
    lists = round(LISTS_PER_SQRT_ROWS * math.sqrt(expected))
    return max(1, min(MAX_LISTS, lists, training_rows // MIN_TRAINING_ROWS_PER_LIST))


class _ListIndex:
    """An IVF-Flat index (inner product) whose ids are positions in a row table: the table's first ``ntotal`` rows.

    Rows are only appended (under the exclusive side of ``lock``; searches take the shared side), so a snapshot that
    searches ids below its ``done`` sees exactly its rows whatever was appended since.
    """

    def __init__(self, index, nprobe: int):
        self.index, self.nprobe = index, int(nprobe)
        self.lock = ReadWriteLock()  # searches share it; an add holds it alone (searches last a millisecond)

    @classmethod
    def trained(cls, rows: np.ndarray, expected: int, nprobe: int) -> _ListIndex:
        """An empty index trained on a sample of ``rows``, with lists for about ``expected`` rows."""
        faiss = import_faiss()
        lists = list_count(expected, len(rows))
        sample_size = min(len(rows), TRAINING_ROWS_PER_LIST * lists)
        # Spread over every row re-embedded so far (a priority order's first rows need not resemble its later ones),
        # sorted so that a memory map is read forwards; a fixed seed: the same rows give the same index.
        sample = np.sort(np.random.default_rng(0).choice(len(rows), sample_size, replace=False))
        sample = np.ascontiguousarray(rows[sample], dtype=np.float32)
        dimension = sample.shape[1]
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = TRAINING_ROWS_PER_LIST  # faiss would subsample silently otherwise
        index.train(sample)
        return cls(index, min(nprobe, lists))

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Append ``vectors`` as the next positions: assigned to lists outside the lock, added under it."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not len(vectors):
            return
        faiss = import_faiss()
        _, lists = self.index.quantizer.search(vectors, 1)  # the quantizer is never changed after training
        lists = np.ascontiguousarray(lists[:, 0], dtype=np.int64)
        with self.lock.write():
            ids = np.arange(self.count, self.count + len(vectors), dtype=np.int64)
            self.index.add_core(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(lists))

    def truncated(self, count: int) -> _ListIndex:
        """A copy holding only the first ``count`` positions (the same lists: no training, no re-assignment)."""
        faiss = import_faiss()
        with self.lock.read():
            index = faiss.clone_index(self.index)
        if index.ntotal > count:
            index.remove_ids(faiss.IDSelectorRange(int(count), int(index.ntotal)))
        return _ListIndex(index, self.nprobe)

    def search(self, queries: np.ndarray, depth: int, count: int, nprobe: int | None = None):
        """Top ``depth`` of the first ``count`` positions, ``(scores, positions)``; -1 where the probed lists held
        fewer."""
        faiss = import_faiss()
        selector = faiss.IDSelectorRange(0, int(count))  # a local: it must outlive the search that uses it
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.nprobe), sel=selector)
        with self.lock.read():
            return self.index.search(queries, depth, params=params)


class _RowTable:
    """A float32 table whose first ``claimed`` rows are fixed: rows are only appended after them, never changed.

    Snapshots share the table; the one whose ``done`` is the table's ``claimed`` may append in place (the rows
    beyond a published snapshot's ``done`` are read by no search). Any other extension (a snapshot extended twice,
    or from an older one) copies the rows it keeps into a new table, so no snapshot ever sees its rows change.
    ``index`` (once ``claimed`` passed ``exact_limit``) indexes the rows appended so far; a table grown from this
    one by its owner shares it.
    """

    def __init__(self, dimension: int, capacity: int, expected: int | None, exact_limit: int, nprobe: int):
        self.array = np.empty((capacity, dimension), dtype=np.float32)
        self.claimed = 0
        self.lock = threading.Lock()  # between extensions only; searches never take it
        self.expected, self.exact_limit, self.nprobe = expected, int(exact_limit), int(nprobe)
        self.index: _ListIndex | None = None

    @property
    def capacity(self) -> int:
        return len(self.array)

    def like(self, capacity: int) -> _RowTable:
        """An empty table with this one's width and search settings."""
        return _RowTable(self.array.shape[1], capacity, self.expected, self.exact_limit, self.nprobe)


class BackfillSearch:
    """Inner-product search over the first ``done`` rows of a backfill order (their new-model vectors): exact up to
    the table's ``exact_limit`` rows, an IVF-Flat index beyond.

    Build the empty state with :meth:`empty`, then :meth:`extended` at each commit.

    Args:
        done (`int`): how many rows of the backfill order it covers.
        rows (`np.ndarray` of shape `(done,)`): the gallery rows it covers, in backfill order.
        table (`_RowTable`): the row table whose first ``done`` rows are these rows' vectors.
        index (`_ListIndex`, *optional*): the table's index, covering at least ``done`` positions; ``None``: exact.
    """

    def __init__(self, done: int, rows: np.ndarray, table: _RowTable, index: _ListIndex | None = None):
        self.done, self.rows, self._table, self._index = int(done), rows, table, index

    @classmethod
    def empty(cls, dimension: int, total: int | None = None, exact_limit: int | None = None,
              nprobe: int | None = None) -> BackfillSearch:  # fmt: skip
        """The state before any row is re-embedded.

        Args:
            dimension (`int`): the new model's width.
            total (`int`, *optional*): the gallery's size: it caps the table's growth and sizes the index's lists.
            exact_limit (`int`, *optional*, defaults to `EXACT_SCAN_LIMIT`): up to this many rows, an exact scan.
            nprobe (`int`, *optional*, defaults to `NPROBE`): lists probed per query by the index.
        """
        capacity = MIN_CAPACITY if total is None else max(1, min(MIN_CAPACITY, int(total)))
        exact_limit = EXACT_SCAN_LIMIT if exact_limit is None else int(exact_limit)
        nprobe = NPROBE if nprobe is None else int(nprobe)
        if exact_limit < 1 or nprobe < 1:
            raise ValueError(f"exact_limit and nprobe must be positive, got {exact_limit} and {nprobe}.")
        table = _RowTable(int(dimension), capacity, None if total is None else int(total), exact_limit, nprobe)
        return cls(0, np.empty(0, dtype=np.int64), table)

    @property
    def dimension(self) -> int:
        return self._table.array.shape[1]

    @property
    def approximate(self) -> bool:
        """Whether searches go through the IVF index (past the exact limit) rather than an exact scan."""
        return self._index is not None

    @property
    def lists(self) -> int | None:
        """How many lists the IVF index has (``None`` while the search is exact)."""
        return None if self._index is None else int(self._index.index.nlist)

    def extended(self, order: np.ndarray, vectors, done: int) -> BackfillSearch:
        """The state after the backfill order's first ``done`` rows, reading only the rows added since this one.

        Args:
            order (`np.ndarray`): the backfill order (gallery rows, in the order they are re-embedded).
            vectors (`np.ndarray` or memory map of shape `(N, d)`): the new model's vector of every gallery row; only
                the rows ``order[self.done:done]`` are read.
            done (`int`): how many rows of ``order`` the new state covers, at least ``self.done``.
        """
        done = int(done)
        if done < self.done or done > len(order):
            raise ValueError(f"Cannot extend the search over {self.done} re-embedded rows to {done} (the order has "
                             f"{len(order)} rows; start from BackfillSearch.empty to go back).")  # fmt: skip
        if done == self.done:
            return self
        table = self._table
        with table.lock:
            # The first extension of the table's last state owns what comes after it (in place, or in a bigger table
            # that takes the index along); any other copies the rows it keeps.
            owner = table.claimed == self.done
            if owner:
                table.claimed = done
        in_place = owner and table.capacity >= done
        # The index of this table's first self.done rows, if any (read once: another extension may set it).
        index = table.index
        if not in_place:
            # Doubling (past a jump too: a table rebuilt at a restart) keeps the copies amortised; the gallery's size
            # bounds it (no row is re-embedded twice). Untouched rows cost no memory (the pages are not written).
            capacity = min(len(order), 2 * max(table.capacity, done))
            grown = table.like(capacity)
            grown.array[: self.done] = table.array[: self.done]
            grown.claimed = done
            if index is not None:
                # The owner keeps appending to the same index (snapshots of the old table search only their own ids);
                # another extension copies it without the rows added past self.done (the lists, trained, are kept).
                grown.index = index if owner else index.truncated(self.done)
            table, index = grown, grown.index
        added = np.asarray(order[self.done : done])
        for start in range(0, len(added), CHUNK):  # a table rebuilt from the files: no second copy of it in memory
            rows = added[start : start + CHUNK]
            table.array[self.done + start : self.done + start + len(rows)] = vectors[rows]
        if done > table.exact_limit:
            if index is None:
                # Trained once per table, on the rows re-embedded by now; then each commit adds only its batch.
                index = _ListIndex.trained(table.array[:done], table.expected or done, table.nprobe)
                for start in range(0, done, CHUNK):
                    index.add(table.array[start : min(done, start + CHUNK)])
                table.index = index
            else:
                index.add(table.array[self.done : done])
        return BackfillSearch(done, np.asarray(order[:done]), table, index if done > table.exact_limit else None)

    def search(self, queries: np.ndarray, depth: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``depth`` covered rows by inner product, best first; equal scores in row order.

        Past the exact limit the rows come from the IVF index (their scores exact, a row in a list not probed
        missed); a query whose probed lists hold fewer than ``depth`` rows is answered by the exact scan.

        Args:
            queries (`np.ndarray` of shape `(n, d)`): query vectors in the new model's space.
            depth (`int`): how many rows to return.
            nprobe (`int`, *optional*): lists probed by this search (e.g. to measure recall against it); defaults
                to the one set by :meth:`empty`.

        Returns:
            `(scores, rows)`: two `(n, min(depth, done))` arrays; rows are gallery rows.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        depth = min(int(depth), self.done)
        if depth == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        if self._index is None:
            scores, positions = self._exact(queries, depth)
        else:
            scores, positions = self._index.search(queries, depth, self.done, nprobe)
            short = (positions < 0).any(axis=1)
            if short.any():
                scores[short], positions[short] = self._exact(queries[short], depth)
        rows = self.rows[positions]
        # The table is in backfill order, not row order: ties are put in row order so that the answer does not depend
        # on the order the rows were re-embedded in.
        ranked = np.lexsort((rows, -scores), axis=-1)
        return np.take_along_axis(scores, ranked, -1), np.take_along_axis(rows, ranked, -1)

    def _exact(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = import_faiss()
        return faiss.knn(queries, self._table.array[: self.done], depth, metric=faiss.METRIC_INNER_PRODUCT)
