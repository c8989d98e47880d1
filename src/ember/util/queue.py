"""A first-in first-out queue shared by tasks and actors (Ray's ``ray.util.queue``).

The items live in an async actor, so any process holding the ``Queue`` (it
pickles to its actor handle) can put and get; blocking calls wait inside the
actor without holding a CPU.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from typing import Any

import ember


class Empty(_stdlib_queue.Empty):
    """``get`` found the queue empty (or timed out waiting)."""


class Full(_stdlib_queue.Full):
    """``put`` found the queue full (or timed out waiting)."""


class _QueueActor:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def put_nowait(self, item: Any) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    async def put_nowait_batch(self, items: list[Any]) -> bool:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return False
        for item in items:
            self.queue.put_nowait(item)
        return True

    async def get(self, timeout: float | None = None) -> tuple[bool, Any]:
        try:
            return True, await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    async def get_nowait(self) -> tuple[bool, Any]:
        try:
            return True, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return False, None

    async def get_nowait_batch(self, num_items: int) -> tuple[bool, list[Any]]:
        if num_items > self.queue.qsize():
            return False, []
        return True, [self.queue.get_nowait() for _ in range(num_items)]


class Queue:
    """A distributed FIFO queue: ``Queue(maxsize=0, actor_options=None)``."""

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an integer >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        options = {"num_cpus": 0, **(actor_options or {})}
        self.actor = ember.remote(_QueueActor).options(**options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        size: int = ember.get(self.actor.qsize.remote())
        return size

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return bool(ember.get(self.actor.empty.remote()))

    def full(self) -> bool:
        return bool(ember.get(self.actor.full.remote()))

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; with ``block`` wait up to ``timeout`` for room, else raise ``Full``."""
        if not block:
            self.put_nowait(item)
            return
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if not ember.get(self.actor.put.remote(item, timeout)):
            raise Full()

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            if not await self.actor.put_nowait.remote(item):
                raise Full()
            return
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if not await self.actor.put.remote(item, timeout):
            raise Full()

    def put_nowait(self, item: Any) -> None:
        if not ember.get(self.actor.put_nowait.remote(item)):
            raise Full()

    def put_nowait_batch(self, items: list[Any]) -> None:
        if not isinstance(items, (list, tuple)):
            raise TypeError("put_nowait_batch() expects a list of items")
        if not ember.get(self.actor.put_nowait_batch.remote(list(items))):
            raise Full(f"Cannot add {len(items)} items to queue of size {self.size()} and maxsize {self.maxsize}.")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; with ``block`` wait up to ``timeout``, else raise ``Empty``."""
        if not block:
            return self.get_nowait()
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        ok, item = ember.get(self.actor.get.remote(timeout))
        if not ok:
            raise Empty()
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            ok, item = await self.actor.get_nowait.remote()
        else:
            if timeout is not None and timeout < 0:
                raise ValueError("'timeout' must be a non-negative number")
            ok, item = await self.actor.get.remote(timeout)
        if not ok:
            raise Empty()
        return item

    def get_nowait(self) -> Any:
        ok, item = ember.get(self.actor.get_nowait.remote())
        if not ok:
            raise Empty()
        return item

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        if not isinstance(num_items, int) or num_items < 0:
            raise ValueError("num_items must be a non-negative integer")
        ok, items = ember.get(self.actor.get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(f"Cannot get {num_items} items from queue of size {self.size()}.")
        return list(items)

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor; the queue cannot be used afterwards."""
        if self.actor is not None:
            ember.kill(self.actor)
            self.actor = None
