"""The control service: one per cluster, never on the task or object path.

It owns the node table (who is in the cluster, their resources and load),
the job table, a namespaced key-value store (exported functions) and
pub/sub channels (``logs``, ``nodes``, ``errors``). A node is alive while
its connection is open and its heartbeats arrive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Any, cast

import msgspec

from ember._private import ids
from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember._private.state_filters import check_filters
from ember._private.waiting import wait_event
from ember.gcs import metrics_discovery
from ember.gcs import persistence as db
from ember.gcs.actor_manager import ActorManager
from ember.gcs.autoscaler_state import AutoscalerState
from ember.gcs.placement_groups import PlacementGroupManager
from ember.gcs.storage import InMemoryStorage
from ember.gcs.task_events import TASK_FIELDS, TaskEventStore
from ember.protocol import Service
from ember.protocol import gcs as msg
from ember.rpc import Connection

logger = logging.getLogger(__name__)

#: Log records kept for drivers that reconnect after missing some (a restart of this
#: service, or of the driver's connection): the newest this many.
RECENT_LOG_RECORDS = 5000


class NodeEntry:
    def __init__(self, info: dict[str, Any], conn: Connection | None) -> None:
        self.info = info
        self.conn = conn
        self.alive = True
        self.available: dict[str, float] = dict(info["resources"])
        self.store_used = 0
        self.store_objects = 0
        self.store_spilled = 0
        #: Bytes and objects in fallback files on disk (objects the store could not take).
        self.store_fallback = 0
        self.store_fallback_objects = 0
        self.last_heartbeat = time.monotonic()
        self.death_reason = ""
        #: ``[[shape, count], ...]`` of the lease requests queued there, and seconds it has been idle.
        self.demand: list[list[Any]] = []
        self.idle_s = 0.0
        #: An autoscaler is about to end it: no new work is sent there (see rpc_drain_node).
        self.draining = False

    def to_public(self) -> msg.NodeRecord:
        info = self.info
        return {
            "NodeID": info["node_id"].hex(),
            "Alive": self.alive,
            "NodeManagerAddress": info["address"][0],
            "NodeManagerPort": info["address"][1],
            "ObjectManagerPort": info.get("transfer_port") or info["address"][1],
            "NodeManagerHostname": info.get("hostname", ""),
            "Resources": dict(info["resources"]) if self.alive else {},
            "AvailableResources": dict(self.available) if self.alive else {},
            "ObjectStoreCapacity": info.get("store_capacity", 0),
            "ObjectStoreUsed": self.store_used,
            "ObjectStoreObjects": self.store_objects,
            "ObjectStoreSpilled": self.store_spilled,
            "ObjectStoreFallback": self.store_fallback,
            "ObjectStoreFallbackObjects": self.store_fallback_objects,
            "ObjectStoreDir": info.get("store_dir", ""),
            "IsHead": bool(info.get("is_head")),
            "MetricsExportPort": info.get("metrics_export_port", 0),
            "DeathReason": self.death_reason,
            "alive": self.alive,
        }


class ChangeSignal:
    """Wakes every waiter at the next change of the node table (a join, a death, a load report)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until the next change, or ``timeout`` seconds (a backstop: the caller looks again anyway)."""
        await wait_event(self._event, timeout)


class GcsServer:
    #: The methods this object serves (``ember.protocol.gcs``): requests arrive decoded.
    protocol_service = Service.GCS

    def __init__(self, session_dir: str, token: str, storage: Any = None) -> None:
        self.session_dir = session_dir
        self.token = token
        self.storage = storage if storage is not None else InMemoryStorage()
        stored_id = self.storage.get("meta", b"cluster_id")
        self.cluster_id = stored_id.decode() if stored_id else os.urandom(8).hex()
        if not stored_id:
            self.storage.put("meta", b"cluster_id", self.cluster_id.encode())
        self.nodes: dict[bytes, NodeEntry] = {}
        self.jobs: dict[bytes, msg.JobRecord] = {}
        self._job_conns: dict[bytes, Connection] = {}
        stored_next = self.storage.get("meta", b"next_job")
        self._next_job = int(stored_next) if stored_next else 1
        self.subscribers: dict[str, set[Connection]] = {}
        #: This process's id in log records (with a sequence number), so a reconnecting driver
        #: can ask for exactly the records it missed.
        self.instance = os.urandom(4).hex()
        self._log_seq = 0
        self.recent_logs: deque[dict[str, Any]] = deque(maxlen=RECENT_LOG_RECORDS)
        #: Every background task of the control service and its managers.
        self.background = BackgroundTasks("control service")
        #: Placement groups and actors waiting for room wait on this instead of polling.
        self.cluster_changed = ChangeSignal()
        self.actor_manager = ActorManager(self)
        #: Task events of every process, for the state API (bounded per job).
        self.task_events = TaskEventStore(config().task_events_max_tasks_per_job)
        self.pg_manager = PlacementGroupManager(self)
        self.autoscaler = AutoscalerState(self)
        self._oom_details: dict[bytes, str] = {}
        self.restarted = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._restore()
        metrics_discovery.write_prometheus_config(self.session_dir)
        self._write_metrics_discovery()
        self.background.spawn(self._health_loop(), "health checks", loop=loop)

    def _restore(self) -> None:
        """Load what a previous control service on this storage acknowledged."""
        nodes = self.storage.items("nodes")
        for _, data in nodes:
            info = db.unpack(data)
            entry = NodeEntry(info, None)
            if info.get("dead"):
                entry.alive = False
                entry.death_reason = info.get("death_reason", "")
            # A live node stays alive until it misses the heartbeat deadline: it should reconnect by then.
            self.nodes[info["node_id"]] = entry
        for _, data in self.storage.items("jobs"):
            job = cast(msg.JobRecord, db.unpack(data))  # as persist_job wrote it
            self.jobs[job["job_id"]] = job
        self.restarted = bool(nodes or self.jobs)
        if self.restarted:
            logger.info("restored %d nodes and %d jobs from storage", len(self.nodes), len(self.jobs))
            loop = asyncio.get_running_loop()
            grace = config().node_death_timeout_s
            for job_id, stored in self.jobs.items():
                if stored["status"] == "RUNNING":
                    loop.call_later(grace, self._job_not_reattached, job_id)
        self.actor_manager.restore()
        self.pg_manager.restore()

    def _job_not_reattached(self, job_id: bytes) -> None:
        if job_id not in self._job_conns:
            logger.info("the driver of job %s did not come back after the restart", job_id.hex())
            self._job_finished(job_id)

    def persist_job(self, job: msg.JobRecord) -> None:
        self.storage.put("jobs", job["job_id"], db.pack(job))

    def persist_node(self, entry: NodeEntry) -> None:
        record = dict(entry.info)
        if not entry.alive:
            record["dead"] = True
            record["death_reason"] = entry.death_reason
        self.storage.put("nodes", entry.info["node_id"], db.pack(record))

    async def stop(self) -> None:
        await self.background.close(config().process_stop_timeout_s)

    # -------------------------------------------------------------- pub/sub
    def publish(self, channel: str, data: Any) -> None:
        if channel == "logs" and isinstance(data, dict):
            self._log_seq += 1
            data = {**data, "gcs": self.instance, "seq": self._log_seq}
            self.recent_logs.append(data)
        for conn in list(self.subscribers.get(channel, ())):
            conn.notify("pub", [channel, data])

    def rpc_subscribe(self, conn: Connection, p: msg.Subscribe) -> bool:
        """Subscribe to ``p.channels``.

        With ``logs_after`` (a reconnecting driver: the last log record it printed, or None),
        the log records it missed are sent first: those after it from this process, or every
        kept one if it came from an earlier process (records published since this one started).
        """
        channels = p.channels
        for channel in channels:
            self.subscribers.setdefault(channel, set()).add(conn)
        conn.add_close_callback(self._drop_subscriber)
        if "logs" in channels and p.logs_after is not msgspec.UNSET:
            instance, seq = p.logs_after or (None, 0)
            after = seq if instance == self.instance else 0
            for record in self.recent_logs:
                if record["seq"] > after:
                    conn.notify("pub", ["logs", record])
        return True

    def _drop_subscriber(self, conn: Connection) -> None:
        for subs in self.subscribers.values():
            subs.discard(conn)

    def rpc_publish(self, conn: Connection, p: msg.Publication) -> None:
        self.publish(p.channel, p.data)

    # ---------------------------------------------------------------- nodes
    def rpc_register_node(self, conn: Connection, p: msg.RegisterNode) -> msg.RegisterNodeReply:
        node_id = p.node_id
        if p.cluster_id and p.cluster_id != self.cluster_id:
            raise ValueError(
                f"this node belongs to cluster {p.cluster_id}, but this control service runs cluster "
                f"{self.cluster_id}; start the node again with the right --address to join this cluster"
            )
        known = self.nodes.get(node_id)
        if known is not None and not known.alive:
            # A node declared dead must not come back and deliver stale results.
            raise ValueError(
                f"node {node_id.hex()[:12]} was declared dead ({known.death_reason}); "
                "restart it so that it joins as a new node"
            )
        info = p.node_record()
        entry = NodeEntry(info, conn)
        self.nodes[node_id] = entry
        self.persist_node(entry)
        release = self.actor_manager.on_node_reconnected(node_id, p.gcs_leases)
        conn.state["node_id"] = node_id
        conn.add_close_callback(lambda c: self._node_disconnected(node_id, c))
        logger.info("node %s joined at %s", node_id.hex()[:12], info["address"])
        self.publish("nodes", entry.to_public())
        self.cluster_changed.notify()
        self._write_metrics_discovery()
        self.autoscaler.on_node_registered(conn)
        return msg.RegisterNodeReply(cluster_id=self.cluster_id, release_leases=release)

    def _node_disconnected(self, node_id: bytes, conn: Connection) -> None:
        entry = self.nodes.get(node_id)
        if entry is not None and entry.conn is conn and entry.alive:
            self._mark_node_dead(entry, "its node daemon disconnected")

    def rpc_unregister_node(self, conn: Connection, p: msg.NodeId) -> None:
        """A node daemon stopping on purpose leaves the cluster before it closes its connection."""
        entry = self.nodes.get(p.node_id)
        if entry is not None and entry.conn is conn and entry.alive:
            self._mark_node_dead(entry, "its node daemon was stopped", expected=True)

    def _mark_node_dead(self, entry: NodeEntry, reason: str, expected: bool = False) -> None:
        entry.alive = False
        entry.death_reason = reason
        self.persist_node(entry)
        # A node stopped on purpose is news, not a problem: only an unexpected death warns.
        level = logging.INFO if expected else logging.WARNING
        logger.log(level, "node %s is dead: %s", entry.info["node_id"].hex()[:12], reason)
        self.publish("nodes", entry.to_public())
        self._write_metrics_discovery()
        self.actor_manager.on_node_died(entry.info["node_id"], reason)
        self.pg_manager.on_node_died(entry.info["node_id"])
        self.cluster_changed.notify()

    def _write_metrics_discovery(self) -> None:
        """Prometheus's list of every live node's metrics port (joins and deaths change it)."""
        metrics_discovery.write_discovery(self.session_dir, [e.to_public() for e in self.nodes.values()])

    def rpc_report(self, conn: Connection, report: msg.LoadReport) -> list[list[Any]]:
        """A node's load report (its heartbeat); the reply is every live node's load."""
        entry = self.nodes.get(report.node_id)
        if entry is not None and entry.alive:
            entry.available = report.available
            if report.total is not None and report.total != entry.info["resources"]:
                entry.info["resources"] = report.total
                # Node shapes changed (placement-group bundles): let every node see it now.
                self.persist_node(entry)
                for other in self.nodes.values():
                    if other is not entry and other.alive and other.conn is not None:
                        other.conn.notify("refresh_view", None)
            entry.store_used = report.store_used
            entry.store_objects = report.store_objects
            entry.store_spilled = report.store_spilled
            entry.store_fallback = report.store_fallback
            entry.store_fallback_objects = report.store_fallback_objects
            entry.last_heartbeat = time.monotonic()
            self.autoscaler.on_load_report(entry, [list(row) for row in report.demand], report.idle_s)
            self.cluster_changed.notify()
        return self.rpc_get_node_addresses(conn, None)

    def rpc_get_nodes(self, conn: Connection, p: None) -> list[msg.NodeRecord]:
        return [entry.to_public() for entry in self.nodes.values()]

    def rpc_get_node_addresses(self, conn: Connection, p: None) -> list[list[Any]]:
        return [
            [nid, e.info["address"], e.info["resources"], e.available]
            for nid, e in self.nodes.items()
            if e.alive and not e.draining
        ]

    async def _health_loop(self) -> None:
        cfg = config()
        timeout = cfg.node_death_timeout_s
        while True:
            await asyncio.sleep(min(cfg.heartbeat_period_s, timeout / 4))
            now = time.monotonic()
            for entry in list(self.nodes.values()):
                if entry.alive and now - entry.last_heartbeat > timeout:
                    self._mark_node_dead(entry, f"no heartbeat for {timeout:g}s")
                    if entry.conn is not None:
                        entry.conn.close("missed heartbeats")

    # ----------------------------------------------------------------- jobs
    def rpc_register_job(self, conn: Connection, p: msg.RegisterJob) -> msg.RegisterJobReply:
        job_id = ids.job_id_from_int(self._next_job)
        self._next_job += 1
        self.storage.put("meta", b"next_job", str(self._next_job).encode())
        namespace = p.namespace or f"anonymous-{job_id.hex()}"
        entry: msg.JobRecord = {
            "job_id": job_id,
            "namespace": namespace,
            "driver_pid": p.pid,
            "driver_address": list(p.address) if p.address is not None else None,
            "start_time": time.time(),
            "end_time": None,
            "status": "RUNNING",
            "entrypoint": p.entrypoint,
            "submission_id": p.submission_id,
        }
        self.jobs[job_id] = entry
        self.persist_job(entry)
        self._attach_job(job_id, conn)
        return msg.RegisterJobReply(job_id=job_id, namespace=namespace, cluster_id=self.cluster_id)

    def _attach_job(self, job_id: bytes, conn: Connection) -> None:
        self._job_conns[job_id] = conn

        def closed(c: Connection) -> None:
            if self._job_conns.get(job_id) is c:
                del self._job_conns[job_id]
                self._job_finished(job_id)

        conn.add_close_callback(closed)

    def warn_job(self, job_id: bytes | None, message: str) -> None:
        """Show ``message`` to the driver of ``job_id`` (if it is connected)."""
        conn = self._job_conns.get(job_id) if job_id else None
        if conn is not None and not conn.closed:
            conn.notify("cluster_warning", {"message": message})

    def rpc_reattach_job(self, conn: Connection, p: msg.JobId) -> msg.ClusterIdReply:
        """A driver reconnecting after a control-service restart."""
        job = self.jobs.get(p.job_id)
        if job is None or job["status"] != "RUNNING":
            raise ValueError(f"job {p.job_id.hex()} is not running here")
        self._attach_job(p.job_id, conn)
        return msg.ClusterIdReply(cluster_id=self.cluster_id)

    def _job_finished(self, job_id: bytes) -> None:
        entry = self.jobs.get(job_id)
        if entry is not None and entry["status"] == "RUNNING":
            entry["status"] = "SUCCEEDED"
            entry["end_time"] = time.time()
            self.persist_job(entry)
            self.publish("jobs", {"job_id": job_id, "status": entry["status"]})
            self.actor_manager.on_job_finished(job_id)
            self.pg_manager.on_job_finished(job_id)
            from ember.gcs import package_gc

            package_gc.collect(self)

    def rpc_get_jobs(self, conn: Connection, p: None) -> list[msg.JobRecord]:
        return list(self.jobs.values())

    # --------------------------------------------------------------- actors
    def rpc_register_actor(self, conn: Connection, spec: msg.ActorCreationSpec) -> dict[str, Any]:
        return self.actor_manager.register(spec.record())

    def rpc_get_named_actor(self, conn: Connection, p: msg.NamedLookup) -> msg.ActorRecord | None:
        return self.actor_manager.get_named(p.name, p.namespace or "")

    async def rpc_wait_actor(self, conn: Connection, p: msg.WaitActor) -> msg.ActorWaitReply:
        return await self.actor_manager.wait(p.actor_id, p.after)

    def rpc_kill_actor(self, conn: Connection, p: msg.KillActor) -> bool:
        cause = p.cause or "it was killed with ember.kill()"
        return self.actor_manager.kill(p.actor_id, p.no_restart, cause)

    def rpc_worker_died(self, conn: Connection, p: msg.WorkerDied) -> None:
        detail = self._oom_details.pop(p.worker_id, None) or p.detail
        self.actor_manager.on_worker_died(p.worker_id, detail)

    def rpc_worker_oom_killed(self, conn: Connection, p: msg.WorkerOomKilled) -> None:
        self._oom_details[p.worker_id] = "it ran out of memory: " + p.detail

    # ------------------------------------------------------ placement groups
    def rpc_create_placement_group(self, conn: Connection, spec: msg.CreatePlacementGroup) -> msg.PlacementGroupCreated:
        return self.pg_manager.create(msgspec.structs.asdict(spec))

    async def rpc_remove_placement_group(self, conn: Connection, p: msg.PlacementGroupId) -> bool:
        return await self.pg_manager.remove(p.pg_id)

    async def rpc_wait_placement_group(self, conn: Connection, p: msg.PlacementGroupId) -> str:
        return await self.pg_manager.wait_ready(p.pg_id)

    def rpc_placement_group_table(self, conn: Connection, p: None) -> dict[str, msg.PlacementGroupRecord]:
        return self.pg_manager.table()

    def rpc_get_placement_group(self, conn: Connection, p: msg.NamedLookup) -> msg.PlacementGroupRecord | None:
        return self.pg_manager.get_by_name(p.name, p.namespace or "")

    def rpc_infeasible(self, conn: Connection, p: msg.Infeasible) -> None:
        logger.warning("an actor cannot be placed: %s", p.message)

    def rpc_list_actors(self, conn: Connection, p: None) -> list[msg.ActorRecord]:
        return [entry.public() for entry in self.actor_manager.actors.values()]

    def rpc_list_named_actors(self, conn: Connection, p: msg.ListNamedActors) -> list[msg.NamedActorRow]:
        return [
            msg.NamedActorRow(name=name, namespace=ns)
            for (ns, name) in self.actor_manager.named
            if p.all_namespaces or ns == p.namespace
        ]

    # ------------------------------------------------------------------- KV
    def rpc_kv_put(self, conn: Connection, p: msg.KvPut) -> bool:
        """Write a KV entry. With ``expect`` (bytes, or None for "absent") it is a
        compare-and-set: written only if the current value is ``expect``; the reply says
        whether it was (one loop, so no other write comes between the read and the write)."""
        table = "kv:" + p.ns
        if p.expect is not msgspec.UNSET and self.storage.get(table, p.key) != p.expect:
            return False
        return self.storage.put(table, p.key, p.value, p.overwrite)

    def rpc_kv_get(self, conn: Connection, p: msg.KvKey) -> bytes | None:
        return self.storage.get("kv:" + p.ns, p.key)

    def rpc_kv_del(self, conn: Connection, p: msg.KvKey) -> bool:
        return self.storage.delete("kv:" + p.ns, p.key)

    def rpc_kv_keys(self, conn: Connection, p: msg.KvPrefix) -> list[bytes]:
        return self.storage.keys("kv:" + p.ns, p.prefix)

    def rpc_kv_items(self, conn: Connection, p: msg.KvPrefix) -> list[list[bytes]]:
        """Every ``[key, value]`` of a namespace whose key starts with ``prefix`` (one round trip)."""
        prefix = p.prefix
        return [[k, v] for k, v in self.storage.items("kv:" + p.ns) if k.startswith(prefix)]

    # ---------------------------------------------------------- task events
    def rpc_add_task_events(self, conn: Connection, batch: msg.TaskEventBatch) -> None:
        self.task_events.add_batch(batch)

    def rpc_list_tasks(self, conn: Connection, p: msg.ListTasks) -> msg.TaskListing:
        """``{filters: [[key, "="|"!=", value]], limit, detail}`` -> matches (newest first) and counts."""
        filters = check_filters(p.filters, TASK_FIELDS)
        if p.limit < 0:
            raise ValueError(f"limit must be >= 0, got {p.limit}")
        return self.task_events.list(filters, min(p.limit, config().state_api_max_limit), p.detail)

    def rpc_summarize_tasks(self, conn: Connection, p: None) -> msg.TaskSummary:
        return self.task_events.summary()

    def rpc_task_counts_by_state(self, conn: Connection, p: None) -> dict[str, int]:
        return self.task_events.counts_by_state()

    def rpc_task_executions(self, conn: Connection, p: msg.TaskExecutions) -> list[list[Any]]:
        """Recorded executions still running or ended after ``since`` (seconds; optional ``job_id``):
        ``[task_id, name, job_id, node_id, worker_id, pid, start_s, end_s, state]``."""
        return [
            [r.task_id, r.name, r.job_id, r.node, r.worker, r.pid, r.start, r.end, r.state]
            for r in self.task_events.executions(p.since or 0.0, p.job_id)
        ]

    # ----------------------------------------------------------- autoscaling
    async def rpc_get_cluster_demand(self, conn: Connection, p: msg.ClusterDemand | None) -> msg.ClusterDemandReply:
        """Live nodes (with ``IdleSeconds``), queued task/actor shapes, pending groups, requests.

        With ``{"wait_s": s}`` it first waits until a node reports new queued demand, or ``s``
        seconds (the autoscaler's period: it reacts to new demand at once without polling fast)."""
        wait_s = p.wait_s if p is not None else None
        if wait_s is not None and wait_s > 0:
            await self.autoscaler.wait_for_demand(min(wait_s, config().autoscaler_max_demand_wait_s))
        return self.autoscaler.cluster_demand()

    def rpc_drain_node(self, conn: Connection, p: msg.DrainNode) -> bool:
        """Stop (``drain``) or resume sending work to a node an autoscaler is about to end.

        Draining is refused (False) while the node has work (its last report was not idle). A drained
        node leaves every node daemon's view (their next report) and actor and group placement."""
        entry = self.nodes.get(p.node_id)
        if entry is None or not entry.alive:
            return False
        if p.drain and (entry.idle_s <= 0 or entry.demand):
            return False
        entry.draining = p.drain
        for other in self.nodes.values():
            if other.alive and other.conn is not None and other is not entry:
                other.conn.notify("refresh_view", None)
        return True

    def rpc_request_resources(self, conn: Connection, p: msg.RequestResources) -> None:
        self.autoscaler.request_resources(p.bundles)

    def rpc_autoscaler_report(self, conn: Connection, p: msg.AutoscalerReport) -> None:
        self.autoscaler.report({"status": p.status, "launchable": p.launchable})
        if not conn.state.get("autoscaler"):
            # Gone autoscaler, no node types: requests no node fits are infeasible again.
            conn.state["autoscaler"] = True
            pid = (p.status or {}).get("pid")
            conn.add_close_callback(lambda c: self.autoscaler.autoscaler_gone(pid if isinstance(pid, int) else None))

    def rpc_get_autoscaler_status(self, conn: Connection, p: None) -> msg.AutoscalerStatus | None:
        return self.autoscaler.status()

    # --------------------------------------------------------------- status
    def rpc_cluster_info(self, conn: Connection, p: None) -> msg.ClusterInfo:
        url = self.storage.get("kv:dashboard", b"dashboard_url")
        return msg.ClusterInfo(
            cluster_id=self.cluster_id, session_dir=self.session_dir, pid=os.getpid(),
            dashboard_url=url.decode() if url else None,
        )

    def rpc_ping(self, conn: Connection, p: None) -> str:
        return "pong"
