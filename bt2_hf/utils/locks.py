"""A readers–writer lock: many readers at once (searches), one writer alone (a backfill commit, a dual-write swap, an index add)."""

from __future__ import annotations

import contextlib
import threading


class Held:
    """A context manager calling ``acquire`` on entry and ``release`` on exit (also on an exception)."""

    __slots__ = ("_acquire", "_release")

    def __init__(self, acquire, release):
        self._acquire, self._release = acquire, release

    def __enter__(self) -> None:
        self._acquire()

    def __exit__(self, *exc_info) -> bool:
        self._release()
        return False


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
        # One context object, reused: a generator-based context manager cost a served search 10-15 µs a block.
        self._read_side = Held(self._acquire_read, self._release_read)

    def read(self) -> Held:
        """``with lock.read():`` holds the read side for the block."""
        return self._read_side

    def _acquire_read(self) -> None:
        with self._condition:
            while self._writer or self._writers_waiting:
                self._condition.wait()
            self._readers += 1

    def _release_read(self) -> None:
        with self._condition:
            self._readers -= 1
            if not self._readers:
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
