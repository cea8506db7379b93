"""A readers–writer lock: many readers at once (searches), one writer alone (a backfill commit, a dual-write swap, an index add)."""

from __future__ import annotations

import contextlib
import threading


class ReadWriteLock:
    """Shared readers, one exclusive writer; a waiting writer holds new readers back (no writer starvation).

    Searches read a gallery's state several times per query (the backfill's ``done``, the re-embedded rows); a
    backfill batch or a dual-write changes that state between two of those reads only under the write side.
    """

    def __init__(self):
        self._condition = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self):
        with self._condition:
            while self._writer or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                # only a waiting writer waits for the readers to leave (waiting readers wait for writers)
                if not self._readers and self._writers_waiting:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def write(self):
        with self._condition:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()
