"""Busy polling after an answer: the real asyncio event loop polls its sockets without blocking after the last request
in flight is answered, for the window or until the next request arrives, and blocks otherwise. Observed through the
timeouts the loop passes to its selector."""

from __future__ import annotations

import asyncio
import time

import pytest

from bt2_hf.serving.busy_poll import BusyPoll


def selector_calls(script) -> list[tuple[float, float | None]]:
    """The selector calls of a loop running ``script(mark)``, in order: ``(seconds since the start, timeout)``, with
    ``(seconds, "name")`` where the script called ``mark("name")``.

    The assertions read the order of the calls and the timeouts the loop chose, never how long a step took: on a
    loaded machine the process can be descheduled for tens of milliseconds anywhere."""

    async def main():
        loop = asyncio.get_running_loop()
        calls, select = [], loop._selector.select
        start = time.perf_counter()

        def recorded(timeout=None):
            calls.append((time.perf_counter() - start, timeout))
            return select(timeout)

        loop._selector.select = recorded
        try:
            await script(lambda name: calls.append((time.perf_counter() - start, name)))
        finally:
            loop._selector.select = select
        return calls

    return asyncio.run(main())


def between(calls, first: str, last: str | None = None) -> list[tuple[float, float | None]]:
    """The selector calls after mark ``first`` and before mark ``last`` (or the end)."""
    names = [timeout for _, timeout in calls]
    stop = names.index(last) if last is not None else len(calls)
    return [call for call in calls[names.index(first) + 1 : stop] if not isinstance(call[1], str)]


def is_poll(call) -> bool:
    return call[1] == 0


def slept_at_once(calls) -> bool:
    """The loop slept at its first or second selector call (a poll callback already queued may run once more) and
    polled at most once more, when its timer fell due."""
    polled = list(map(is_poll, calls))
    return False in polled[:2] and sum(polled) <= 2


def one_answer(poll: BusyPoll, wait: float):
    """A script: one request arrives and is answered, then the loop waits ``wait`` seconds."""

    async def script(mark):
        poll.started()
        mark("answered")  # just before the answer: the window starts after this mark
        poll.answered()
        await asyncio.sleep(wait)

    return script


def test_the_loop_polls_after_the_last_answer_for_the_window_then_sleeps():
    window = 0.03
    calls = selector_calls(one_answer(BusyPoll(window), 0.5))
    after = between(calls, "answered")
    answered_at = next(at for at, name in calls if name == "answered")
    blocking = [index for index, call in enumerate(after) if not is_poll(call)]
    assert blocking, "the loop never slept again after the window"
    first_sleep = blocking[0]
    assert first_sleep >= 1  # it went round without sleeping ...
    assert after[first_sleep][0] - answered_at >= window  # ... for the whole window, never less ...
    assert sum(map(is_poll, after[first_sleep:])) <= 2  # ... and slept once it was over (a due timer may poll once)


def test_a_request_that_arrives_stops_the_poll_and_one_in_flight_prevents_it():
    poll = BusyPoll(0.1)

    async def script(mark):
        poll.started()
        poll.answered()  # the service is idle: poll
        mark("idle")
        await asyncio.sleep(0.01)
        poll.started()  # the next request: stop
        poll.started()
        mark("two in flight")
        await asyncio.sleep(0.2)
        poll.answered()  # one still in flight (a text query in a worker thread): no poll
        mark("one in flight")
        await asyncio.sleep(0.2)

    calls = selector_calls(script)
    idle = between(calls, "idle", "two in flight")
    assert len(idle) >= 2 and all(map(is_poll, idle))  # polled until the next request arrived, within the window
    two_in_flight = between(calls, "two in flight", "one in flight")
    assert slept_at_once(two_in_flight)  # then slept at once, the window not over ...
    assert slept_at_once(between(calls, "one in flight"))  # ... and after one of the two was answered


def test_no_poll_while_another_thread_has_work():
    busy = [True]
    calls = selector_calls(one_answer(BusyPoll(0.05, busy_elsewhere=lambda: busy[0]), 0.2))
    assert slept_at_once(between(calls, "answered"))
    busy[0] = False
    calls = selector_calls(one_answer(BusyPoll(0.1, busy_elsewhere=lambda: busy[0]), 0.2))
    assert sum(map(is_poll, between(calls, "answered"))) >= 2


def test_no_window_never_polls():
    calls = selector_calls(one_answer(BusyPoll(0.0), 0.2))
    assert slept_at_once(between(calls, "answered"))


def test_a_bad_window_is_refused_with_its_range(capsys):
    for bad in (-0.001, 0.5, True, "1"):
        with pytest.raises(ValueError, match="busy-poll window is in seconds, from 0 to 0.1"):
            BusyPoll(bad)
    from bt2_hf.cli.serve import main

    assert main(["nowhere", "--busy-poll-ms", "500"]) == 2
    assert "busy-poll window is in milliseconds, from 0 to 100" in capsys.readouterr().err
