"""Owned background work: every asyncio task a component starts belongs to it.

``BackgroundTasks.spawn(coro, name)`` starts a task and keeps a reference to it (an
unreferenced task can be garbage-collected mid-flight); a task that fails is logged
with its traceback (never silently dropped); ``close()`` cancels whatever still runs
and waits for it, so a component's shutdown leaves nothing behind on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BackgroundTasks:
    """The background tasks of one component (a core worker, a node daemon, a manager...)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], name: str = "",
              loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[T]:
        """Run ``coro`` on ``loop`` (default: the running loop) as a task this component owns."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.owner} is shut down; cannot start {name or coro!r}")
        task = (loop or asyncio.get_running_loop()).create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def spawn_if_open(self, coro: Coroutine[Any, Any, T], name: str = "",
                      loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[T] | None:
        """As :meth:`spawn`, but a late event after shutdown (a connection closing as the process
        stops, a reply or a dropped ref that arrives while it closes) is dropped quietly with a
        debug line instead of raising; returns None then."""
        if self._closed:
            coro.close()
            logger.debug("%s is shut down; dropped the late %s", self.owner, name or coro)
            return None
        return self.spawn(coro, name, loop)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` (or :meth:`cancel_all`) ran: nothing new may start."""
        return self._closed

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("%s: background task %s failed", self.owner, task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel_all(self) -> None:
        """Cancel every task without waiting (for synchronous shutdown paths)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    async def close(self, timeout: float) -> None:
        """Cancel every task and wait (up to ``timeout`` seconds) until they have all ended."""
        self.cancel_all()
        pending = [task for task in self._tasks if task is not asyncio.current_task()]
        if pending:
            done, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                logger.warning("%s: %d background tasks did not stop within %.1fs: %s", self.owner,
                               len(still), timeout, ", ".join(sorted(t.get_name() for t in still)))
