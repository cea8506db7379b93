"""Busy polling after an answer: the event loop keeps polling its sockets for a moment instead of going to sleep.

Why: a core that has gone idle takes long to wake, and longest on a virtual machine, where the hypervisor has to wake
it. A client that waits for each answer before it sends the next query finds the server's core asleep every time. On
the 2-core machine of the benchmarks, a round trip through a bare uvicorn app that did nothing but the raw search took
1.07 ms with the loop sleeping between requests and 0.87 ms with it polling for 0.2 ms after each answer
(``benchmarks/README.md``).

The cost: the loop keeps one core busy for at most the window after each answer, and only when it would otherwise
sleep (under load it has the next request to answer anyway). The poll is a chain of ``call_soon`` callbacks: while one
is pending the loop polls its sockets without blocking, so a request that arrives is read at once.
"""

from __future__ import annotations

import asyncio
import time

MAX_WINDOW = 0.1  # seconds: beyond this, polling would only burn a core


class BusyPoll:
    """After each answer, keep the running event loop polling for ``window`` seconds.

    Args:
        window (`float`): seconds to poll after the latest answer (0: never, the loop sleeps as it would).

    Call :meth:`answered` on the event loop after each response.
    """

    def __init__(self, window: float):
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 <= window <= MAX_WINDOW:
            raise ValueError(f"The busy-poll window is in seconds, from 0 to {MAX_WINDOW}, got {window!r}.")
        self.window = float(window)
        self._until = 0.0
        self._polling = False

    def answered(self) -> None:
        """An answer was sent: poll until ``window`` seconds from now (one chain of callbacks at a time)."""
        if not self.window:
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
