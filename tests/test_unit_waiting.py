"""Waits with a timeout that never swallow a cancellation (``ember._private.waiting``).

``asyncio.wait_for`` on Python < 3.12 returns normally when its task is cancelled at the
moment the awaited thing completes; a background loop waiting like that outlives its
owner's ``close()``. Each scenario cancels at exactly that moment, with no clock involved.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import pytest

from ember._private.background import BackgroundTasks
from ember._private.waiting import result_within, wait_event


class Wake:
    """What wakes the loop: an event, and the reply future of the call it waits on (if any)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reply: asyncio.Future[object] | None = None

    def set(self) -> None:
        self.event.set()
        if self.reply is not None and not self.reply.done():
            self.reply.set_result("reply")


def _loop_cancelled_as_it_wakes(wait: Callable[[Wake], Awaitable[object]]) -> bool:
    """A loop waits with ``wait``; it is woken and cancelled in the same turn of the loop.
    True if the cancellation reached it (its owner's close() then returns at once)."""

    async def scenario() -> bool:
        wake = Wake()

        async def report_loop() -> None:
            while True:
                await wait(wake)
                wake.event.clear()

        tasks = BackgroundTasks("test component")
        task = tasks.spawn(report_loop(), "report loop")
        await asyncio.sleep(0)  # the loop is now waiting
        wake.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        return bool(done) and task.cancelled()

    return asyncio.run(scenario())


def _call(wake: Wake, wait: Callable[[asyncio.Future[object]], Awaitable[object]]) -> Awaitable[object]:
    wake.reply = asyncio.get_running_loop().create_future()
    return wait(wake.reply)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for keeps the cancellation from 3.12 on")
def test_wait_for_loses_a_cancellation_that_arrives_as_it_wakes():
    # What the helpers are for.
    async def event_with_wait_for(wake: Wake) -> None:
        try:
            await asyncio.wait_for(wake.event.wait(), 60)
        except asyncio.TimeoutError:
            pass

    assert not _loop_cancelled_as_it_wakes(event_with_wait_for)
    assert not _loop_cancelled_as_it_wakes(lambda wake: _call(wake, lambda fut: asyncio.wait_for(fut, 60)))


def test_wait_event_lets_the_cancellation_through():
    assert _loop_cancelled_as_it_wakes(lambda wake: wait_event(wake.event, 60))


def test_result_within_lets_the_cancellation_through():
    assert _loop_cancelled_as_it_wakes(lambda wake: _call(wake, lambda fut: result_within(fut, 60)))


def test_wait_event_answers_set_or_timed_out():
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        timed_out = await wait_event(event, 0.01)
        event.set()
        return timed_out, await wait_event(event, 0.01)

    assert asyncio.run(scenario()) == (False, True)


def test_result_within_times_out_and_cancels_the_future():
    async def scenario() -> asyncio.Future[object]:
        fut = asyncio.get_running_loop().create_future()
        with pytest.raises(asyncio.TimeoutError):
            await result_within(fut, 0.01)
        return fut

    assert asyncio.run(scenario()).cancelled()
