"""Busy polling after an answer: the event loop keeps polling its sockets for a moment instead of going to sleep.

Why: a core that has gone idle takes long to wake, and longest on a virtual machine, where the hypervisor has to wake
it. A client that waits for each answer before it sends the next query finds the server's core asleep every time. On
the 2-core machine of the benchmarks (300k-item IVF-PQ gallery, one client), a vector query's round trip took
1.11–1.17 ms with the loop sleeping between requests and 0.98–0.99 ms with it polling (``benchmarks/README.md``).

The cost: a core kept busy for at most the window after an answer, and only while the service is otherwise idle:
the poll starts when the last request in flight has been answered and stops when the next one arrives. So it never
runs beside a query being answered, in particular beside a text query that a worker thread embeds: polling there took
the interpreter's lock and a core from the model (text p99 at 8 clients 96 ms against 85 without polling, when the
poll ran for its whole window after every answer). The poll is a chain of ``call_soon`` callbacks: while one is
pending the loop polls its sockets without blocking, so a request that arrives is read at once.

Nor does it run while another thread of the service has work of its own (a backfill job): a thread that keeps taking
the interpreter's lock back can starve the others, which may wait up to the switch interval (5 ms) for it each time.
(A precaution: the paced backfill's rate beside 1- and 8-client vector loads measured the same with and without
polling, 1,750–2,010 items/s at 300k.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MAX_WINDOW = 0.1  # seconds: beyond this, polling would only burn a core


class BusyPoll:
    """Keep the running event loop polling for ``window`` seconds after the last request in flight is answered, or
    until the next one arrives.

    Args:
        window (`float`): seconds to poll (0: never, the loop sleeps as it would).
        busy_elsewhere (`Callable[[], bool]`, *optional*): whether another thread has work of its own now (no poll
            then).

    Call :meth:`started` on the event loop when a request arrives and :meth:`answered` when it has been answered.
    """

    def __init__(self, window: float, busy_elsewhere: Callable[[], bool] | None = None):
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 <= window <= MAX_WINDOW:
            raise ValueError(f"The busy-poll window is in seconds, from 0 to {MAX_WINDOW}, got {window!r}.")
        self.window = float(window)
        self.busy_elsewhere = busy_elsewhere
        self._in_flight = 0
        self._until = 0.0
        self._polling = False

    def started(self) -> None:
        """A request arrived: it is in flight, and any poll stops."""
        self._in_flight += 1
        self._until = 0.0

    def answered(self) -> None:
        """A request was answered: with none left in flight, poll until ``window`` seconds from now."""
        self._in_flight = max(0, self._in_flight - 1)
        if not self.window or self._in_flight or (self.busy_elsewhere is not None and self.busy_elsewhere()):
            return
        self._until = time.perf_counter() + self.window
        if not self._polling:
            self._polling = True
            loop = asyncio.get_running_loop()
            loop.call_soon(self._poll, loop)

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        if time.perf_counter() < self._until:
            loop.call_soon(self._poll, loop)
        else:
            self._polling = False
