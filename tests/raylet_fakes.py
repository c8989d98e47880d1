"""Stand-ins for processes and connections, so the node daemon's components run in unit tests.

Nothing here starts a process or opens a socket: a "worker process" is a
``FakeProc`` whose exit the test decides, a connection is a ``FakeConn`` that
records what was sent to it.
"""

from __future__ import annotations

import itertools
from typing import Any

from ember.raylet.worker_pool import WorkerHandle, WorkerPool

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
