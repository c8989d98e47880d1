"""The node daemon assembled in-process: its components driven through their RPC methods.

No process starts (workers are ``FakeProc``s from a fake launcher), no socket opens (peers
are ``FakeConn``s and the daemon never calls ``start``), nothing sleeps: each scenario runs
on a fresh event loop and checks the lease table's and the store's invariants as it goes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from protocol_helpers import via_wire
from raylet_fakes import NODE, FakeConn, register, run, settle

from ember.exceptions import (
    ActorUnschedulableError,
    ObjectLostError,
    ProtocolError,
    TaskUnschedulableError,
)
from ember.protocol import Service
from ember.raylet.lease_table import NeedWorkers
from ember.raylet.scheduling_policy import NodeView
from ember.raylet.server import Raylet
from ember.raylet.worker_pool import WorkerState
from ember.raylet.worker_service import death_detail
from ember.rpc.handlers import RpcHandlers

OTHER = b"o" * 28
OWNER = b"w" * 20


def oid(n: int) -> bytes:
    return n.to_bytes(20, "big")


# ---------------------------------------------------------------------------- leases end to end

def test_a_lease_request_starts_a_worker_and_is_granted_when_it_registers(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        driver = FakeConn("driver")
        h = via_wire(raylet.handlers)
        reply = h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": 1}})  # type: ignore[attr-defined]
        raylet.table.validate()
        assert not reply.done() and len(raylet.pool.workers) == 1, "no idle worker: one is started"
        assert h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": 1}}) is reply, "a resent request: same answer"  # type: ignore[attr-defined]
        worker_conn = register(raylet)
        raylet.table.validate()
        grant = reply.result()
        assert grant["node_id"] == NODE and grant["gpu_ids"] == []
        worker = raylet.pool.workers[grant["worker_id"]]
        assert worker.state is WorkerState.LEASED and grant["address"] == worker.address
        assert len(raylet.pool.workers) == 2, "a warm worker is started for the next lease"
        info = h.rpc_get_info(driver, None)  # type: ignore[attr-defined]
        assert info["available"] == {"CPU": 1.0} and {w["state"] for w in info["workers"]} == {"LEASED", "STARTING"}
        # Its task blocks in get: the CPU is lent out, and taken back.
        h.rpc_notify_blocked(worker_conn, None)  # type: ignore[attr-defined]
        assert raylet.table.available["CPU"] == 20000
        h.rpc_notify_unblocked(worker_conn, None)  # type: ignore[attr-defined]
        raylet.table.validate()
        h.rpc_return_lease(driver, {"lease_id": grant["lease_id"]})  # type: ignore[attr-defined]
        raylet.table.validate()
        assert worker.state is WorkerState.IDLE and raylet.table.available["CPU"] == 20000
        assert h.rpc_list_clients(driver, None) == [worker.address]  # type: ignore[attr-defined]
        assert h.rpc_ping(driver, None) == "pong"  # type: ignore[attr-defined]

    run(tmp_path, scenario)


def test_bad_lease_requests_are_refused_with_the_reason(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        with pytest.raises(ValueError, match="bad resource request"):
            h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": -1}})  # type: ignore[attr-defined]
        with pytest.raises(ProtocolError, match="resources"):  # not a map: refused before the handler
            h.rpc_request_lease(driver, {"request_id": 2, "resources": ["CPU"]})  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="bad runtime env"):
            h.rpc_request_lease(driver, {"request_id": 3, "resources": {}, "renv": ["", {}]})  # type: ignore[attr-defined]
        with pytest.raises(ProtocolError, match="prepare_runtime_env"):
            h.rpc_prepare_runtime_env(driver, "not an env")  # type: ignore[attr-defined]
        affinity = {"type": "node_affinity", "node_id": OTHER, "soft": False}
        with pytest.raises(TaskUnschedulableError, match="is not part of the cluster"):
            h.rpc_request_lease(driver, {"request_id": 4, "resources": {"CPU": 1}, "strategy": affinity})  # type: ignore[attr-defined]
        raylet.table.validate()
        assert not raylet.table.queue and not raylet.pool.workers

    run(tmp_path, scenario)


def test_requests_go_where_their_arguments_are_or_to_a_free_node(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        raylet.view.update([[OTHER, ["10.0.0.2", 7000], {"CPU": 4.0}, {"CPU": 4.0}]], raylet.table.total, raylet.table.available)
        near_args = h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": 1}, "prefer": OTHER})  # type: ignore[attr-defined]
        assert near_args.result() == {"spillback": {"node_id": OTHER, "address": ["10.0.0.2", 7000]}}
        # An idle node keeps the request; once its queue holds all its CPUs, the next goes to the free node.
        local = h.rpc_request_lease(driver, {"request_id": 2, "resources": {"CPU": 2}})  # type: ignore[attr-defined]
        assert list(raylet.table.queue)[0].payload.request_id == 2
        third = h.rpc_request_lease(driver, {"request_id": 3, "resources": {"CPU": 2}})  # type: ignore[attr-defined]
        assert third.result()["spillback"]["node_id"] == OTHER
        # A request that was spilled here must wait here.
        spilled = h.rpc_request_lease(driver, {"request_id": 5, "resources": {"CPU": 2}, "spilled": True})  # type: ignore[attr-defined]
        assert not spilled.done()
        register(raylet)  # the first request gets the worker and both CPUs
        assert local.done() and not spilled.done()
        raylet.table.validate()
        # A new view: the waiting request that cannot run here now but can there moves there.
        raylet.leases.on_view()
        assert spilled.done() and spilled.result()["spillback"]["node_id"] == OTHER
        raylet.table.validate()

    run(tmp_path, scenario)


def test_requests_no_node_can_run_get_one_warning(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        reply = h.rpc_request_lease(driver, {"request_id": 7, "resources": {"CPU": 64}})  # type: ignore[attr-defined]
        raylet.leases.on_view()
        raylet.leases.on_view()
        warnings = [p for m, p in driver.notified if m == "infeasible"]
        assert len(warnings) == 1 and warnings[0]["request_id"] == 7
        assert "No node in this cluster can ever satisfy the resource request {CPU: 64}" in warnings[0]["message"]
        assert not reply.done()
        h.rpc_cancel_lease_request(driver, {"request_id": 7})  # type: ignore[attr-defined]
        assert reply.result() == {"cancelled": True}
        raylet.table.validate()

    run(tmp_path, scenario)


def test_a_holder_that_disconnects_loses_its_requests_and_leased_workers(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        raylet.workers.start_worker()
        register(raylet)
        granted = h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": 2}})  # type: ignore[attr-defined]
        waiting = h.rpc_request_lease(driver, {"request_id": 2, "resources": {"CPU": 2}})  # type: ignore[attr-defined]
        worker = raylet.pool.workers[granted.result()["worker_id"]]
        raylet._on_disconnect(driver)  # type: ignore[arg-type]
        raylet.table.validate()
        assert waiting.cancelled()
        assert worker.killed and worker.proc.poll() is not None
        assert worker.end_reason == "the process holding its lease disconnected"
        assert raylet.table.available["CPU"] == 20000 and not raylet.table.leases

    run(tmp_path, scenario)


def test_a_reply_nobody_awaits_returns_its_lease(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        reply = h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": 1}})  # type: ignore[attr-defined]
        reply.cancel()  # its handler was cancelled (the daemon is stopping) while it waited for a worker
        register(raylet)
        raylet.table.validate()
        assert not raylet.table.queue, "granted when a worker came"
        assert not raylet.table.leases and raylet.table.available["CPU"] == 20000, "and returned at once"

    run(tmp_path, scenario)


def test_worker_death_ends_its_lease_and_is_reported_once_the_exit_is_known(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        reply = h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": 1}})  # type: ignore[attr-defined]
        worker_conn = register(raylet)
        worker = raylet.pool.workers[reply.result()["worker_id"]]
        raylet.store.reserve(oid(1), 10, worker.worker_id)  # it dies while writing an object
        worker.proc.kill()
        raylet._on_disconnect(worker_conn)  # type: ignore[arg-type]
        raylet.table.validate()
        raylet.store.validate()
        assert worker.state is WorkerState.DEAD and oid(1) not in raylet.store.objects
        assert raylet.table.available["CPU"] == 20000
        await settle()  # the death report ran
        reports = [p for m, p in raylet.link._backlog if m == "worker_died"]
        assert reports and reports[0]["detail"] == "it was killed by signal 9", "kept until the control service is back"
        # The late return of the dead worker's lease changes nothing.
        h.rpc_return_lease(driver, {"lease_id": reply.result()["lease_id"]})  # type: ignore[attr-defined]
        raylet.table.validate()

    run(tmp_path, scenario)


def test_late_worker_deaths_after_shutdown_are_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(raylet: Raylet) -> None:
        raylet.workers.start_worker()
        worker_conn = register(raylet)
        await raylet.node.background.close(5)  # as Raylet.stop does first (without the stopping flag here)
        with caplog.at_level(logging.DEBUG):
            raylet._on_disconnect(worker_conn)  # type: ignore[arg-type]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("is shut down; dropped the late report a worker death" in r.getMessage() for r in caplog.records)

    run(tmp_path, scenario)


def test_death_detail_says_why() -> None:
    assert death_detail("idle too long", -9) == "the node daemon ended it: idle too long"
    assert death_detail("", None) == "it closed its connection to the node daemon"
    assert death_detail("", -11) == "it was killed by signal 11"
    assert death_detail("", 3) == "it exited with code 3"


def test_actors_beyond_the_node_limits_fail_at_once(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        raylet.leases.fd_limit = 0  # no descriptor left for another worker
        reply = h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": 1}, "actor": True})  # type: ignore[attr-defined]
        with pytest.raises(ActorUnschedulableError, match="file descriptors"):
            reply.result()
        raylet.table.validate()
        assert not raylet.table.queue

    run(tmp_path, scenario)


def test_bundles_through_rpc(tmp_path: Path) -> None:
    pg = bytes.fromhex("cd" * 18)

    async def scenario(raylet: Raylet) -> None:
        h, gcs = via_wire(raylet.handlers), FakeConn("control service")
        assert h.rpc_prepare_bundle(gcs, {"pg_id": pg, "index": 0, "resources": {"CPU": 1}})  # type: ignore[attr-defined]
        assert h.rpc_commit_bundle(gcs, {"pg_id": pg, "index": 0})  # type: ignore[attr-defined]
        raylet.workers.start_worker()
        register(raylet)
        reply = h.rpc_request_lease(gcs, {"request_id": 1, "resources": {f"CPU_group_{pg.hex()}": 1}, "actor": True})  # type: ignore[attr-defined]
        worker = raylet.pool.workers[reply.result()["worker_id"]]
        assert h.rpc_remove_bundle(gcs, {"pg_id": pg, "index": 0})  # type: ignore[attr-defined]
        raylet.table.validate()
        assert worker.killed and raylet.table.available["CPU"] == 20000
        assert h.rpc_prepare_bundle(gcs, {"pg_id": pg, "index": 1, "resources": {"CPU": 1}})  # type: ignore[attr-defined]
        assert h.rpc_cancel_bundle(gcs, {"pg_id": pg, "index": 1})  # type: ignore[attr-defined]
        raylet.table.validate()

    run(tmp_path, scenario)


def test_leases_granted_to_a_restarted_control_service_move_or_end(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, old, new = via_wire(raylet.handlers), FakeConn("old gcs"), FakeConn("new gcs")
        for _ in range(2):
            raylet.workers.start_worker()
            register(raylet)
        kept = h.rpc_request_lease(old, {"request_id": 1, "resources": {"CPU": 1}, "actor": True}).result()  # type: ignore[attr-defined]
        ended = h.rpc_request_lease(old, {"request_id": 2, "resources": {"CPU": 1}, "actor": True}).result()  # type: ignore[attr-defined]
        held = raylet.leases.leases_held_by(old)  # type: ignore[arg-type]
        assert sorted(held) == sorted([[kept["lease_id"], kept["worker_id"]], [ended["lease_id"], ended["worker_id"]]])
        raylet.leases.rejoined(old, new, {ended["lease_id"]})  # type: ignore[arg-type]
        raylet.table.validate()
        assert raylet.table.leases[kept["lease_id"]].holder is new and ended["lease_id"] not in raylet.table.leases

    run(tmp_path, scenario)


# ---------------------------------------------------------------------------- objects

def test_object_rpcs_create_seal_free_and_refuse_what_is_not_here(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        with pytest.raises(ValueError, match="bad create_object request"):
            await h.rpc_create_object(driver, {"object_id": b"short", "size": 1, "owner": OWNER})  # type: ignore[attr-defined]
        assert await h.rpc_create_object(driver, {"object_id": oid(1), "size": 100, "owner": OWNER}) == {"reuse": False}  # type: ignore[attr-defined]
        with open(raylet.store.path(oid(1)), "wb") as f:
            f.write(b"x" * 100)
        h.rpc_seal_object(driver, {"object_id": oid(1)})  # type: ignore[attr-defined]
        assert h.rpc_store_stats(driver, None)["used"] == 100  # type: ignore[attr-defined]
        assert h.rpc_read_object_chunk(driver, {"object_id": oid(1), "offset": 0, "length": 10}) == b"x" * 10  # type: ignore[attr-defined]
        assert await h.rpc_prepare_transfer(driver, {"object_id": oid(1)})  # type: ignore[attr-defined]
        with pytest.raises(ObjectLostError, match="is not on node"):
            await h.rpc_prepare_transfer(driver, {"object_id": oid(2)})  # type: ignore[attr-defined]
        assert not await h.rpc_restore_object(driver, {"object_id": oid(2)})  # type: ignore[attr-defined]
        # Too large for the store: a fallback file on disk.
        big = await h.rpc_create_object(driver, {"object_id": oid(3), "size": 5000, "owner": OWNER})  # type: ignore[attr-defined]
        assert big["path"] == raylet.store.fallback_path(oid(3))
        raylet.store.validate()
        # A copy made on another node of an object freed here meanwhile is freed there at once.
        peer = FakeConn("peer daemon")
        h.rpc_copy_made(peer, {"object_id": oid(9)})  # type: ignore[attr-defined]
        assert peer.notified == [("free_objects", {"object_ids": [oid(9)]})]
        peer.peer_info["address"] = ["10.0.0.3", 7000]
        h.rpc_copy_made(peer, {"object_id": oid(1)})  # type: ignore[attr-defined]
        assert raylet.objects.objects.copies[oid(1)] == [["10.0.0.3", 7000]]
        peer_daemon = FakeConn("daemon at 10.0.0.3")

        async def connect_peer(address: list[Any]) -> FakeConn:
            assert address == ["10.0.0.3", 7000]
            return peer_daemon

        raylet.objects.peers.connect = connect_peer  # type: ignore[method-assign,assignment]
        # A dead node's objects cannot be pulled: fail at once.
        via_wire(raylet.handlers).rpc_pub(None, ["nodes", {  # type: ignore[attr-defined]
            "NodeID": OTHER.hex(), "Alive": False, "NodeManagerAddress": "10.0.0.2", "NodeManagerPort": 7000}])
        with pytest.raises(ObjectLostError, match="is dead"):
            await h.rpc_pull_object(driver, {"object_id": oid(5), "address": ["10.0.0.2", 7000], "size": 1})  # type: ignore[attr-defined]
        # The owner disconnects: its objects go.
        raylet.clients.add(OWNER, driver, "driver pid 1")  # type: ignore[arg-type]
        raylet._on_disconnect(driver)  # type: ignore[arg-type]
        raylet.store.validate()
        assert not raylet.store.objects
        await settle()
        assert peer_daemon.notified == [("free_objects", {"object_ids": [oid(1)]})], "its copy there is freed too"
        h.rpc_free_objects(driver, {"object_ids": [oid(1), oid(3)]})  # type: ignore[attr-defined]
        raylet.store.validate()

    run(tmp_path, scenario)


def test_cluster_view_follows_node_joins_and_deaths(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        joined = {"NodeID": OTHER.hex(), "Alive": True, "NodeManagerAddress": "10.0.0.2", "NodeManagerPort": 7000,
                  "Resources": {"CPU": 8.0}}
        via_wire(raylet.handlers).rpc_pub(None, ["nodes", joined])  # type: ignore[attr-defined]
        via_wire(raylet.handlers).rpc_pub(None, ["logs", {}])  # type: ignore[attr-defined]
        via_wire(raylet.handlers).rpc_pub(None, ["nodes", {**joined, "NodeID": NODE.hex()}])  # type: ignore[attr-defined]
        assert raylet.view.nodes[OTHER] == NodeView(OTHER, ["10.0.0.2", 7000], {"CPU": 80000}, {"CPU": 80000})
        raylet.objects.objects.sources[oid(1)] = ("10.0.0.2", 7000)
        raylet.store.reserve(oid(1), 10, OWNER, primary=False)
        raylet.store.seal(oid(1))
        via_wire(raylet.handlers).rpc_pub(None, ["nodes", {**joined, "Alive": False}])  # type: ignore[attr-defined]
        assert OTHER not in raylet.view.nodes and raylet.view.is_dead_address(["10.0.0.2", 7000, "x"])
        assert oid(1) not in raylet.store.objects, "copies pulled from a dead node's primaries are freed"
        via_wire(raylet.handlers).rpc_pub(None, ["nodes", joined])  # type: ignore[attr-defined]
        assert OTHER in raylet.view.nodes and not raylet.view.dead

    run(tmp_path, scenario)


# ---------------------------------------------------------------------------- the node as a whole

def test_reports_info_logs_and_metrics(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        report = raylet.reporter.report()
        assert report["node_id"] == NODE and report["available"] == {"CPU": 2.0} and report["num_workers"] == 0
        assert raylet.node_info()["resources"] == {"CPU": 2.0}
        info = h.rpc_register_client(driver, {"client_id": OWNER, "pid": 77, "address": ["127.0.0.1", 9, OWNER]})  # type: ignore[attr-defined]
        assert info["node_id"] == NODE
        assert raylet.clients.driver_pids() == [77]
        os.makedirs(raylet.pool.logs_dir, exist_ok=True)
        with open(os.path.join(raylet.pool.logs_dir, "worker-1.out"), "w") as f:
            f.write("hello\n")
        assert h.rpc_list_logs(driver, None) == [["worker-1.out", 6]]  # type: ignore[attr-defined]
        assert h.rpc_read_log(driver, {"name": "worker-1.out"})["data"] == b"hello\n"  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="not a log file name"):
            h.rpc_read_log(driver, {"name": "../token"})  # type: ignore[attr-defined]
        h.rpc_report_metrics(driver, {"worker_id": OWNER, "tasks": [["f", "RUNNING", False, "owner", "01", 1]]})  # type: ignore[attr-defined]
        assert h.rpc_task_counts(driver, None) == [["f", "RUNNING", False, "owner", "01", 1]]  # type: ignore[attr-defined]
        h.rpc_refresh_view(driver, None)  # type: ignore[attr-defined]
        assert raylet.reporter._wakeup.is_set()

    run(tmp_path, scenario)


def test_the_control_service_link_keeps_messages_while_it_is_away(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        link = raylet.link
        assert not link.connected and not link.is_control_service(FakeConn())
        link.notify("worker_died", {"pid": 1})
        link.publish_log({"line": "x"})
        assert link._backlog == [("worker_died", {"pid": 1})] and list(link._log_backlog) == [{"line": "x"}]
        from ember.exceptions import ConnectionLost

        with pytest.raises(ConnectionLost):
            await link.call("report", {})

    run(tmp_path, scenario)


def test_handlers_of_two_components_may_not_collide() -> None:
    class A:
        def rpc_ping(self, conn: Any, p: Any) -> str:
            return "a"

    handlers = RpcHandlers(Service.RAYLET)
    handlers.register(A())
    with pytest.raises(ValueError, match="two components answer 'ping'"):
        handlers.register(A())


def test_housekeeping_forgets_exited_workers_and_fails_envs_that_crash(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        raylet.workers.start_worker()
        starting = list(raylet.pool.workers.values())[0]
        starting.proc.returncode = 1  # it exited before registering
        await raylet.workers.housekeeping()
        assert starting.worker_id not in raylet.pool.workers
        assert starting.state is WorkerState.DEAD
        # An env whose workers all exit at start fails its requests with their output.
        err = tmp_path / "worker.err"
        err.write_text("ImportError: no module named broken\n")
        raylet.pool.failed_starts["env-x"] = [str(err)] * 3
        raylet.renv_agent._contexts["env-x"] = object()  # type: ignore[assignment]
        raylet.pool.startup_concurrency = 0  # no worker of it may start now: the request waits for one
        reply = h.rpc_request_lease(driver, {"request_id": 1, "resources": {"CPU": 1}, "renv": ["env-x", {}]})  # type: ignore[attr-defined]
        raylet.workers.fail_envs_whose_workers_crash()
        with pytest.raises(Exception, match="no module named broken"):
            reply.result()
        raylet.table.validate()
        assert h.rpc_kill_worker(driver, {"worker_id": b"nobody"}) is False  # type: ignore[attr-defined]

    run(tmp_path, scenario)


def test_need_workers_is_not_acted_on_while_stopping(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        raylet.node.stopping = True
        raylet.leases.apply([NeedWorkers("", [])])
        assert not raylet.pool.workers

    run(tmp_path, scenario)


def test_a_pull_stops_when_its_source_node_is_heard_dead_meanwhile(tmp_path: Path) -> None:
    async def scenario(raylet: Raylet) -> None:
        h, driver = via_wire(raylet.handlers), FakeConn("driver")
        connecting: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def connect_forever(address: list[Any]) -> Any:
            return await connecting  # a dead daemon: the connection is retried for connect_timeout_s

        raylet.objects.objects._connect = connect_forever
        pull = asyncio.ensure_future(
            h.rpc_pull_object(driver, {"object_id": oid(5), "address": ["10.0.0.2", 7000], "size": 10}))  # type: ignore[attr-defined]
        await settle()
        assert not pull.done()
        h.rpc_pub(None, ["nodes", {  # type: ignore[attr-defined]
            "NodeID": OTHER.hex(), "Alive": False, "NodeManagerAddress": "10.0.0.2", "NodeManagerPort": 7000}])
        with pytest.raises(ObjectLostError, match="that held it is dead"):
            await pull
        await settle()
        assert connecting.cancelled(), "the connection attempt is abandoned"
        raylet.store.validate()
        assert oid(5) not in raylet.store.objects

    run(tmp_path, scenario)


def test_stopping_closes_connections_to_peers(tmp_path: Path) -> None:
    peer = FakeConn("peer daemon")
    closed: list[str] = []
    peer.close = lambda reason="": closed.append(reason)  # type: ignore[attr-defined]

    async def scenario(raylet: Raylet) -> None:
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ready.set_result(peer)
        pending: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        raylet.objects.peers._peers[("10.0.0.2", 7000)] = ready
        raylet.objects.peers._peers[("10.0.0.3", 7000)] = pending
        await raylet.stop()
        assert closed == ["node daemon stopping"] and pending.cancelled()
        assert not raylet.objects.peers._peers

    run(tmp_path, scenario)


class FakeControlService(FakeConn):
    """The control service's end of the node's connection: answers calls from a table."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__("control service")
        self.answers = answers
        self.calls: list[tuple[str, Any]] = []

    async def call(self, method: str, payload: Any = None, timeout: float | None = -1.0) -> Any:
        self.calls.append((method, payload))
        answer = self.answers.get(method)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self, reason: str = "") -> None:
        self.closed = True
        self.close_reason = reason
        for callback in self.close_callbacks:
            callback(self)


def test_the_node_joins_rejoins_a_restarted_control_service_and_leaves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ember.raylet import control_link

    first = FakeControlService({"register_node": {"cluster_id": "c1"}})
    second = FakeControlService({"register_node": {"release_leases": []}})
    offered = [first, second]

    async def fake_connect(address: Any, token: str, handler: Any = None, **kw: Any) -> FakeControlService:
        assert token == "secret"
        return offered.pop(0)

    monkeypatch.setattr(control_link, "connect", fake_connect)

    async def scenario(raylet: Raylet) -> None:
        await raylet.link.join()
        assert raylet.link.connected and raylet.link.cluster_id == "c1"
        assert [m for m, _ in first.calls] == ["register_node", "subscribe"]
        raylet.workers.start_worker()
        register(raylet)
        lease = via_wire(raylet.handlers).rpc_request_lease(first, {"request_id": 1, "resources": {"CPU": 1}, "actor": True}).result()  # type: ignore[attr-defined]
        first.close("restarting")  # the control service went away
        assert not raylet.link.connected
        raylet.link.notify("worker_died", {"pid": 1})  # kept meanwhile
        for _ in range(10):
            await asyncio.sleep(0)
        assert raylet.link.conn is second
        register_call = second.calls[0]
        assert register_call[0] == "register_node" and register_call[1]["cluster_id"] == "c1"
        assert register_call[1]["gcs_leases"] == [[lease["lease_id"], lease["worker_id"]]]
        assert raylet.table.leases[lease["lease_id"]].holder is second, "its lease moved to the new connection"
        assert ("worker_died", {"pid": 1}) in second.notified, "the backlog went out"
        raylet.table.validate()
        await raylet.link.leave()
        assert second.calls[-1][0] == "unregister_node" and second.closed

    run(tmp_path, scenario)


def test_a_control_service_that_refuses_the_node_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ember.exceptions import ErrorCode, RemoteError
    from ember.raylet import control_link

    first = FakeControlService({"register_node": {"cluster_id": "c1"}})
    refusing = FakeControlService({"register_node": RemoteError(ErrorCode.BAD_REQUEST, "this node belongs to another cluster")})
    offered = [first, refusing]

    async def fake_connect(address: Any, token: str, handler: Any = None, **kw: Any) -> FakeControlService:
        return offered.pop(0)

    monkeypatch.setattr(control_link, "connect", fake_connect)

    async def scenario(raylet: Raylet) -> None:
        await raylet.link.join()
        first.close("restarting")
        for _ in range(10):
            await asyncio.sleep(0)
        assert raylet.stop_event.is_set()

    run(tmp_path, scenario)
