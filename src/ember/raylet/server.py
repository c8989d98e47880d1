"""The node daemon: one per node, assembled from components.

It holds the node's resources and grants worker leases, runs the worker
pool, accounts for the shared-memory object store, tails worker logs, and
reports its load to the control service. It never runs user code and never
unpickles anything.

``Raylet`` only wires the components together (each owns its state and gets
its dependencies explicitly), registers their RPC methods, and starts and
stops them in order::

    LeaseService ── LeaseTable (sans-I/O: requests, leases, resources, bundles)
         │   └──── ClusterView (other nodes; the placement policy decides on it)
         └──────── WorkerService ── WorkerPool, LogMonitor, memory monitor
    ObjectService ── ObjectStore, Spiller, ObjectManager, RayletPeers
    NodeReporter (load reports) ── ControlServiceLink (join, notify, rejoin)
    MetricsService, ClientRegistry, RuntimeEnvAgent, TransferServer
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from ember._private import ids
from ember._private import resources as res
from ember._private.config import config
from ember._private.processes import host_memory, raise_fd_limit, resident_bytes
from ember.protocol import Service
from ember.protocol import raylet as msg
from ember.raylet import log_files
from ember.raylet import scheduling_policy as policy
from ember.raylet.clients import ClientRegistry
from ember.raylet.cluster_view import ClusterView
from ember.raylet.control_link import ControlServiceLink
from ember.raylet.lease_service import LeaseService
from ember.raylet.lease_table import LeaseTable
from ember.raylet.metrics_service import MetricsService
from ember.raylet.node import NodeContext
from ember.raylet.node_reporting import NodeReporter
from ember.raylet.object_service import ObjectService, RayletPeers
from ember.raylet.object_store import ObjectStore
from ember.raylet.object_transfer import TransferServer
from ember.raylet.runtime_env_agent import RuntimeEnvAgent
from ember.raylet.spilling import Spiller
from ember.raylet.worker_launcher import ZygoteLauncher
from ember.raylet.worker_pool import WorkerPool
from ember.raylet.worker_service import WorkerService
from ember.rpc import Connection, start_server
from ember.rpc.handlers import RpcHandlers
from ember.runtime_env.process_context import resources_dir

logger = logging.getLogger(__name__)


class RayletOptions:
    def __init__(self, **kw: Any) -> None:
        self.session_dir: str = kw["session_dir"]
        self.gcs_address: str = kw["gcs_address"]
        self.node_ip: str = kw.get("node_ip") or "127.0.0.1"
        self.port: int = kw.get("port") or 0
        self.listen_fd: int = kw.get("listen_fd", -1)
        self.resources: dict[str, float] = kw["resources"]
        self.store_capacity: int = kw["store_capacity"]
        self.store_dir: str = kw["store_dir"]
        self.node_id: bytes = kw.get("node_id") or ids.random_unique_id()
        self.is_head: bool = kw.get("is_head", False)
        self.metrics_export_port: int = kw.get("metrics_export_port") or 0
        self.metrics_listen_fd: int = kw.get("metrics_listen_fd", -1)
        #: The fork server, when ``main`` started it already (``None``: the node starts one).
        self.fork_server: ZygoteLauncher | None = kw.get("fork_server")


class Raylet:
    def __init__(self, opts: RayletOptions, token: str, stop_event: asyncio.Event | None = None) -> None:
        self.opts = opts
        #: Set to stop the daemon (the control service refused it or did not come back).
        self.stop_event = stop_event or asyncio.Event()
        node = self.node = NodeContext(opts.node_id, opts.node_ip, opts.session_dir, opts.gcs_address, token, opts.is_head)
        self.handlers = RpcHandlers(Service.RAYLET)
        cfg = config()
        num_cpus = int(opts.resources.get("CPU", 0))
        prestart = num_cpus if cfg.num_prestart_workers < 0 else cfg.num_prestart_workers
        max_workers = cfg.max_workers if cfg.max_workers > 0 else 4 * max(num_cpus, 1) + 8
        startup = cfg.worker_maximum_startup_concurrency

        # ---- objects
        fallback_root = cfg.object_store_fallback_directory or os.path.join(opts.session_dir, "fallback")
        self.store = ObjectStore(
            opts.store_dir, opts.store_capacity,
            fallback_dir=os.path.join(fallback_root, f"ember_fallback_{node.short_id}"),
            fallback_max_bytes=cfg.object_store_fallback_max_bytes,
            fallback_min_free_bytes=cfg.object_store_fallback_min_free_bytes,
        )
        self.spiller = Spiller(self.store, self._spill_location(), cfg.object_spilling_threshold, node.background)
        self.clients = ClientRegistry(self.store, self.client_info)
        self.view = ClusterView(
            node, policy.PolicyConfig(cfg.scheduler_spread_threshold, cfg.scheduler_top_k_fraction,
                                      cfg.scheduler_top_k_absolute),
            on_change=lambda: self.leases.rebalance(), on_node_death=lambda address: self.objects.node_died(address),
        )
        self.objects = ObjectService(node, self.store, self.spiller, RayletPeers(node, self.handlers), self.clients, self.view)

        # ---- leases and workers
        self.link = ControlServiceLink(
            node, self.handlers, self.node_info,
            leases_held_by=lambda conn: self.leases.leases_held_by(conn),
            on_rejoined=lambda old, new, release: self.leases.rejoined(old, new, release),
            on_lost_for_good=self.stop_event.set,
        )
        self.pool = WorkerPool(os.path.join(opts.session_dir, "logs"), {}, max_workers)
        self.pool.startup_concurrency = startup if startup > 0 else max(4, 2 * num_cpus)
        self.table = LeaseTable(node.node_id, res.to_fixed(opts.resources), self.pool,
                                node_label=node.label, max_actor_workers=cfg.max_actor_workers)
        self.renv_agent = RuntimeEnvAgent(resources_dir(opts.session_dir), lambda: self.link.conn, self._schedule)
        self.reporter = NodeReporter(node, self.link, self.table, self.store, self.pool, self.view,
                                     on_view=lambda: self.leases.on_view())
        self.workers = WorkerService(node, self.pool, self.table, self.renv_agent, self.store, self.clients,
                                     self.link, prestart, self._schedule, self.reporter.report_now)
        self.leases = LeaseService(node, self.table, self.workers, self.view, self.renv_agent, self.link,
                                   self.reporter.report_now, fd_limit=raise_fd_limit())
        self.metrics = MetricsService(node, self.table, self.store, self.pool, self.clients, self.link,
                                      opts.metrics_listen_fd, opts.metrics_export_port)
        self.transfer: TransferServer | None = None
        self._server: asyncio.AbstractServer | None = None
        for component in (self, self.clients, self.view, self.objects, self.reporter, self.workers, self.leases,
                          self.metrics):
            self.handlers.register(component)

    def _spill_location(self) -> str:
        spilling_dir = config().object_spilling_directory
        if spilling_dir:
            # A folder of this node's own inside the user's location: the node deletes it when it
            # stops, and never touches anything else there (other nodes may share the location).
            return f"{spilling_dir.rstrip('/')}/ember_spilled_objects_{self.node.short_id}"
        return os.path.join(self.opts.session_dir, "spill", self.node.short_id)

    def _schedule(self) -> None:
        self.leases.schedule()

    # ================================================================ start/stop
    async def start(self) -> None:
        opts, node = self.opts, self.node
        sock = socket.socket(fileno=opts.listen_fd) if opts.listen_fd >= 0 else None
        self.transfer = TransferServer(opts.node_ip, node.token, self.objects.sealed_path)
        self._server = await start_server(
            self.handlers, node.token, opts.node_ip, opts.port, sock=sock,
            info={"role": "raylet", "node_id": node.node_id, "transfer_port": self.transfer.port},
            on_close=self._on_disconnect,
        )
        port: int = self._server.sockets[0].getsockname()[1]
        node.address = [opts.node_ip, port]
        await self.metrics.start()
        self.workers.start({
            "EMBER_RAYLET_ADDRESS": f"{opts.node_ip}:{port}",
            "EMBER_GCS_ADDRESS": opts.gcs_address,
            "EMBER_NODE_ID": node.node_id.hex(),
            "EMBER_NODE_IP": opts.node_ip,
            "EMBER_SESSION_DIR": opts.session_dir,
            "EMBER_STORE_DIR": opts.store_dir,
            "EMBER_TOKEN": node.token,
            "EMBER_RAYLET_PID": str(os.getpid()),
        }, fork_server=opts.fork_server)
        await self.link.join()
        for loop_coro, name in ((self.reporter.run(), "load reports"), (self.workers.log_loop(), "log tailing"),
                                (self._housekeeping_loop(), "worker reaping"),
                                (self.workers.memory_loop(), "memory monitor")):
            node.background.spawn(loop_coro, name)
        logger.info("node daemon %s listening on %s:%d", node.short_id, opts.node_ip, port)

    async def stop(self) -> None:
        self.node.stopping = True
        if self.transfer is not None:
            self.transfer.stop()
        await self.node.background.close(config().process_stop_timeout_s)
        if self._server is not None:
            self._server.close()
        await self.metrics.stop()
        await self.renv_agent.stop()
        self.workers.stop()
        self.objects.stop()
        # Its workers are gone: leave the cluster, so the control service records a stop, not a death.
        await self.link.leave()

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(config().worker_reap_period_s)
            self.objects.close_idle_owner_watches()
            await self.workers.housekeeping()

    def node_info(self) -> dict[str, Any]:
        return {
            "node_id": self.node.node_id,
            "address": self.node.address,
            "resources": res.to_float(self.table.total),
            "store_capacity": self.store.capacity,
            "store_dir": self.store.directory,
            "transfer_port": self.transfer.port if self.transfer else 0,
            "hostname": socket.gethostname(),
            "is_head": self.node.is_head,
            "pid": os.getpid(),
            "metrics_export_port": self.metrics.port,
        }

    def client_info(self) -> msg.NodeIdentity:
        return {
            "node_id": self.node.node_id,
            "raylet_address": (self.node.address[0], self.node.address[1]),
            "store_dir": self.store.directory,
            "session_dir": self.opts.session_dir,
            "gcs_address": self.opts.gcs_address,
            "node_ip": self.opts.node_ip,
            "resources": res.to_float(self.table.total),
        }

    # ================================================================ connections
    def _on_disconnect(self, conn: Connection) -> None:
        worker = conn.state.get("worker")
        if worker is not None:
            self.workers.worker_died(worker)
        client_id = self.clients.forget(conn)
        if client_id is not None:
            self.objects.free_owned(client_id)  # with the copies other nodes made
        # Lease requests and leases of a departed holder.
        self.leases.holder_gone(conn)
        self._schedule()

    # ================================================================ RPC: the node as a whole
    def rpc_get_info(self, conn: Connection, p: None) -> msg.NodeInfo:
        workers: list[msg.WorkerRow] = [
            {
                "worker_id": w.worker_id, "pid": w.pid, "state": w.state.value,
                "rss": resident_bytes(w.pid),
                "log_files": [os.path.basename(w.out_path), os.path.basename(w.err_path)],
            }
            for w in self.pool.alive()
        ]
        # For the dashboard: this node's own processes and its host's memory.
        zygote = getattr(getattr(self.pool.launcher, "proc", None), "pid", None)
        processes: list[msg.ProcessRow] = [{"name": "node daemon", "pid": os.getpid(), "rss": resident_bytes(os.getpid())}]
        if zygote:
            processes.append({"name": "fork server", "pid": zygote, "rss": resident_bytes(zygote)})
        return {
            **self.client_info(),
            "available": res.to_float(self.table.available), "store": self.store.stats(), "workers": workers,
            "processes": processes, "host_memory": host_memory(),
        }

    def rpc_task_counts(self, conn: Connection, p: None) -> list[list[Any]]:
        """Tasks by name, state and job as this node's processes last reported them (``ray_tasks``):
        ``[name, state, is_retry, source, job id, count]`` rows, for the dashboard's progress bars."""
        return [row for rows in self.metrics.task_counts.values() for row in rows]

    def rpc_list_logs(self, conn: Connection, p: msg.ListLogs | None) -> list[list[Any]]:
        """This node's log files ``[[name, size], ...]`` (``glob`` filters names)."""
        return log_files.list_files(self.workers.pool.logs_dir, p.glob if p is not None else None)

    def rpc_read_log(self, conn: Connection, p: msg.ReadLog) -> msg.LogChunk:
        """A chunk of one log file (``name``, ``offset``, ``max_bytes``); names outside logs/ are refused."""
        return log_files.read(self.workers.pool.logs_dir, p.name, p.offset, p.max_bytes)

    def rpc_ping(self, conn: Connection, p: None) -> str:
        return "pong"
