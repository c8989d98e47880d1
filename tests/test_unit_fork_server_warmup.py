"""Workers wait for the fork server while it warms up, and start as fresh interpreters when it
dies or is overdue: the node daemon's worker service with a fork server that is not ready yet.

No process starts: the fork server is a stand-in whose "output" is a socket the test writes to.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from protocol_helpers import via_wire
from raylet_fakes import FakeConn, FakeProc, register, run, settle

from ember.raylet.server import Raylet
from ember.raylet.worker_launcher import SpawnLauncher
from ember.raylet.worker_pool import WorkerState

WORKER_ENV = {"EMBER_TOKEN": "secret"}


class WarmingForkServer:
    """A fork server still importing the runtime; ``announce()`` makes its ready line arrive."""

    def __init__(self) -> None:
        self.ready = False
        self.dead = False
        self.killed = False
        self._reader, self._writer = socket.socketpair()
        self.output_fd = self._reader.fileno()
        self.launched: list[str] = []

    def announce(self, *, ready: bool = False, dead: bool = False) -> None:
        self._next = (ready, dead)
        self._writer.send(b"\n")

    def read_available(self) -> None:
        if hasattr(self, "_next"):
            self._reader.recv(1)
            self.ready, self.dead = self._next
            del self._next

    def launch(self, worker_id: str, out_path: str, err_path: str, env: dict[str, str], **place: Any) -> FakeProc:
        assert self.ready, "a worker was launched through a fork server that is not ready"
        self.launched.append(worker_id)
        return FakeProc()

    def kill(self) -> None:
        self.killed = self.dead = True

    def stop(self) -> None:
        self.dead = True

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


@pytest.fixture
def server() -> Iterator[WarmingForkServer]:
    warming = WarmingForkServer()
    yield warming
    warming.close()


async def _until(condition: Any) -> None:
    """Run the loop until ``condition()`` (the pipe's reader callback runs on a loop turn)."""
    for _ in range(1000):
        if condition():
            return
        await settle()
    raise AssertionError("condition not reached")


def test_workers_wait_for_the_fork_server_then_start_as_forks(tmp_path: Path, server: WarmingForkServer) -> None:

    async def scenario(raylet: Raylet) -> None:
        raylet.workers.start(WORKER_ENV, fork_server=server)
        assert raylet.pool.launcher is server
        assert not raylet.pool.workers, "no prestarted worker while the fork server warms up"
        reply = via_wire(raylet.handlers).rpc_request_lease(FakeConn("driver"), {"request_id": 1, "resources": {"CPU": 1}})  # type: ignore[attr-defined]
        assert not raylet.pool.workers and not reply.done(), "a lease waits for the fork server too"
        raylet.table.validate()
        server.announce(ready=True)
        await _until(lambda: len(raylet.pool.workers) >= 2)
        assert len(server.launched) == len(raylet.pool.workers), "every worker is a fork"
        assert all(w.state is WorkerState.STARTING for w in raylet.pool.workers.values())
        register(raylet, 0)
        await _until(reply.done)
        assert reply.result()["worker_id"] in raylet.pool.workers
        raylet.table.validate()

    run(tmp_path, scenario)


def _fresh_interpreters(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand in for fresh interpreters: record the workers started as one."""
    started: list[str] = []

    def launch(self: SpawnLauncher, worker_id: str, *args: Any, **kwargs: Any) -> FakeProc:
        started.append(worker_id)
        return FakeProc()

    monkeypatch.setattr(SpawnLauncher, "launch", launch)
    return started


def test_a_fork_server_that_dies_warming_up_leaves_fresh_interpreters(
    tmp_path: Path, server: WarmingForkServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = _fresh_interpreters(monkeypatch)

    async def scenario(raylet: Raylet) -> None:
        raylet.workers.start(WORKER_ENV, fork_server=server)
        reply = via_wire(raylet.handlers).rpc_request_lease(FakeConn("driver"), {"request_id": 1, "resources": {"CPU": 1}})  # type: ignore[attr-defined]
        server.announce(dead=True)
        await _until(lambda: len(raylet.pool.workers) >= 2)
        assert isinstance(raylet.pool.launcher, SpawnLauncher)
        assert not server.launched and len(fresh) == len(raylet.pool.workers)
        register(raylet, 0)
        await _until(reply.done)
        raylet.table.validate()

    with caplog.at_level(logging.WARNING):
        run(tmp_path, scenario)
    assert "the fork server exited before it was ready" in caplog.text


def test_an_overdue_fork_server_is_ended_and_workers_start_fresh(
    tmp_path: Path, server: WarmingForkServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = _fresh_interpreters(monkeypatch)

    async def scenario(raylet: Raylet) -> None:
        raylet.workers.start(WORKER_ENV, fork_server=server)
        assert not raylet.pool.workers
        raylet.workers._fork_server_overdue(server)  # what the timer calls after fork_server_ready_timeout_s
        assert server.killed and isinstance(raylet.pool.launcher, SpawnLauncher)
        assert len(fresh) == 2 == len(raylet.pool.workers), "the prestarted workers start as fresh interpreters"
        raylet.workers._fork_server_overdue(server)  # a second firing: nothing more
        assert len(fresh) == 2

    with caplog.at_level(logging.WARNING):
        run(tmp_path, scenario)
    assert "the fork server was not ready after 30s" in caplog.text


def test_a_ready_fork_server_is_not_overdue(tmp_path: Path, server: WarmingForkServer) -> None:

    async def scenario(raylet: Raylet) -> None:
        raylet.workers.start(WORKER_ENV, fork_server=server)
        server.announce(ready=True)
        await _until(lambda: len(raylet.pool.workers) >= 2)
        raylet.workers._fork_server_overdue(server)
        assert not server.killed and raylet.pool.launcher is server

    run(tmp_path, scenario)
