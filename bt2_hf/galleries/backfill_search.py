"""The exact search over a backfill's re-embedded rows, grown a commit at a time.

During a backfill, new-model queries and the slot rule search the rows already re-embedded, exactly. A commit adds
one batch of rows; rebuilding a flat index over every re-embedded row at each commit made the commit's CPU grow with
the backfill's progress (it competes with the searches on the same cores). Here each commit copies only its batch's
vectors, into a row table that only grows.

A :class:`BackfillSearch` is an immutable snapshot: the first ``done`` rows of the backfill order and their vectors.
:meth:`BackfillSearch.extended` returns the next snapshot without changing this one, so a search holding the old
snapshot keeps reading exactly the old state while the next one is prepared, and publishing the new snapshot is one
assignment (the caller's lock discipline decides when searches see it).
"""

from __future__ import annotations

import threading

import numpy as np

from ..retrieval.knn import import_faiss

# The row table starts this small and doubles when full: the copies cost at most as much again as the rows they copy.
MIN_CAPACITY = 1024
CHUNK = 65_536


class _RowTable:
    """A float32 table whose first ``claimed`` rows are fixed: rows are only appended after them, never changed.

    Snapshots share the table; the one whose ``done`` is the table's ``claimed`` may append in place (the rows
    beyond a published snapshot's ``done`` are read by no search). Any other extension (a snapshot extended twice,
    or from an older one) copies the rows it keeps into a new table, so no snapshot ever sees its rows change.
    """

    def __init__(self, dimension: int, capacity: int):
        self.array = np.empty((capacity, dimension), dtype=np.float32)
        self.claimed = 0
        self.lock = threading.Lock()  # between extensions only; searches never take it

    @property
    def capacity(self) -> int:
        return len(self.array)


class BackfillSearch:
    """Exact inner-product search over the first ``done`` rows of a backfill order (their new-model vectors).

    Build the empty state with :meth:`empty`, then :meth:`extended` at each commit.

    Args:
        done (`int`): how many rows of the backfill order it covers.
        rows (`np.ndarray` of shape `(done,)`): the gallery rows it covers, in backfill order.
        table (`_RowTable`): the row table whose first ``done`` rows are these rows' vectors.
    """

    def __init__(self, done: int, rows: np.ndarray, table: _RowTable):
        self.done, self.rows, self._table = int(done), rows, table

    @classmethod
    def empty(cls, dimension: int, total: int | None = None) -> BackfillSearch:
        """The state before any row is re-embedded; ``total`` (the gallery's size) caps the table's growth."""
        capacity = MIN_CAPACITY if total is None else max(1, min(MIN_CAPACITY, int(total)))
        return cls(0, np.empty(0, dtype=np.int64), _RowTable(int(dimension), capacity))

    @property
    def dimension(self) -> int:
        return self._table.array.shape[1]

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
            in_place = table.claimed == self.done and table.capacity >= done
            if in_place:
                table.claimed = done
        if not in_place:
            # Doubling (past a jump too: a table rebuilt at a restart) keeps the copies amortised; the gallery's size
            # bounds it (no row is re-embedded twice). Untouched rows cost no memory (the pages are not written).
            capacity = min(len(order), 2 * max(table.capacity, done))
            grown = _RowTable(self.dimension, capacity)
            grown.array[: self.done] = table.array[: self.done]
            grown.claimed = done
            table = grown
        added = np.asarray(order[self.done : done])
        for start in range(0, len(added), CHUNK):  # a table rebuilt from the files: no second copy of it in memory
            rows = added[start : start + CHUNK]
            table.array[self.done + start : self.done + start + len(rows)] = vectors[rows]
        return BackfillSearch(done, np.asarray(order[:done]), table)

    def search(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``depth`` covered rows by inner product, best first; equal scores in row order.

        Returns:
            `(scores, rows)`: two `(n, min(depth, done))` arrays; rows are gallery rows.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        depth = min(int(depth), self.done)
        if depth == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        faiss = import_faiss()
        scores, positions = faiss.knn(queries, self._table.array[: self.done], depth,
                                      metric=faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        rows = self.rows[positions]
        # The table is in backfill order, not row order: ties are put in row order so that the answer does not depend
        # on the order the rows were re-embedded in.
        ranked = np.lexsort((rows, -scores), axis=-1)
        return np.take_along_axis(scores, ranked, -1), np.take_along_axis(rows, ranked, -1)
