"""The actor manager's async shell over fake node connections (no processes, sockets or sleeps).

The node daemons and workers are objects answering calls from futures the test resolves,
so every interleaving is chosen by the test; ``settle()`` lets the loop run what is ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ember._private.background import BackgroundTasks
from ember.exceptions import ConnectionLost, ErrorCode, RemoteError
from ember.gcs import actor_manager as actor_manager_module
from ember.gcs import persistence as db
from ember.gcs.actor_lifecycle import Stage
from ember.gcs.actor_manager import ActorManager, ActorState
from ember.gcs.autoscaler_state import AutoscalerState
from ember.gcs.server import ChangeSignal, NodeEntry
from ember.gcs.storage import InMemoryStorage

NODE_A, NODE_B = b"A" * 28, b"B" * 28


class FakeConn:
    """A connection whose calls wait for the test to answer them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, asyncio.Future[Any]]] = []
        self.notified: list[tuple[str, Any]] = []
        self.closed = False

    async def call(self, method: str, payload: Any, timeout: float | None = None) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls.append((method, payload, fut))
        return await fut

    def notify(self, method: str, payload: Any) -> None:
        self.notified.append((method, payload))

    def close(self, reason: str = "") -> None:
        self.closed = True

    def answer(self, method: str, result: Any = None, error: BaseException | None = None) -> Any:
        """Answer the oldest unanswered call of ``method``; returns its payload."""
        for name, payload, fut in self.calls:
            if name == method and not fut.done():
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)
                return payload
        raise AssertionError(f"no pending {method} call among {[c[0] for c in self.calls]}")


class FakeGcs:
    def __init__(self) -> None:
        self.token = "t"
        self.storage = InMemoryStorage()
        self.background = BackgroundTasks("test control service")
        self.cluster_changed = ChangeSignal()
        self.nodes: dict[bytes, NodeEntry] = {}
        self.session_dir = "/nonexistent"
        self.autoscaler = AutoscalerState(self)  # type: ignore[arg-type]
        #: ``(job, message)`` shown to drivers.
        self.warnings: list[tuple[bytes | None, str]] = []

    def warn_job(self, job_id: bytes | None, message: str) -> None:
        self.warnings.append((job_id, message))

    def add_node(self, node_id: bytes, cpus: float = 2) -> FakeConn:
        conn = FakeConn()
        info = {"node_id": node_id, "address": ["127.0.0.1", 1], "resources": {"CPU": cpus}}
        self.nodes[node_id] = NodeEntry(info, conn)  # type: ignore[arg-type]
        self.cluster_changed.notify()
        return conn


async def settle() -> None:
    """Let every task that can run, run (no time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


def run(test: Callable[[FakeGcs, ActorManager, dict[bytes, FakeConn]], Coroutine[Any, Any, None]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    workers: dict[bytes, FakeConn] = {}

    async def fake_connect(address: Any, token: str, **kwargs: Any) -> FakeConn:
        return workers.setdefault(bytes([address[1] % 256]), FakeConn())

    monkeypatch.setattr(actor_manager_module, "connect", fake_connect)

    async def main() -> None:
        gcs = FakeGcs()
        manager = ActorManager(gcs)  # type: ignore[arg-type]
        try:
            await test(gcs, manager, workers)
            manager.core.validate()
        finally:
            await gcs.background.close(1.0)

    asyncio.run(main())


def spec(n: int, **options: Any) -> dict[str, Any]:
    return {"actor_id": bytes([n]) * 16, "class_name": "C", "place": {"CPU": 1}, "job": b"j",
            "owner": ["h", 1, b"driver"], **options}


def grant(worker: int, node_id: bytes = NODE_A) -> dict[str, Any]:
    return {"worker_id": b"w%d" % worker, "node_id": node_id, "lease_id": b"l%d" % worker,
            "address": ["127.0.0.1", worker, b"w%d" % worker], "pid": 1000 + worker}


def test_an_actor_is_created_and_its_waiters_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(gcs: FakeGcs, manager: ActorManager, workers: dict[bytes, FakeConn]) -> None:
        node = gcs.add_node(NODE_A)
        s = spec(1, name="c")
        assert manager.register(s) == {"actor_id": s["actor_id"], "existing": False}
        waiter = asyncio.ensure_future(manager.wait(s["actor_id"], 0))
        await settle()
        request = node.answer("request_lease", grant(1))
        assert request["actor"] is True and request["resources"] == {"CPU": 1}
        await settle()
        payload = workers[b"\x01"].answer("create_actor", {"s": "ok"})
        assert payload["incarnation"] == 1 and payload["actor_id"] == s["actor_id"]
        await settle()
        info = await waiter
        assert info["state"] == "ALIVE" and info["address"] == ["127.0.0.1", 1, b"w1"]
        assert info["node_address"] == ["127.0.0.1", 1]
        assert db.unpack(gcs.storage.get("actors", s["actor_id"]) or b"")["state"] == "ALIVE"
        assert manager.get_named("c", "")["state"] == "ALIVE"  # type: ignore[index]
        assert workers[b"\x01"].closed
        assert (await manager.wait(b"?" * 16, 0))["state"] == "DEAD"

    run(body, monkeypatch)


def test_a_kill_during_the_lease_cancels_it_and_a_late_grant_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(gcs: FakeGcs, manager: ActorManager, workers: dict[bytes, FakeConn]) -> None:
        node = gcs.add_node(NODE_A)
        s = spec(1)
        manager.register(s)
        await settle()
        assert manager.kill(s["actor_id"], True) is True
        assert node.notified[0][0] == "cancel_lease_request"
        node.answer("request_lease", grant(1))  # the grant won the race
        await settle()
        assert node.notified[-1] == ("return_lease", {"lease_id": b"l1", "kill": True})
        assert (await manager.wait(s["actor_id"], 0))["death_cause"] == "it was killed with ember.kill()"

    run(body, monkeypatch)


def test_an_actor_waits_for_a_node_that_fits(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def body(gcs: FakeGcs, manager: ActorManager, workers: dict[bytes, FakeConn]) -> None:
        small = gcs.add_node(NODE_A, cpus=1)
        s = spec(1, place={"CPU": 2})
        with caplog.at_level(logging.WARNING, logger="ember.gcs.actor_manager"):
            manager.register(s)
            await settle()
        # Its driver is told, in the words tasks get (no autoscaler: no node types to add).
        message = "Actor C 010101010101 cannot be scheduled. No node in this cluster can ever satisfy {CPU: 2}."
        assert message in caplog.text and gcs.warnings == [(b"j", gcs.warnings[0][1])]
        assert gcs.warnings[0][1].startswith(message + " The nodes have: {CPU: 1}.")
        assert small.calls == [] and manager.core.actors[s["actor_id"]].stage is Stage.PLACING
        big = gcs.add_node(NODE_B, cpus=4)  # a join wakes the placer
        await settle()
        assert big.calls[0][0] == "request_lease"

    run(body, monkeypatch)


def test_an_actor_a_node_type_fits_waits_quietly_for_the_autoscaler(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(gcs: FakeGcs, manager: ActorManager, workers: dict[bytes, FakeConn]) -> None:
        gcs.add_node(NODE_A, cpus=1)
        gcs.autoscaler.launchable = [{"CPU": 4.0}]
        manager.register(spec(1, place={"CPU": 2}))
        await settle()
        assert gcs.warnings == []  # the autoscaler adds a node for it
        manager.register(spec(2, place={"GPU": 1}))
        await settle()
        assert len(gcs.warnings) == 1 and "nor any node type the autoscaler can add ({CPU: 4})" in gcs.warnings[0][1]

    run(body, monkeypatch)


@pytest.mark.parametrize("code, error_type", [
    (ErrorCode.ACTOR_UNSCHEDULABLE, "ActorUnschedulableError"),
    (ErrorCode.RUNTIME_ENV_SETUP_FAILED, "RuntimeEnvSetupError"),
    (ErrorCode.INTERNAL, ""),
])
def test_a_refused_lease_kills_the_actor(monkeypatch: pytest.MonkeyPatch, code: ErrorCode, error_type: str) -> None:
    async def body(gcs: FakeGcs, manager: ActorManager, workers: dict[bytes, FakeConn]) -> None:
        node = gcs.add_node(NODE_A)
        s = spec(1)
        manager.register(s)
        await settle()
        node.answer("request_lease", error=RemoteError(code, "no way"))
        await settle()
        info = await manager.wait(s["actor_id"], 0)
        assert info["state"] == "DEAD" and info["error_type"] == error_type and "no way" in info["death_cause"]

    run(body, monkeypatch)


def test_spillback_lost_nodes_and_worker_deaths(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(gcs: FakeGcs, manager: ActorManager, workers: dict[bytes, FakeConn]) -> None:
        a, b = gcs.add_node(NODE_A), gcs.add_node(NODE_B)
        s = spec(1, max_restarts=1)
        manager.register(s)
        await settle()
        a.answer("request_lease", {"spillback": {"node_id": NODE_B}})
        await settle()
        assert b.calls[0][1]["spilled"] is True
        b.answer("request_lease", error=ConnectionLost("node B went away"))
        await settle()
        request = a.answer("request_lease", grant(2))  # placed again
        assert request["spilled"] is False
        await settle()
        workers[b"\x02"].answer("create_actor", error=ConnectionLost("worker died"))
        await settle()
        manager.on_worker_died(b"w2", "exit code 1")  # its node reports the death
        entry = manager.actors[s["actor_id"]]
        assert entry.state is ActorState.RESTARTING and entry.num_restarts == 1
        await settle()
        a.answer("request_lease", grant(3))
        await settle()
        workers[b"\x03"].answer("create_actor", {"s": "ok"})
        await settle()
        assert entry.state is ActorState.ALIVE and entry.incarnation == 1
        manager.on_node_died(NODE_A, "no heartbeat")
        assert (await manager.wait(s["actor_id"], 1))["state"] == "DEAD"

    run(body, monkeypatch)


def test_restore_places_pending_actors_again(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(gcs: FakeGcs, manager: ActorManager, workers: dict[bytes, FakeConn]) -> None:
        s = spec(1)
        record = {"spec": s, "state": "PENDING_CREATION", "num_restarts": 0, "incarnation": 0}
        gcs.storage.put("actors", s["actor_id"], db.pack(record))
        manager.restore()
        assert manager.core.actors[s["actor_id"]].stage is Stage.PLACING
        node = gcs.add_node(NODE_A)
        await settle()
        assert node.calls[0][0] == "request_lease"
        assert manager.on_node_reconnected(NODE_A, [[b"old", b"w"]]) == [b"old"]

    run(body, monkeypatch)
