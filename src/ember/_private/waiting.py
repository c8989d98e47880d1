"""Waiting with a timeout without losing a cancellation.

``asyncio.wait_for`` on Python < 3.12 returns normally when its task is cancelled just
as the awaited future completes: the cancellation is swallowed. A background loop that
waits like that (a load-report loop woken by every change, a call answered at that
moment) keeps running after its owner cancelled it, and a daemon's shutdown waits for
it in vain. These helpers always let the cancellation through.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def result_within(fut: asyncio.Future[T], timeout: float) -> T:
    """The result of ``fut``, or ``asyncio.TimeoutError`` after ``timeout`` seconds.

    As ``asyncio.wait_for``: ``fut`` is cancelled on a timeout and when the caller is cancelled.
    """
    try:
        done, _ = await asyncio.wait((fut,), timeout=timeout)
    finally:
        if not fut.done():
            fut.cancel()
    if not done:
        raise asyncio.TimeoutError()
    return fut.result()


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False)."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait((waiter,), timeout=timeout)
    finally:
        if not waiter.done():
            waiter.cancel()
    return bool(done)
