"""The node daemon: one per node.

It holds the node's resources and grants worker leases, runs the worker
pool, accounts for the shared-memory object store, tails worker logs, and
reports its load to the control service. It never runs user code and never
unpickles anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from typing import Any

from ember._private import ids
from ember._private import resources as res
from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember._private.processes import host_memory, resident_bytes
from ember.exceptions import ConnectionLost, RemoteError
from ember.raylet import log_files
from ember.raylet import scheduling_policy as policy
from ember.raylet.lease_service import LeaseService
from ember.raylet.leases import Lease, LeaseRequest
from ember.raylet.log_monitor import LogMonitor
from ember.raylet.metrics_service import MetricsService
from ember.raylet.object_manager import ObjectManager
from ember.raylet.object_service import ObjectService
from ember.raylet.object_store import ObjectStore
from ember.raylet.worker_pool import WorkerHandle, WorkerPool, WorkerState
from ember.rpc import Connection, connect, start_server

logger = logging.getLogger(__name__)

#: Worker log records a node daemon keeps while the control service is away.
LOG_BACKLOG_RECORDS = 5000


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


class Raylet(LeaseService, ObjectService, MetricsService):
    def __init__(self, opts: RayletOptions, token: str) -> None:
        self.opts = opts
        self.token = token
        self.node_id = opts.node_id
        self.total: res.Resources = res.to_fixed(opts.resources)
        self.available: res.Resources = dict(self.total)
        from ember.raylet.gpus import GpuAllocator

        self.gpus = GpuAllocator(self.total.get("GPU", 0))
        cfg = config()
        fallback_root = cfg.object_store_fallback_directory or os.path.join(opts.session_dir, "fallback")
        self.store = ObjectStore(
            opts.store_dir, opts.store_capacity,
            fallback_dir=os.path.join(fallback_root, f"ember_fallback_{opts.node_id.hex()[:12]}"),
            fallback_max_bytes=cfg.object_store_fallback_max_bytes,
            fallback_min_free_bytes=cfg.object_store_fallback_min_free_bytes,
        )
        num_cpus = int(opts.resources.get("CPU", 0))
        self.prestart = num_cpus if cfg.num_prestart_workers < 0 else cfg.num_prestart_workers
        max_workers = cfg.max_workers if cfg.max_workers > 0 else 4 * max(num_cpus, 1) + 8
        self.logs_dir = os.path.join(opts.session_dir, "logs")
        self.pool = WorkerPool(self.logs_dir, {}, max_workers, self._schedule)
        from ember.raylet.runtime_env_agent import RuntimeEnvAgent
        from ember.runtime_env.process_context import resources_dir

        self.renv_agent = RuntimeEnvAgent(resources_dir(opts.session_dir), lambda: self.gcs, self._schedule)
        from ember._private.processes import raise_fd_limit

        #: Each worker costs this daemon descriptors; actors are limited by them, not by max_workers.
        self.fd_limit = raise_fd_limit()
        self.pending: deque[LeaseRequest] = deque()
        self.leases: dict[bytes, Lease] = {}
        self.clients: dict[bytes, Connection] = {}
        self.gcs: Connection | None = None
        self.address: list[Any] = []
        self.log_monitor = LogMonitor(self._publish_logs, period_s=cfg.log_poll_period_s, idle_period_s=cfg.log_poll_idle_period_s)
        #: Every background task of the node daemon (loops, reconnection, death reports, watches).
        self.background = BackgroundTasks("node daemon")
        self._server: asyncio.AbstractServer | None = None
        self.stopping = False
        #: Set to send a load report now (see _report_loop).
        self._report_wakeup = asyncio.Event()
        self.cluster_id = ""
        self._gcs_backlog: list[tuple[str, Any]] = []
        #: Worker output read while the control service was away (the newest, bounded).
        self._log_backlog: deque[dict[str, Any]] = deque(maxlen=LOG_BACKLOG_RECORDS)
        self.view: dict[bytes, policy.NodeView] = {}
        #: Nodes this daemon heard die (kept so node affinity to one says "is dead").
        self.dead_nodes: dict[bytes, policy.NodeView] = {}
        self.policy_cfg = policy.PolicyConfig(
            cfg.scheduler_spread_threshold, cfg.scheduler_top_k_fraction, cfg.scheduler_top_k_absolute
        )
        self.policy_state = policy.PolicyState()
        self._raylet_peers: dict[tuple[str, int], asyncio.Future[Connection]] = {}
        #: Owners on other nodes of objects stored here: a connection to each, to learn of its death.
        self._owner_watches: dict[bytes, asyncio.Task[None]] = {}
        self._owner_conns: dict[bytes, Connection] = {}
        from ember.raylet.bundles import BundleManager

        self.bundles = BundleManager(self.total, self.available)
        from ember.raylet.spilling import Spiller

        if cfg.object_spilling_directory:
            # A folder of this node's own inside the user's location: the node deletes it when it
            # stops, and never touches anything else there (other nodes may share the location).
            spill_location = f"{cfg.object_spilling_directory.rstrip('/')}/ember_spilled_objects_{self.node_id.hex()[:12]}"
        else:
            spill_location = os.path.join(opts.session_dir, "spill", self.node_id.hex()[:12])
        self.spiller = Spiller(self.store, spill_location, cfg.object_spilling_threshold)
        self.objects = ObjectManager(self.store, self.node_id, self._connect_raylet, token, self.allocate_object)
        self.transfer: Any = None
        self._init_metrics()

    # ================================================================ start/stop
    async def start(self) -> None:
        opts = self.opts
        sock = socket.socket(fileno=opts.listen_fd) if opts.listen_fd >= 0 else None
        from ember.raylet.object_transfer import TransferServer

        self.transfer = TransferServer(opts.node_ip, self.token, self._sealed_path)
        self._server = await start_server(
            self, self.token, opts.node_ip, opts.port, sock=sock,
            info={"role": "raylet", "node_id": self.node_id, "transfer_port": self.transfer.port},
            on_close=self._on_disconnect,
        )
        port = self._server.sockets[0].getsockname()[1]
        self.address = [opts.node_ip, port]
        self.pool.env = {
            "EMBER_RAYLET_ADDRESS": f"{opts.node_ip}:{port}",
            "EMBER_GCS_ADDRESS": opts.gcs_address,
            "EMBER_NODE_ID": self.node_id.hex(),
            "EMBER_NODE_IP": opts.node_ip,
            "EMBER_SESSION_DIR": opts.session_dir,
            "EMBER_STORE_DIR": opts.store_dir,
            "EMBER_TOKEN": self.token,
            "EMBER_RAYLET_PID": str(os.getpid()),
        }
        await self._start_metrics()
        if config().use_fork_server:
            from ember.raylet.worker_launcher import ZygoteLauncher

            launcher = ZygoteLauncher(os.path.join(self.logs_dir, f"zygote-{self.node_id.hex()[:12]}.log"))
            self.pool.launcher = launcher
            # Its "ready" line releases the workers that waited for it (see WorkerPool.launch_ready).
            asyncio.get_running_loop().add_reader(launcher.output_fd, self._on_fork_server_output, launcher)
        self.pool.spawn_budget = max(2, self.prestart)
        startup = config().worker_maximum_startup_concurrency
        self.pool.startup_concurrency = startup if startup > 0 else max(4, 2 * int(self.opts.resources.get("CPU", 0)))
        for _ in range(self.prestart):
            self._start_worker()
        self.gcs = await connect(opts.gcs_address, self.token, self, info={"role": "raylet"})
        self.gcs.add_close_callback(self._gcs_lost)
        reply = await self.gcs.call("register_node", self.node_info())
        self.cluster_id = reply["cluster_id"]
        # Joins and deaths reach the cluster view at once, not at the next report.
        await self.gcs.call("subscribe", {"channels": ["nodes"]})
        for loop_coro, name in ((self._report_loop(), "load reports"), (self._log_loop(), "log tailing"),
                                (self._reap_loop(), "worker reaping"), (self._memory_loop(), "memory monitor")):
            self.background.spawn(loop_coro, name)
        logger.info("node daemon %s listening on %s:%d", self.node_id.hex()[:12], opts.node_ip, port)

    def _on_fork_server_output(self, launcher: Any) -> None:
        was_ready = launcher.ready
        launcher.read_available()
        if launcher.dead or launcher is not self.pool.launcher:
            asyncio.get_running_loop().remove_reader(launcher.output_fd)
        if launcher.ready and not was_ready:
            self._schedule()

    def node_info(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "resources": res.to_float(self.total),
            "store_capacity": self.store.capacity,
            "store_dir": self.store.directory,
            "transfer_port": self.transfer.port if self.transfer else 0,
            "hostname": socket.gethostname(),
            "is_head": self.opts.is_head,
            "pid": os.getpid(),
            "metrics_export_port": self.metrics_export_port,
        }

    def _sealed_path(self, object_id: bytes) -> str | None:
        if self.store.contains(object_id):
            return self.store.path(object_id)
        return self.spiller.local_spill_path(object_id)

    async def stop(self) -> None:
        self.stopping = True
        if self.transfer is not None:
            self.transfer.stop()
        await self.background.close(config().process_stop_timeout_s)
        if self._server is not None:
            self._server.close()
        await self._stop_metrics()
        await self.renv_agent.stop()
        output_fd = getattr(self.pool.launcher, "output_fd", None)
        if output_fd is not None and not self.pool.launcher.dead:
            asyncio.get_running_loop().remove_reader(output_fd)
        self.pool.stop_all(config().process_stop_timeout_s)
        self.log_monitor.poll(force=True)
        self.store.destroy()
        self.spiller.stop()
        if self.gcs is not None and not self.gcs.closed:
            # Its workers are gone: leave the cluster, so the control service records a stop, not a death.
            try:
                await self.gcs.call("unregister_node", {"node_id": self.node_id}, config().process_stop_timeout_s)
            except (ConnectionLost, RemoteError) as exc:
                logger.info("could not tell the control service this node is stopping: %s", exc)
        if self.gcs is not None:
            self.gcs.close("node daemon stopping")

    def _gcs_lost(self, conn: Connection) -> None:
        if self.stopping or conn is not self.gcs:
            return
        logger.warning("lost the connection to the control service (%s); reconnecting", conn.close_reason)
        self.background.spawn_if_open(self._reconnect_gcs(conn), "reconnect to the control service")

    async def _reconnect_gcs(self, old: Connection) -> None:
        """Keep running while the control service restarts; rejoin it with the same node id."""
        timeout = config().gcs_reconnect_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while not self.stopping:
            try:
                conn = await connect(self.opts.gcs_address, self.token, self, info={"role": "raylet"},
                                     timeout=config().gcs_connect_attempt_timeout_s, retry=False)
                held = [[l.lease_id, l.worker.worker_id] for l in self.leases.values() if l.holder is old]
                reply = await conn.call("register_node", {**self.node_info(), "cluster_id": self.cluster_id, "gcs_leases": held})
            except RemoteError as exc:
                logger.error("the control service refused this node: %s; stopping", exc.message)
                self.stop_event.set()
                return
            except (ConnectionLost, OSError):
                if loop.time() > deadline:
                    logger.error("the control service did not come back within %gs; stopping", timeout)
                    self.stop_event.set()
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            break
        else:
            return
        self.gcs = conn
        conn.add_close_callback(self._gcs_lost)
        release = set(reply.get("release_leases") or [])
        for lease in list(self.leases.values()):
            if lease.holder is old:
                if lease.lease_id in release:
                    self.pool.kill(lease.worker)
                    self._release_lease(lease)
                else:
                    lease.holder = conn
        backlog, self._gcs_backlog = self._gcs_backlog, []
        for method, payload in backlog:
            conn.notify(method, payload)
        while self._log_backlog:
            conn.notify("publish", ["logs", self._log_backlog.popleft()])
        try:
            await conn.call("subscribe", {"channels": ["nodes"]})
        except (ConnectionLost, RemoteError):
            pass
        logger.info("rejoined the control service")
        self.report_now()
        self._schedule()

    def notify_gcs(self, method: str, payload: Any) -> None:
        """Tell the control service something; kept until it is reachable again if it is not now."""
        if self.gcs is not None and not self.gcs.closed:
            self.gcs.notify(method, payload)
        else:
            self._gcs_backlog.append((method, payload))

    stop_event: asyncio.Event

    # ================================================================ loops
    def report_now(self) -> None:
        """Send a report (and so refresh our cluster view) without waiting for the period."""
        self._report_wakeup.set()

    def rpc_refresh_view(self, conn: Connection, p: Any) -> None:
        self.report_now()

    async def _report_loop(self) -> None:
        """Report every ``resource_report_period_s``, and soon after any change of what is
        available (at most one report per ``resource_report_min_interval_s``), so that
        ``available_resources()`` and other nodes' views are current."""
        period = config().resource_report_period_s
        min_interval = config().resource_report_min_interval_s
        last_sent = 0.0
        while True:
            wait = last_sent + min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last_sent = time.monotonic()
            if self.gcs is not None and not self.gcs.closed:
                stats = self.store.stats()
                try:
                    view = await self.gcs.call("report", {
                        "node_id": self.node_id,
                        "available": res.to_float({k: max(v, 0) for k, v in self.available.items()}),
                        "total": res.to_float(self.total),
                        "store_used": stats["used"],
                        "store_objects": stats["objects"],
                    "store_spilled": stats["spilled_bytes"],
                    "store_fallback": stats["fallback_bytes"],
                    "store_fallback_objects": stats["fallback_objects"],
                        "num_workers": len(self.pool.alive()),
                    }, timeout=max(5.0, period * 10))
                    self._update_view(view)
                except Exception as exc:  # a slow or restarting control service: try again next period
                    logger.debug("resource report failed: %s", exc)
            try:
                await asyncio.wait_for(self._report_wakeup.wait(), period)
            except asyncio.TimeoutError:
                pass
            self._report_wakeup.clear()

    def _update_view(self, rows: list[list[Any]]) -> None:
        view: dict[bytes, policy.NodeView] = {}
        for node_id, address, total, available in rows:
            view[node_id] = policy.NodeView(node_id, address, res.to_fixed(total), res.to_fixed(available))
        view[self.node_id] = policy.NodeView(self.node_id, self.address, self.total, self.available)
        self.view = view
        self._rebalance()
        for req in self.pending:
            if not req.future.done() and not res.fits(req.resources, self.total):
                self._warn_infeasible(req)

    def rpc_pub(self, conn: Connection, message: list[Any]) -> None:
        """A node joined or died (the control service's ``nodes`` channel): update the view now.

        Otherwise a node that just joined is unknown here until the next report, and
        node affinity to it fails with "not part of the cluster".
        """
        channel, data = message
        if channel != "nodes":
            return
        node_id = bytes.fromhex(data["NodeID"])
        if node_id == self.node_id:
            return
        if data.get("Alive"):
            self.dead_nodes.pop(node_id, None)
            if node_id not in self.view:
                total = res.to_fixed(data["Resources"])
                address = [data["NodeManagerAddress"], data["NodeManagerPort"]]
                self.view[node_id] = policy.NodeView(node_id, address, total, dict(total))
                self._rebalance()
        else:
            address = [data["NodeManagerAddress"], data["NodeManagerPort"]]
            self.dead_nodes[node_id] = policy.NodeView(node_id, address, {}, {}, alive=False)
            # Copies pulled from the dead node's primaries: nobody will free them (the owner's
            # record points at the dead node, and a reconstructed primary does not know them).
            orphans = [oid for oid, src in self.objects.sources.items() if src == (address[0], address[1])]
            if orphans:
                self.rpc_free_objects(conn, {"object_ids": orphans})
            if self.view.pop(node_id, None) is not None:
                self._rebalance()

    def _committed_available(self) -> res.Resources:
        """What is free here once the requests already queued here are granted.

        A request decided local waits for a worker before its resources are taken;
        without this, a burst of requests all see an idle node and all stay here.
        """
        free = dict(self.available)
        for req in self.pending:
            if not req.future.done() and res.fits(req.resources, self.total):
                res.subtract(free, req.hold)
        return {k: max(v, 0) for k, v in free.items()}

    def _local_view(self) -> dict[bytes, policy.NodeView]:
        view = dict(self.view)
        view[self.node_id] = policy.NodeView(self.node_id, self.address, self.total, self._committed_available())
        for node_id, dead in self.dead_nodes.items():
            view.setdefault(node_id, dead)
        return view

    def _rebalance(self) -> None:
        """Send waiting requests to other nodes that can run them now."""
        if len(self.view) < 2:
            self._schedule()
            return
        view = self._local_view()
        for req in list(self.pending):
            # Spilled requests too: the node that sent one here decided on a stale view
            # (reports lag), so it may wait here while a CPU is free elsewhere.
            if req.future.done():
                continue
            if res.fits(req.resources, self.available):
                continue
            decision = policy.decide(req.resources, req.payload.get("strategy"), self.node_id, view, self.policy_cfg, self.policy_state)
            if decision.kind == policy.SPILLBACK and decision.node_id is not None:
                self.pending.remove(req)
                req.future.set_result({"spillback": {"node_id": decision.node_id, "address": view[decision.node_id].address}})
        self._schedule()

    async def _connect_raylet(self, address: list[Any]) -> Connection:
        key = (address[0], address[1])
        fut = self._raylet_peers.get(key)
        if fut is not None and fut.done() and (fut.exception() is not None or fut.result().closed):
            fut = None
        if fut is None:
            fut = asyncio.ensure_future(connect(key, self.token, self, info={"role": "raylet", "address": self.address}))
            self._raylet_peers[key] = fut
        return await asyncio.shield(fut)

    async def _log_loop(self) -> None:
        period = config().log_poll_period_s
        while True:
            self.log_monitor.poll()
            await asyncio.sleep(period)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(config().worker_reap_period_s)
            before = len(self.pool.workers)
            self.pool.reap()
            self._close_idle_owner_watches()
            await self._kill_surplus_idle()
            self.fail_envs_whose_workers_crash()
            self.renv_agent.collect({w.env_key for w in self.pool.alive()})
            if len(self.pool.workers) != before:
                self._schedule()

    async def _memory_loop(self) -> None:
        from ember.raylet import memory_monitor as mm

        cfg = config()
        if cfg.memory_usage_threshold >= 1.0:
            return
        while True:
            await asyncio.sleep(cfg.memory_monitor_period_s)
            snapshot = mm.read_memory()
            if snapshot.fraction <= cfg.memory_usage_threshold:
                continue
            candidates = [
                mm.Candidate(l.worker.worker_id, l.retriable, l.granted_at)
                for l in self.leases.values() if l.worker.state is WorkerState.LEASED and l.worker.proc.poll() is None
            ]
            victim = mm.choose_victim(candidates)
            if victim is None:
                continue
            lease = next(l for l in self.leases.values() if l.worker.worker_id == victim.worker_id)
            gib = 1024 ** 3
            detail = (
                f"the memory monitor of node {self.node_id.hex()[:12]} ({self.opts.node_ip}) ended it because the node "
                f"used {snapshot.used / gib:.2f} GiB of {snapshot.total / gib:.2f} GiB "
                f"({100 * snapshot.fraction:.0f}%, above the threshold of {100 * cfg.memory_usage_threshold:.0f}%)"
            )
            logger.warning("killing worker pid %d: %s", lease.worker.pid, detail)
            lease.holder.notify("worker_oom_killed", {"worker_id": victim.worker_id, "detail": detail})
            self.pool.kill(lease.worker)
            # Let the kill take effect before looking again.
            for _ in range(40):
                if lease.worker.proc.poll() is not None:
                    break
                await asyncio.sleep(0.025)

    def _publish_logs(self, record: dict[str, Any]) -> None:
        if self.gcs is not None and not self.gcs.closed:
            self.gcs.notify("publish", ["logs", record])
        else:  # the control service is restarting: delivered when it is back
            self._log_backlog.append(record)

    # ================================================================ connections
    def _on_disconnect(self, conn: Connection) -> None:
        worker: WorkerHandle | None = conn.state.get("worker")
        if worker is not None:
            self._worker_died(worker)
        client_id = conn.state.get("client_id")
        if client_id is not None:
            self.clients.pop(client_id, None)
            self._free_owned(client_id)  # with the copies other nodes made
        # Lease requests and leases of a departed holder.
        for req in [r for r in self.pending if r.conn is conn]:
            self.pending.remove(req)
            if not req.future.done():
                req.future.cancel()
        for lease in [l for l in self.leases.values() if l.holder is conn]:
            # The holder may have left tasks running: the worker cannot be trusted.
            self.pool.kill(lease.worker, "the process holding its lease disconnected")
            self._release_lease(lease)
        self._schedule()

    def _worker_died(self, worker: WorkerHandle) -> None:
        if worker.state is WorkerState.DEAD:
            return
        lease = self.leases.get(worker.lease_id) if worker.lease_id else None
        self.pool.mark_dead(worker)
        if lease is not None:
            self._release_lease(lease)
        self.store.free_owned_by(worker.worker_id, unsealed_only=True)
        self.log_monitor.remove(worker.out_path)
        self.log_monitor.remove(worker.err_path)
        if not self.stopping:
            # A stopping node leaves the cluster as a whole (unregister_node): no death to report.
            self.background.spawn_if_open(self._report_worker_death(worker), "report a worker death")
        # Keep the prestarted pool at its size.
        if not self.stopping and sum(1 for w in self.pool.alive() if not w.env_key) < self.prestart:
            self._start_worker()
        self._schedule()

    async def _report_worker_death(self, worker: WorkerHandle) -> None:
        """Tell the control service a worker died, with its exit status once it is known."""
        for _ in range(100):
            if worker.proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        code = worker.proc.poll()
        if worker.end_reason:
            detail = f"the node daemon ended it: {worker.end_reason}"
        elif code is None:
            detail = "it closed its connection to the node daemon"
        elif code < 0:
            detail = f"it was killed by signal {-code}"
        else:
            detail = f"it exited with code {code}"
        worker.exit_detail = detail
        logger.info("worker %s (pid %d) died: %s", worker.worker_id.hex()[:12], worker.pid, detail)
        self.notify_gcs("worker_died", {"worker_id": worker.worker_id, "node_id": self.node_id, "pid": worker.pid, "detail": detail})

    def _start_worker(self, env_key: str = "") -> WorkerHandle:
        handle = self.pool.start_worker(env_key, *self.renv_agent.prepared(env_key)) if env_key else self.pool.start_worker()
        self.log_monitor.add(handle.out_path, handle.pid, False)
        self.log_monitor.add(handle.err_path, handle.pid, True)
        return handle

    async def _kill_surplus_idle(self) -> None:
        timeout = config().idle_worker_kill_s
        now = time.monotonic()
        idle = [w for w in self.pool.alive() if w.state is WorkerState.IDLE]
        # The prestarted pool is of default workers; a runtime env's idle workers all go.
        surplus = sum(1 for w in self.pool.alive() if not w.env_key) - self.prestart
        for worker in sorted(idle, key=lambda w: w.idle_since):
            if (surplus <= 0 and not worker.env_key) or now - worker.idle_since <= timeout:
                continue
            # As in Ray, a worker that owns objects still referenced elsewhere (a task put a value and
            # returned its ref) stays: its exit would lose them. Asked again after another idle period.
            try:
                owns = worker.conn is None or bool(await worker.conn.call("owns_objects", None, config().worker_query_timeout_s))
            except Exception:
                owns = True
            if owns:
                worker.idle_since = time.monotonic()
                continue
            if worker.state is WorkerState.IDLE:
                self.pool.kill(worker, f"idle for over {timeout:g}s beyond the pool's size")
                surplus -= 0 if worker.env_key else 1

    # ================================================================ RPC: workers
    def rpc_register_worker(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        handle = self.pool.register(conn, p["worker_id"], p["address"])
        if handle is None:
            raise ValueError("unknown worker id; this worker was not started by this node daemon")
        conn.state["worker"] = handle
        conn.state["client_id"] = p["worker_id"]
        self.store.owner_names[p["worker_id"]] = f"worker pid {handle.pid}"
        self.clients[p["worker_id"]] = conn
        self._schedule()
        return self._client_info()

    def rpc_register_client(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        conn.state["client_id"] = p["client_id"]
        conn.state["address"] = p.get("address")
        conn.state["pid"] = p.get("pid")
        self.store.owner_names[p["client_id"]] = f"driver pid {p.get('pid', '?')}"
        self.clients[p["client_id"]] = conn
        return self._client_info()

    def _client_info(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "raylet_address": self.address,
            "store_dir": self.store.directory,
            "session_dir": self.opts.session_dir,
            "gcs_address": self.opts.gcs_address,
            "node_ip": self.opts.node_ip,
            "resources": res.to_float(self.total),
        }

    # ================================================================ RPC: bundles
    def rpc_prepare_bundle(self, conn: Connection, p: dict[str, Any]) -> bool:
        self.bundles.prepare(p["pg_id"], int(p["index"]), p["resources"])
        return True

    def rpc_cancel_bundle(self, conn: Connection, p: dict[str, Any]) -> bool:
        self.bundles.cancel(p["pg_id"], int(p["index"]))
        self._schedule()
        return True

    def rpc_commit_bundle(self, conn: Connection, p: dict[str, Any]) -> bool:
        self.bundles.commit(p["pg_id"], int(p["index"]))
        self._schedule()
        self.report_now()
        return True

    def rpc_remove_bundle(self, conn: Connection, p: dict[str, Any]) -> bool:
        from ember.raylet.bundles import uses_group

        pg_id = p["pg_id"]
        # Tasks and actors running in the group end with it.
        for lease in list(self.leases.values()):
            if uses_group(lease.resources, pg_id):
                self.pool.kill(lease.worker)
                self._release_lease(lease)
        self.bundles.remove(pg_id, int(p["index"]))
        self._schedule()
        self.report_now()
        return True

    # ================================================================ RPC: misc
    def rpc_kill_worker(self, conn: Connection, p: dict[str, Any]) -> bool:
        worker = self.pool.workers.get(p["worker_id"])
        if worker is None:
            return False
        self.pool.kill(worker)
        return True

    def rpc_get_info(self, conn: Connection, p: Any) -> dict[str, Any]:
        info = self._client_info()
        info["available"] = res.to_float(self.available)
        info["store"] = self.store.stats()
        info["workers"] = [
            {
                "worker_id": w.worker_id, "pid": w.pid, "state": w.state.value,
                "rss": resident_bytes(w.pid),
                "log_files": [os.path.basename(w.out_path), os.path.basename(w.err_path)],
            }
            for w in self.pool.alive()
        ]
        # For the dashboard: this node's own processes and its host's memory.
        zygote = getattr(getattr(self.pool.launcher, "proc", None), "pid", None)
        info["processes"] = [
            {"name": "node daemon", "pid": os.getpid(), "rss": resident_bytes(os.getpid())},
        ] + ([{"name": "fork server", "pid": zygote, "rss": resident_bytes(zygote)}] if zygote else [])
        info["host_memory"] = host_memory()
        return info

    def rpc_task_counts(self, conn: Connection, p: Any) -> list[list[Any]]:
        """Tasks by name, state and job as this node's processes last reported them (``ray_tasks``):
        ``[name, state, is_retry, source, job id, count]`` rows, for the dashboard's progress bars."""
        return [row for rows in self.task_counts.values() for row in rows]

    def rpc_list_clients(self, conn: Connection, p: Any) -> list[list[Any]]:
        """Addresses of the core workers on this node (drivers and workers), for inspection tools."""
        out = []
        for client in self.clients.values():
            worker = client.state.get("worker")
            address = worker.address if worker is not None else client.state.get("address")
            if address:
                out.append(address)
        return out

    def rpc_list_logs(self, conn: Connection, p: dict[str, Any] | None) -> list[list[Any]]:
        """This node's log files ``[[name, size], ...]`` (``glob`` filters names)."""
        return log_files.list_files(self.logs_dir, (p or {}).get("glob"))

    def rpc_read_log(self, conn: Connection, p: dict[str, Any]) -> dict[str, Any]:
        """A chunk of one log file (``name``, ``offset``, ``max_bytes``); names outside logs/ are refused."""
        return log_files.read(self.logs_dir, p["name"], int(p.get("offset", 0)), int(p.get("max_bytes", 1 << 20)))

    def rpc_ping(self, conn: Connection, p: Any) -> str:
        return "pong"
