"""How a background backfill yields the CPU to the searches it runs beside: search traffic and the job's priority.

A backfill inside ``bt2 serve`` re-embeds items, writes their rows, syncs them and commits, on the same cores (and
under the same GIL) as the searches. Run flat out, each of its steps delays the searches that arrive meanwhile: on
2 cores a commit costs about 10 ms of CPU, and the 8-client p99 of vector queries rose from 17.5 to 21.6 ms at 1M
items (text queries, whose forward passes need both cores, from 86 to 191 ms). A low-priority backfill:

- breaks its work into short steps (the new model embeds a slice of a batch at a time; a commit is three steps:
  rows written and synced a slice at a time, the search over the re-embedded rows extended, the manifest written
  and switched);
- keeps an account of its share of the time: a step of ``t`` seconds owes ``t * (1 - share) / share`` seconds of
  waiting (time idle, e.g. a ``pause`` between batches, pays it back). Before a step that is owed a wait, it waits
  until the searches are quiet (none in flight, none ended in the last few milliseconds: the wait is then
  forgiven) or the wait is paid, so
  under continuous load it takes at most ``share`` of the time (a tenth by default): its cost to the searches is
  bounded, and it still finishes, at a rate the service reports (``items_per_second``). A job paced within its
  share by its own pauses, or beside quiet traffic, runs as fast as before;
- does not lower its thread's CPU priority: its thread runs Python code under the GIL, and a thread at Linux's
  nice 19 that is descheduled while it holds the GIL (or the traffic's lock) stalls every search until the
  scheduler runs it again. Measured beside other processes on 2 cores (100k items): the 8-client p99 of vector
  queries during a backfill went to 500 ms with its thread at nice 19, 56 ms at nice 0 with the same waits.

The policy is chosen per job (``bt2 serve --backfill_priority low|normal``); ``normal`` is the former behaviour:
each batch embedded at once and committed as soon as it is ready, at the thread's normal priority.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

PRIORITIES = ("low", "normal")
DEFAULT_SHARE = 0.1


class SearchTraffic:
    """The searches in flight in a service, and when the last one ended: what a low-priority job yields to.

    Args:
        quiet_after (`float`, *optional*, defaults to `0.005`): seconds without a search in flight before the
            traffic counts as quiet. Vector queries are answered one at a time on the event loop, so "none in
            flight" is true between every two of them under load; a few milliseconds without any tell a pause in
            the traffic from the gap between two requests.
        poll (`float`, *optional*, defaults to `0.01`): seconds between two looks of a waiting job at the traffic.
            A search never wakes the waiting job: under load that would be a thousand wake-ups a second, each one
            taking the GIL from the searches.

    >>> traffic = SearchTraffic()
    >>> with traffic.search():  # around each search
    ...     traffic.busy()
    True
    """

    def __init__(self, quiet_after: float = 0.005, poll: float = 0.01):
        if quiet_after < 0 or poll <= 0:
            raise ValueError(f"quiet_after must be ≥ 0 and poll > 0 seconds, got {quiet_after!r} and {poll!r}.")
        self.quiet_after, self.poll = float(quiet_after), float(poll)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_end = float("-inf")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.contextmanager
    def search(self):
        """Count one search while the block runs."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last_end = time.monotonic()

    def busy(self) -> bool:
        """A search is in flight, or one ended less than ``quiet_after`` seconds ago."""
        return bool(self._in_flight) or time.monotonic() - self._last_end < self.quiet_after

    def wait_quiet(self, limit: float, stop: threading.Event | None = None) -> float:
        """Wait until the traffic is quiet, at most ``limit`` seconds (or until ``stop`` is set); the seconds
        waited. A caller that is given no quiet moment within the limit goes on anyway: that is its minimum rate."""
        started = time.monotonic()
        deadline = started + max(0.0, float(limit))
        stop = stop or threading.Event()
        while not stop.is_set() and self.busy():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            stop.wait(min(left, self.poll))
        return time.monotonic() - started


@dataclass(frozen=True)
class BackfillPriority:
    """How a backfill job shares the cores with the searches (see the module docstring).

    Args:
        name (`str`): ``"low"`` (yields to the searches) or ``"normal"`` (runs flat out, as before).
        share (`float`, *optional*): the job's share of the time under continuous search load: a step of ``t``
            seconds owes ``t * (1 - share) / share`` seconds of waiting for quiet traffic, paid back before the next
            step by any time the job spent not working (`None`: never waits).
        slice_size (`int`, *optional*): rows the new model embeds (and writes) per step (`None`: a whole batch).
        credit (`float`, *optional*, defaults to `0.5`): seconds of waiting that time spent idle (e.g. a pause
            between batches) may bank for later steps. A backfill paced by its own pauses within its share never
            waits; one that runs flat out under load waits for all its share requires, but for this credit.
    """

    name: str
    share: float | None = None
    slice_size: int | None = None
    credit: float = 0.5

    @classmethod
    def named(cls, name: str, share: float | None = None) -> BackfillPriority:
        """The policy called ``name`` (``"low"`` or ``"normal"``); ``share`` overrides the low policy's share."""
        if name not in PRIORITIES:
            raise ValueError(f"Unknown backfill priority {name!r}: choose one of {list(PRIORITIES)}.")
        if share is not None and (isinstance(share, bool) or not 0 < share <= 1):
            raise ValueError(f"The backfill's share of the time is a fraction in (0, 1], got {share!r}.")
        if name == "normal":
            return cls("normal")
        # A tenth of the time under load: the job still finishes at a tenth of its flat-out rate or more (all of it
        # while the searches pause); 256 rows a slice keep a step of a real model's embedding short.
        return cls("low", share=DEFAULT_SHARE if share is None else float(share), slice_size=256)

    def wait_after(self, worked: float) -> float:
        """Seconds a step may wait for quiet traffic after a step of ``worked`` seconds (0: it never waits)."""
        if self.share is None:
            return 0.0
        return max(0.0, worked) * (1.0 - self.share) / self.share
