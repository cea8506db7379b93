"""Busy polling after an answer: the real asyncio event loop polls its sockets without blocking after the last request
in flight is answered, for the window or until the next request arrives, and blocks otherwise. Observed through the
timeouts the loop passes to its selector."""

from __future__ import annotations

import asyncio
import time

import pytest

from bt2_hf.serving.busy_poll import BusyPoll


def selector_calls(script) -> list[tuple[float, float | None]]:
    """``(seconds since the start, timeout)`` of each selector call of a loop running ``script(poll)``."""

    async def main():
        loop = asyncio.get_running_loop()
        calls, select = [], loop._selector.select
        start = time.perf_counter()

        def recorded(timeout=None):
            calls.append((time.perf_counter() - start, timeout))
            return select(timeout)

        loop._selector.select = recorded
        try:
            await script()
        finally:
            loop._selector.select = select
        return calls

    return asyncio.run(main())


def polls(calls, start: float, stop: float) -> int:
    return sum(1 for at, timeout in calls if start <= at < stop and timeout == 0)


def first_blocking(calls, after: float) -> float:
    return next(at for at, timeout in calls if at >= after and (timeout is None or timeout > 0))


def one_answer(poll: BusyPoll, wait: float):
    """A script: one request arrives and is answered, then the loop waits ``wait`` seconds."""

    async def script():
        poll.started()
        poll.answered()
        await asyncio.sleep(wait)

    return script


def test_the_loop_polls_after_the_last_answer_for_the_window_then_sleeps():
    calls = selector_calls(one_answer(BusyPoll(0.03), 0.1))
    assert polls(calls, 0.0, 0.025) > 30  # the loop went round without sleeping
    assert 0.03 <= first_blocking(calls, 0.0) < 0.09  # it slept again once the window was over


def test_a_request_that_arrives_stops_the_poll_and_one_in_flight_prevents_it():
    poll = BusyPoll(0.05)

    async def script():
        poll.started()
        poll.answered()  # the service is idle: poll
        await asyncio.sleep(0.01)
        poll.started()  # the next request: stop
        poll.started()
        await asyncio.sleep(0.03)
        poll.answered()  # one still in flight (a text query in a worker thread): no poll
        await asyncio.sleep(0.03)

    calls = selector_calls(script)
    assert polls(calls, 0.0, 0.009) >= 3
    assert first_blocking(calls, 0.0) >= 0.009  # polled until the next request arrived (at 10 ms) ...
    assert first_blocking(calls, 0.009) < 0.02  # ... and slept at once then, the window not over
    assert polls(calls, 0.012, 0.07) <= 2  # neither while that request was in flight nor after one of two answered


def test_no_poll_while_another_thread_has_work():
    busy = [True]
    calls = selector_calls(one_answer(BusyPoll(0.05, busy_elsewhere=lambda: busy[0]), 0.05))
    assert polls(calls, 0.0, 1.0) <= 2 and first_blocking(calls, 0.0) < 0.01
    busy[0] = False
    calls = selector_calls(one_answer(BusyPoll(0.05, busy_elsewhere=lambda: busy[0]), 0.05))
    assert polls(calls, 0.0, 0.04) >= 3


def test_no_window_never_polls():
    calls = selector_calls(one_answer(BusyPoll(0.0), 0.05))
    assert polls(calls, 0.0, 1.0) <= 2 and first_blocking(calls, 0.0) < 0.01


def test_a_bad_window_is_refused_with_its_range(capsys):
    for bad in (-0.001, 0.5, True, "1"):
        with pytest.raises(ValueError, match="busy-poll window is in seconds, from 0 to 0.1"):
            BusyPoll(bad)
    from bt2_hf.cli.serve import main

    assert main(["nowhere", "--busy-poll-ms", "500"]) == 2
    assert "busy-poll window is in milliseconds, from 0 to 100" in capsys.readouterr().err
