"""Busy polling after an answer: the real asyncio event loop polls its sockets without blocking for the window after
an answer, and blocks again after it. Observed through the timeouts the loop passes to its selector."""

from __future__ import annotations

import asyncio
import time

import pytest

from bt2_hf.serving.busy_poll import BusyPoll


def selector_timeouts(window: float, wait: float) -> tuple[list, float]:
    """The selector timeouts of a loop that answers once at the start and then waits ``wait`` seconds; and the
    seconds from the answer to the first blocking wait."""

    async def main():
        loop = asyncio.get_running_loop()
        calls, select = [], loop._selector.select

        def recorded(timeout=None):
            calls.append((time.perf_counter(), timeout))
            return select(timeout)

        loop._selector.select = recorded
        answered = time.perf_counter()
        BusyPoll(window).answered()
        await asyncio.sleep(wait)
        loop._selector.select = select
        blocking = next((at for at, timeout in calls if timeout is None or timeout > 0), None)
        return calls, (blocking - answered) if blocking is not None else None

    return asyncio.run(main())


def test_the_loop_polls_without_blocking_for_the_window_then_sleeps():
    calls, until_blocking = selector_timeouts(window=0.03, wait=0.1)
    polls = [timeout for _, timeout in calls if timeout == 0]
    assert len(polls) > 30  # the loop went round without sleeping
    assert 0.03 <= until_blocking < 0.09  # it slept again once the window was over (the sleep's remaining time)


def test_no_window_never_polls():
    calls, until_blocking = selector_timeouts(window=0.0, wait=0.05)
    assert until_blocking is not None and until_blocking < 0.01
    assert sum(1 for _, timeout in calls if timeout == 0) <= 2


def test_a_bad_window_is_refused_with_its_range(capsys):
    for bad in (-0.001, 0.5, True, "1"):
        with pytest.raises(ValueError, match="busy-poll window is in seconds, from 0 to 0.1"):
            BusyPoll(bad)
    from bt2_hf.cli.serve import main

    assert main(["nowhere", "--busy-poll-ms", "500"]) == 2
    assert "busy-poll window" in capsys.readouterr().err
