"""The control service's tables (KV, jobs, nodes, pub/sub) and its storage, in process.

Handlers are called directly with fake connections: no processes, sockets or sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from protocol_helpers import via_wire

from ember.gcs import persistence as db
from ember.gcs.server import GcsServer
from ember.gcs.storage import InMemoryStorage, SqliteStorage, open_storage
from ember.protocol.gcs import NodeRecord

NODE_A, NODE_B = b"A" * 28, b"B" * 28


class FakeConn:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.notified: list[tuple[str, Any]] = []
        self._on_close: list[Callable[[FakeConn], None]] = []
        self.closed = False

    def add_close_callback(self, callback: Callable[[FakeConn], None]) -> None:
        self._on_close.append(callback)

    def notify(self, method: str, payload: Any) -> None:
        self.notified.append((method, payload))

    def close(self, reason: str = "") -> None:
        self.closed = True
        for callback in self._on_close:
            callback(self)


@pytest.fixture
def gcs(tmp_path: Path) -> GcsServer:
    return GcsServer(str(tmp_path), "token")


def node_info(node_id: bytes, cpus: float = 2, **extra: Any) -> dict[str, Any]:
    return {"node_id": node_id, "address": ["127.0.0.1", 7000], "resources": {"CPU": cpus}, **extra}


# ============================================================================ KV
def test_kv_put_get_delete_and_namespaces(gcs: GcsServer) -> None:
    c: Any = FakeConn()
    assert via_wire(gcs).rpc_kv_put(c, {"ns": "fn", "key": b"k", "value": b"1"}) is True
    assert via_wire(gcs).rpc_kv_get(c, {"ns": "fn", "key": b"k"}) == b"1"
    assert via_wire(gcs).rpc_kv_get(c, {"ns": "other", "key": b"k"}) is None  # namespaces are apart
    assert via_wire(gcs).rpc_kv_put(c, {"ns": "fn", "key": b"k", "value": b"2", "overwrite": False}) is False
    assert via_wire(gcs).rpc_kv_get(c, {"ns": "fn", "key": b"k"}) == b"1"
    via_wire(gcs).rpc_kv_put(c, {"ns": "fn", "key": b"kx", "value": b"3"})
    via_wire(gcs).rpc_kv_put(c, {"ns": "fn", "key": b"other", "value": b"4"})
    assert sorted(via_wire(gcs).rpc_kv_keys(c, {"ns": "fn", "prefix": b"k"})) == [b"k", b"kx"]
    assert sorted(via_wire(gcs).rpc_kv_items(c, {"ns": "fn", "prefix": b"k"})) == [[b"k", b"1"], [b"kx", b"3"]]
    assert via_wire(gcs).rpc_kv_del(c, {"ns": "fn", "key": b"k"}) is True
    assert via_wire(gcs).rpc_kv_del(c, {"ns": "fn", "key": b"k"}) is False
    assert via_wire(gcs).rpc_kv_get(c, {"ns": "fn", "key": b"k"}) is None


def test_kv_compare_and_set(gcs: GcsServer) -> None:
    c: Any = FakeConn()
    assert via_wire(gcs).rpc_kv_put(c, {"key": b"job", "value": b"PENDING", "expect": None}) is True  # absent
    assert via_wire(gcs).rpc_kv_put(c, {"key": b"job", "value": b"X", "expect": None}) is False  # now present
    assert via_wire(gcs).rpc_kv_put(c, {"key": b"job", "value": b"RUNNING", "expect": b"STOPPED"}) is False
    assert via_wire(gcs).rpc_kv_put(c, {"key": b"job", "value": b"RUNNING", "expect": b"PENDING"}) is True
    assert via_wire(gcs).rpc_kv_get(c, {"key": b"job"}) == b"RUNNING"


# ============================================================================ jobs
def test_jobs_are_numbered_and_end_with_their_driver(gcs: GcsServer) -> None:
    driver: Any = FakeConn()
    watcher: Any = FakeConn()
    via_wire(gcs).rpc_subscribe(watcher, {"channels": ["jobs"]})
    first = via_wire(gcs).rpc_register_job(driver, {"pid": 42, "entrypoint": "python x.py"})
    second = via_wire(gcs).rpc_register_job(FakeConn(), {"namespace": "ns"})  # type: ignore[arg-type]
    assert first["job_id"] == b"\x00\x00\x00\x01" and second["job_id"] == b"\x00\x00\x00\x02"
    assert first["namespace"] == "anonymous-00000001" and second["namespace"] == "ns"
    assert first["cluster_id"] == gcs.cluster_id
    actor = {"actor_id": b"a" * 16, "job": first["job_id"], "owner": ["h", 1, b"d"], "place": {"CPU": 1}}
    gcs.actor_manager.core.register(actor)
    driver.close("driver exited")
    job = next(j for j in via_wire(gcs).rpc_get_jobs(driver, None) if j["job_id"] == first["job_id"])
    assert job["status"] == "SUCCEEDED" and job["end_time"] is not None and job["driver_pid"] == 42
    assert ("pub", ["jobs", {"job_id": first["job_id"], "status": "SUCCEEDED"}]) in watcher.notified
    assert gcs.actor_manager.actors[b"a" * 16].death_cause == "its owner (the driver of its job) exited"
    with pytest.raises(ValueError, match="is not running here"):
        via_wire(gcs).rpc_reattach_job(FakeConn(), {"job_id": first["job_id"]})  # type: ignore[arg-type]
    assert via_wire(gcs).rpc_reattach_job(FakeConn(), {"job_id": second["job_id"]}) == {"cluster_id": gcs.cluster_id}  # type: ignore[arg-type]


# ============================================================================ nodes
def test_nodes_join_report_and_die(gcs: GcsServer) -> None:
    watcher: Any = FakeConn()
    via_wire(gcs).rpc_subscribe(watcher, {"channels": ["nodes"]})
    a: Any = FakeConn()
    b: Any = FakeConn()
    reply = via_wire(gcs).rpc_register_node(a, node_info(NODE_A, cluster_id=gcs.cluster_id, gcs_leases=[[b"l", b"w"]]))
    assert reply == {"cluster_id": gcs.cluster_id, "release_leases": [b"l"]}
    via_wire(gcs).rpc_register_node(b, node_info(NODE_B, cpus=4))
    assert [n["Alive"] for n in via_wire(gcs).rpc_get_nodes(a, None)] == [True, True]
    assert watcher.notified[0][1][0] == "nodes"
    # A load report updates what is free; a changed total tells the other nodes at once.
    addresses = via_wire(gcs).rpc_report(a, {"node_id": NODE_A, "available": {"CPU": 0.5}, "total": {"CPU": 3},
                                   "store_used": 10})
    assert [NODE_A, ["127.0.0.1", 7000], {"CPU": 3}, {"CPU": 0.5}] in addresses
    assert ("refresh_view", None) in b.notified
    assert gcs.nodes[NODE_A].to_public()["ObjectStoreUsed"] == 10
    # Stopping on purpose, then a disconnect.
    via_wire(gcs).rpc_unregister_node(a, {"node_id": NODE_A})
    b.close("daemon died")
    public = {n["NodeID"]: n for n in via_wire(gcs).rpc_get_nodes(a, None)}
    assert public[NODE_A.hex()]["DeathReason"] == "its node daemon was stopped"
    assert public[NODE_B.hex()]["DeathReason"] == "its node daemon disconnected"
    assert public[NODE_B.hex()]["Resources"] == {}
    # ember.nodes() keys: Ray's, exactly the declared record's (a new key is a decision, not a drift)
    assert list(public[NODE_A.hex()]) == [
        "NodeID", "Alive", "NodeManagerAddress", "NodeManagerPort", "ObjectManagerPort", "NodeManagerHostname",
        "Resources", "AvailableResources", "ObjectStoreCapacity", "ObjectStoreUsed", "ObjectStoreObjects",
        "ObjectStoreSpilled", "ObjectStoreFallback", "ObjectStoreFallbackObjects", "ObjectStoreDir", "IsHead",
        "MetricsExportPort", "DeathReason", "alive",
    ] == list(NodeRecord.__annotations__)
    assert via_wire(gcs).rpc_get_node_addresses(a, None) == []
    with pytest.raises(ValueError, match="was declared dead"):
        via_wire(gcs).rpc_register_node(FakeConn(), node_info(NODE_A))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="belongs to cluster"):
        via_wire(gcs).rpc_register_node(FakeConn(), node_info(b"C" * 28, cluster_id="elsewhere"))  # type: ignore[arg-type]


def test_log_records_are_numbered_and_a_reconnecting_driver_gets_what_it_missed(gcs: GcsServer) -> None:
    c: Any = FakeConn()
    for i in range(3):
        via_wire(gcs).rpc_publish(c, ["logs", {"lines": [f"line {i}"]}])
    driver: Any = FakeConn()
    via_wire(gcs).rpc_subscribe(driver, {"channels": ["logs"], "logs_after": [gcs.instance, 1]})
    assert [m[1][1]["lines"] for m in driver.notified] == [["line 1"], ["line 2"]]
    other: Any = FakeConn()  # its last record came from an earlier control service: every kept one
    via_wire(gcs).rpc_subscribe(other, {"channels": ["logs"], "logs_after": ["old", 99]})
    assert len(other.notified) == 3
    other.close("gone")
    gcs.publish("logs", {"lines": ["after"]})
    assert len(other.notified) == 3 and len(driver.notified) == 3
    assert via_wire(gcs).rpc_ping(c, None) == "pong" and via_wire(gcs).rpc_cluster_info(c, None)["dashboard_url"] is None


# ============================================================================ storage and restarts
@pytest.mark.parametrize("make", [lambda p: InMemoryStorage(), lambda p: SqliteStorage(str(p / "gcs.sqlite"))])
def test_storage_tables(tmp_path: Path, make: Callable[[Path], Any]) -> None:
    storage = make(tmp_path)
    try:
        assert storage.put("t", b"k1", b"v1") is True
        assert storage.put("t", b"k1", b"v2", overwrite=False) is False
        storage.put("t", b"k2", b"v2")
        storage.put("u", b"k1", b"other table")
        assert storage.get("t", b"k1") == b"v1" and storage.get("t", b"none") is None
        assert sorted(storage.keys("t")) == [b"k1", b"k2"] and storage.keys("t", b"k2") == [b"k2"]
        assert sorted(storage.items("t")) == [(b"k1", b"v1"), (b"k2", b"v2")]
        assert storage.delete("t", b"k1") is True and storage.delete("t", b"k1") is False
    finally:
        storage.close()


def test_open_storage_urls(tmp_path: Path) -> None:
    assert isinstance(open_storage("memory://"), InMemoryStorage)
    sqlite = open_storage(f"sqlite:///{tmp_path}/s.db")
    assert isinstance(sqlite, SqliteStorage)
    sqlite.close()
    with pytest.raises(ValueError, match="unknown storage"):
        open_storage("ftp://nowhere")


def test_a_restarted_control_service_resumes_from_its_storage(tmp_path: Path) -> None:
    async def main() -> None:
        storage = SqliteStorage(str(tmp_path / "gcs.sqlite"))
        first = GcsServer(str(tmp_path), "token", storage)
        driver: Any = FakeConn()
        job = via_wire(first).rpc_register_job(driver, {})
        via_wire(first).rpc_register_node(FakeConn(), node_info(NODE_A))  # type: ignore[arg-type]
        via_wire(first).rpc_kv_put(driver, {"ns": "fn", "key": b"f", "value": b"code"})
        via_wire(first).rpc_register_actor(driver, {"actor_id": b"a" * 16, "job": job["job_id"], "name": "svc",
                                          "fid": b"f", "class_name": "Svc", "args": [], "kw": [],
                                          "owner": ["h", 1, b"d"], "detached": True, "place": {"CPU": 1}})
        via_wire(first).rpc_create_placement_group(driver, {"pg_id": b"p" * 18, "bundles": [{"CPU": 1}],
                                                  "strategy": "PACK", "name": "g"})
        await first.stop()

        second = GcsServer(str(tmp_path), "token", storage)
        second.start()
        try:
            assert second.cluster_id == first.cluster_id and second.restarted
            assert via_wire(second).rpc_kv_get(driver, {"ns": "fn", "key": b"f"}) == b"code"
            assert via_wire(second).rpc_get_jobs(driver, None)[0]["status"] == "RUNNING"
            assert via_wire(second).rpc_get_named_actor(driver, {"name": "svc"})["state"] == "PENDING_CREATION"  # type: ignore[index]
            assert via_wire(second).rpc_get_placement_group(driver, {"name": "g"})["state"] == "PENDING"  # type: ignore[index]
            assert second.nodes[NODE_A].alive  # until it misses the heartbeat deadline
            assert via_wire(second).rpc_register_job(driver, {})["job_id"] == b"\x00\x00\x00\x02"  # the counter survived
            assert db.unpack(storage.get("nodes", NODE_A) or b"")["node_id"] == NODE_A
        finally:
            await second.stop()
            storage.close()

    asyncio.run(main())
