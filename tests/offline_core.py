"""A core worker with no process, socket or thread behind it, for the unit tier.

``OfflineCore`` builds a real ``CoreWorker`` (every component, wired as in a process)
but never starts it: its I/O loop is a plain asyncio loop the test drives with
``settle()`` (run what is ready, no waiting on time), and its connections are
``FakeConnection``s that record what is sent and answer calls from a table or from
futures the test resolves. The object store is a temporary folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ember._private import ids, runtime
from ember.core.links import DRIVER
from ember.core.worker import CoreWorker
from ember.exceptions import ConnectionLost

T = TypeVar("T")

NODE = b"N" * 28
RAYLET = ["127.0.0.1", 40000]


class FakeConnection:
    """What the core worker sees of a peer: calls answered from ``replies`` or left for the test."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str,
                 replies: dict[str, Any] | None = None, port: int = 40000) -> None:
        self.loop = loop
        self.name = name
        self.replies = dict(replies or {})
        self.sent: list[tuple[str, Any]] = []
        #: Calls with no entry in ``replies``: (method, payload, future), answered by the test.
        self.waiting: list[tuple[str, Any, asyncio.Future[Any]]] = []
        self.closed = False
        self.close_reason = ""
        self.peername = ("127.0.0.1", port)
        self.peer_info: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self._close_callbacks: list[Callable[[FakeConnection], None]] = []
        #: Every call's future: those still unanswered fail when the connection closes.
        self._futures: list[asyncio.Future[Any]] = []

    def notify(self, method: str, payload: Any) -> None:
        self.sent.append((method, payload))

    def notified(self, method: str) -> list[Any]:
        return [p for m, p in self.sent if m == method]

    def call_future(self, method: str, payload: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._futures.append(fut)
        if method in self.replies:
            reply = self.replies[method]
            value = reply(payload) if callable(reply) else reply
            if isinstance(value, BaseException):
                fut.set_exception(value)
            else:
                fut.set_result(value)
        else:
            self.waiting.append((method, payload, fut))
        return fut

    async def call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        return await self.call_future(method, payload)

    def take(self, method: str) -> tuple[Any, asyncio.Future[Any]]:
        """The oldest unanswered call of ``method``: (payload, future)."""
        for index, (m, payload, fut) in enumerate(self.waiting):
            if m == method:
                del self.waiting[index]
                return payload, fut
        raise AssertionError(f"no {method} call waits on {self.name}; waiting: {[w[0] for w in self.waiting]}")

    def add_close_callback(self, callback: Callable[[FakeConnection], None]) -> None:
        self._close_callbacks.append(callback)

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for fut in self._futures:
            if not fut.done():
                fut.set_exception(ConnectionResetError(reason))
        for callback in self._close_callbacks:
            callback(self)


class InlineIO:
    """Stands in for ``EventLoopThread``: ``run`` drives the loop in the calling thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.loop.run_until_complete(coro)

    def in_loop_thread(self) -> bool:
        return False

    def stop(self, timeout: float = 5.0) -> None:
        pass


class OfflineCore:
    """A wired, never-started ``CoreWorker``; ``peers`` maps (host, port) to fake core workers."""

    def __init__(self, store_dir: str, mode: str = DRIVER) -> None:
        self.loop = asyncio.new_event_loop()
        worker = self.worker = CoreWorker(mode, gcs_address="127.0.0.1:1", raylet_address="127.0.0.1:2", token="t")
        info = worker.info
        info.address = ["127.0.0.1", 50000, info.worker_id]
        info.node_id = NODE
        info.store_dir = store_dir
        info.session_dir = store_dir
        info.raylet_location = list(RAYLET)
        worker.context.job_id = ids.job_id_from_int(1)
        worker.context.driver_task_id = ids.new_task_id(worker.context.job_id)
        links = worker.links
        links._loop = self.loop
        links.io = InlineIO(self.loop)  # type: ignore[assignment]  # a stand-in with the same methods
        self.raylet = FakeConnection(self.loop, "raylet", {"create_object": {}, "restore_object": True})
        self.gcs = FakeConnection(self.loop, "gcs", {"kv_put": None})
        links.raylet = self.raylet  # type: ignore[assignment]
        links.gcs = self.gcs  # type: ignore[assignment]
        links.gcs_up = asyncio.Event()
        links.gcs_up.set()
        self.peers: dict[tuple[str, int], FakeConnection] = {}

        async def connect_to(address: list[Any]) -> Any:
            key = (address[0], address[1])
            conn = self.peers.get(key)
            if conn is None or conn.closed:
                # As ember.rpc.connect says it: a lost connection caused by the refusal.
                raise ConnectionLost(f"cannot connect to {key}") from ConnectionRefusedError(f"nothing listens at {key}")
            return conn

        links.connect_to = connect_to  # type: ignore[method-assign]
        runtime.set_core_worker(worker)

    def peer(self, port: int, replies: dict[str, Any] | None = None) -> FakeConnection:
        conn = self.peers[("127.0.0.1", port)] = FakeConnection(self.loop, f"peer:{port}", replies, port)
        return conn

    def settle(self, rounds: int = 20) -> None:
        """Run every callback and task that can make progress now (no waiting on time)."""

        async def yield_often() -> None:
            for _ in range(rounds):
                await asyncio.sleep(0)

        self.loop.run_until_complete(yield_often())
        self.validate()

    def validate(self) -> None:
        """Every component's invariants (``settle`` checks them after each step)."""
        worker = self.worker
        worker.task_manager.validate()
        worker.reference_counter.validate()
        worker.memory_store.validate()
        for stream in list(worker.generators.values()):
            stream.validate()

    def close(self) -> None:
        self.validate()
        runtime.set_core_worker(None)
        self.worker.task_counts.close()
        self.worker.task_events.close()
        self.settle()
        self.worker.background.cancel_all()
        self.settle()
        self.loop.close()
