"""Stand-ins for processes and connections, so the node daemon's components run in unit tests.

Nothing here starts a process or opens a socket: a "worker process" is a
``FakeProc`` whose exit the test decides, a connection is a ``FakeConn`` that
records what was sent to it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from protocol_helpers import via_wire

from ember.raylet.server import Raylet, RayletOptions
from ember.raylet.worker_pool import WorkerHandle, WorkerPool

NODE = b"n" * 28

_pids = itertools.count(100000)


class FakeProc:
    def __init__(self) -> None:
        self.pid = next(_pids)
        self.returncode: int | None = None
        self.signals: list[str] = []

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.signals.append("KILL")
        self.returncode = -9

    def terminate(self) -> None:
        self.signals.append("TERM")
        self.returncode = -15

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


class FakeLauncher:
    """Launches nothing: every "worker" is a FakeProc."""

    ready = True
    dead = False

    def __init__(self) -> None:
        self.launched: list[tuple[str, dict[str, Any]]] = []
        self.stopped = False

    def launch(self, worker_id: str, out_path: str, err_path: str, env: dict[str, str], **place: Any) -> FakeProc:
        self.launched.append((worker_id, place))
        return FakeProc()

    def read_available(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True


class FakeConn:
    """A peer connection: records notifications; ``state`` as a real one has."""

    def __init__(self, name: str = "conn") -> None:
        self.name = name
        self.state: dict[str, Any] = {}
        self.notified: list[tuple[str, Any]] = []
        self.closed = False
        self.peer_info: dict[str, Any] = {}
        self.close_callbacks: list[Any] = []

    def add_close_callback(self, callback: Any) -> None:
        self.close_callbacks.append(callback)

    def notify(self, method: str, payload: Any) -> None:
        self.notified.append((method, payload))

    def __repr__(self) -> str:
        return f"FakeConn({self.name})"


def make_pool(logs_dir: str, max_workers: int = 16) -> WorkerPool:
    pool = WorkerPool(logs_dir, {}, max_workers)
    pool.launcher = FakeLauncher()
    return pool


def start_idle_worker(pool: WorkerPool, env_key: str = "") -> WorkerHandle:
    """Start a worker and register it (it connected back): it is IDLE in the pool."""
    handle = pool.start_worker(env_key)
    registered = pool.register(FakeConn(f"worker {handle.pid}"), handle.worker_id, ["127.0.0.1", handle.pid])  # type: ignore[arg-type]
    assert registered is handle
    return handle


def make_raylet(tmp: Path, resources: dict[str, float] | None = None) -> Raylet:
    opts = RayletOptions(
        session_dir=str(tmp), gcs_address="127.0.0.1:1", resources=resources or {"CPU": 2},
        store_capacity=1000, store_dir=str(tmp / "store"), node_id=NODE,
    )
    raylet = Raylet(opts, "secret")
    raylet.pool.launcher = FakeLauncher()
    raylet.node.address = ["127.0.0.1", 4321]
    return raylet


def run(tmp: Path, scenario: Callable[[Raylet], Awaitable[None]], resources: dict[str, float] | None = None) -> None:
    async def main() -> None:
        raylet = make_raylet(tmp, resources)
        try:
            await scenario(raylet)
        finally:
            await raylet.stop()
        raylet.table.validate()

    asyncio.run(main())


def register(raylet: Raylet, worker_index: int = -1) -> FakeConn:
    """The newest started worker connects back and registers."""
    handle = list(raylet.pool.workers.values())[worker_index]
    conn = FakeConn(f"worker {handle.pid}")
    info = via_wire(raylet.handlers).rpc_register_worker(conn, {"worker_id": handle.worker_id, "address": ["127.0.0.1", handle.pid, handle.worker_id]})  # type: ignore[attr-defined]
    assert info["node_id"] == NODE and info["resources"]["CPU"] == 2.0
    return conn


async def settle() -> None:
    """Let callbacks scheduled with call_soon run (a reply's done callback)."""
    for _ in range(3):
        await asyncio.sleep(0)
