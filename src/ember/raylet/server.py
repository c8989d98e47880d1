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
from ember._private.config import config
from ember.exceptions import ConnectionLost, ObjectStoreFullError, RemoteError
from ember.raylet import resources as res
from ember.raylet import scheduling_policy as policy
from ember.raylet.leases import Lease, LeaseRequest
from ember.raylet.log_monitor import LogMonitor
from ember.raylet.object_manager import ObjectManager
from ember.raylet.object_store import ObjectStore
from ember.raylet.worker_pool import WorkerHandle, WorkerPool, WorkerState
from ember.rpc import Connection, connect, start_server

logger = logging.getLogger(__name__)

#: Tries to connect to an owner on another node before giving up on watching it.
OWNER_WATCH_ATTEMPTS = 8


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


class Raylet:
    def __init__(self, opts: RayletOptions, token: str) -> None:
        self.opts = opts
        self.token = token
        self.node_id = opts.node_id
        self.total: res.Resources = res.to_fixed(opts.resources)
        self.available: res.Resources = dict(self.total)
        from ember.raylet.gpus import GpuAllocator

        self.gpus = GpuAllocator(self.total.get("GPU", 0))
        self.store = ObjectStore(opts.store_dir, opts.store_capacity)
        cfg = config()
        num_cpus = int(opts.resources.get("CPU", 0))
        self.prestart = num_cpus if cfg.num_prestart_workers < 0 else cfg.num_prestart_workers
        max_workers = cfg.max_workers if cfg.max_workers > 0 else 4 * max(num_cpus, 1) + 8
        self.logs_dir = os.path.join(opts.session_dir, "logs")
        self.pool = WorkerPool(self.logs_dir, {}, max_workers, self._schedule)
        self.pending: deque[LeaseRequest] = deque()
        self.leases: dict[bytes, Lease] = {}
        self.clients: dict[bytes, Connection] = {}
        self.gcs: Connection | None = None
        self.address: list[Any] = []
        self.log_monitor = LogMonitor(self._publish_logs)
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.AbstractServer | None = None
        self.stopping = False
        self.cluster_id = ""
        self._gcs_backlog: list[tuple[str, Any]] = []
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
        self.objects = ObjectManager(self.store, self.node_id, self._connect_raylet, token, self.spiller.make_room)
        self.transfer: Any = None

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
        if config().use_fork_server:
            from ember.raylet.worker_launcher import ZygoteLauncher

            self.pool.launcher = ZygoteLauncher(os.path.join(self.logs_dir, f"zygote-{self.node_id.hex()[:12]}.log"))
        for _ in range(self.prestart):
            self._start_worker()
        self.gcs = await connect(opts.gcs_address, self.token, self, info={"role": "raylet"})
        self.gcs.add_close_callback(self._gcs_lost)
        reply = await self.gcs.call("register_node", self.node_info())
        self.cluster_id = reply["cluster_id"]
        # Joins and deaths reach the cluster view at once, not at the next report.
        await self.gcs.call("subscribe", ["nodes"])
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._report_loop()), loop.create_task(self._log_loop()),
            loop.create_task(self._reap_loop()), loop.create_task(self._memory_loop()),
        ]
        logger.info("node daemon %s listening on %s:%d", self.node_id.hex()[:12], opts.node_ip, port)

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
        }

    def _sealed_path(self, object_id: bytes) -> str | None:
        if self.store.contains(object_id):
            return self.store.path(object_id)
        return self.spiller.local_spill_path(object_id)

    async def stop(self) -> None:
        self.stopping = True
        if self.transfer is not None:
            self.transfer.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            self._server.close()
        self.pool.stop_all(config().process_stop_timeout_s)
        self.log_monitor.poll()
        self.store.destroy()
        self.spiller.stop()
        if self.gcs is not None:
            self.gcs.close("node daemon stopping")

    def _gcs_lost(self, conn: Connection) -> None:
        if self.stopping or conn is not self.gcs:
            return
        logger.warning("lost the connection to the control service (%s); reconnecting", conn.close_reason)
        asyncio.get_running_loop().create_task(self._reconnect_gcs(conn))

    async def _reconnect_gcs(self, old: Connection) -> None:
        """Keep running while the control service restarts; rejoin it with the same node id."""
        timeout = config().gcs_reconnect_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while not self.stopping:
            try:
                conn = await connect(self.opts.gcs_address, self.token, self, info={"role": "raylet"}, timeout=2.0, retry=False)
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
        try:
            await conn.call("subscribe", ["nodes"])
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
        period = config().resource_report_period_s
        self._report_wakeup = asyncio.Event()
        while True:
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
            await asyncio.sleep(0.5)
            before = len(self.pool.workers)
            self.pool.reap()
            self._close_idle_owner_watches()
            await self._kill_surplus_idle()
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
            self.pool.kill(lease.worker)
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
        asyncio.get_running_loop().create_task(self._report_worker_death(worker))
        # Keep the prestarted pool at its size.
        if not self.stopping and len(self.pool.alive()) < self.prestart:
            self._start_worker()
        self._schedule()

    async def _report_worker_death(self, worker: WorkerHandle) -> None:
        """Tell the control service a worker died, with its exit status once it is known."""
        for _ in range(100):
            if worker.proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        code = worker.proc.poll()
        if code is None:
            detail = "it closed its connection to the node daemon"
        elif code < 0:
            detail = f"it was killed by signal {-code}"
        else:
            detail = f"it exited with code {code}"
        worker.exit_detail = detail
        logger.info("worker %s (pid %d) died: %s", worker.worker_id.hex()[:12], worker.pid, detail)
        self.notify_gcs("worker_died", {"worker_id": worker.worker_id, "node_id": self.node_id, "pid": worker.pid, "detail": detail})

    def _start_worker(self) -> WorkerHandle:
        handle = self.pool.start_worker()
        self.log_monitor.add(handle.out_path, handle.pid, False)
        self.log_monitor.add(handle.err_path, handle.pid, True)
        return handle

    async def _kill_surplus_idle(self) -> None:
        timeout = config().idle_worker_kill_s
        now = time.monotonic()
        idle = [w for w in self.pool.alive() if w.state is WorkerState.IDLE]
        surplus = len(self.pool.alive()) - self.prestart
        for worker in sorted(idle, key=lambda w: w.idle_since):
            if surplus <= 0:
                break
            if now - worker.idle_since <= timeout:
                continue
            # As in Ray, a worker that owns objects still referenced elsewhere (a task put a value and
            # returned its ref) stays: its exit would lose them. Asked again after another idle period.
            try:
                owns = worker.conn is None or bool(await worker.conn.call("owns_objects", None, 5.0))
            except Exception:
                owns = True
            if owns:
                worker.idle_since = time.monotonic()
                continue
            if worker.state is WorkerState.IDLE:
                self.pool.kill(worker)
                surplus -= 1

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

    # ================================================================ RPC: leases
    def rpc_request_lease(self, conn: Connection, p: dict[str, Any]) -> asyncio.Future[Any]:
        # A resent request (its reply was lost) gets the same answer, not a second lease.
        seen: dict[Any, asyncio.Future[Any]] = conn.state.setdefault("lease_requests", {})
        request_id = p.get("request_id")
        if request_id is not None and request_id in seen:
            return seen[request_id]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if request_id is not None:
            seen[request_id] = fut
            if len(seen) > 10000:
                seen.pop(next(iter(seen)))
        try:
            request = res.to_fixed(p.get("resources") or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad resource request: {exc}") from exc
        req = LeaseRequest(p.get("request_id"), conn, request, fut, p)
        hold = p.get("hold")
        req.hold = res.to_fixed(hold) if hold is not None else request
        if not p.get("spilled"):
            prefer = p.get("prefer")
            target = self.view.get(prefer) if prefer and prefer != self.node_id and not p.get("strategy") else None
            if target is not None and target.alive and res.fits(request, target.available):
                # The task's large arguments live there: run it next to them.
                fut.set_result({"spillback": {"node_id": target.node_id, "address": target.address}})
                return fut
            decision = policy.decide(request, p.get("strategy"), self.node_id, self._local_view(), self.policy_cfg, self.policy_state)
            if decision.kind == policy.SPILLBACK and decision.node_id is not None:
                fut.set_result({"spillback": {"node_id": decision.node_id, "address": self.view[decision.node_id].address}})
                return fut
            if decision.kind == policy.UNSCHEDULABLE:
                from ember.exceptions import TaskUnschedulableError

                err = TaskUnschedulableError(decision.reason)
                err.expected = True  # type: ignore[attr-defined]
                raise err
        self.pending.append(req)
        self._schedule()
        return fut

    def rpc_cancel_lease_request(self, conn: Connection, p: dict[str, Any]) -> None:
        for req in list(self.pending):
            if req.conn is conn and req.request_id == p["request_id"]:
                self.pending.remove(req)
                if not req.future.done():
                    req.future.set_result({"cancelled": True})

    def rpc_return_lease(self, conn: Connection, p: dict[str, Any]) -> None:
        lease = self.leases.get(p["lease_id"])
        if lease is None or lease.holder is not conn:
            return
        if p.get("kill"):
            self.pool.kill(lease.worker)
        self._release_lease(lease)
        if lease.worker.state is WorkerState.LEASED:
            self.pool.push_idle(lease.worker)
        self._schedule()

    def _release_lease(self, lease: Lease) -> None:
        if self.leases.pop(lease.lease_id, None) is None:
            return
        give_back = dict(lease.resources)
        self.gpus.release(lease.gpu_ids, lease.resources.get("GPU", 0))
        if lease.blocked:
            give_back.pop("CPU", None)  # already given back while blocked
        res.add(self.available, give_back)

    def rpc_notify_blocked(self, conn: Connection, p: Any) -> None:
        lease = self._lease_of(conn)
        if lease is not None and not lease.blocked:
            lease.blocked = True
            res.add(self.available, lease.cpu)
            self._schedule()

    def rpc_notify_unblocked(self, conn: Connection, p: Any) -> None:
        lease = self._lease_of(conn)
        if lease is not None and lease.blocked:
            lease.blocked = False
            res.subtract(self.available, lease.cpu)

    def _num_blocked(self) -> int:
        return sum(1 for lease in self.leases.values() if lease.blocked)

    def _lease_of(self, conn: Connection) -> Lease | None:
        worker: WorkerHandle | None = conn.state.get("worker")
        if worker is None or worker.lease_id is None:
            return None
        return self.leases.get(worker.lease_id)

    def _schedule(self) -> None:
        """Grant every pending request that fits, in arrival order."""
        if not self.pending:
            return
        waiting_for_worker = 0
        still_pending: deque[LeaseRequest] = deque()
        blocked_on_resources = False
        while self.pending:
            req = self.pending.popleft()
            if req.future.done():
                continue
            if not res.fits(req.resources, self.total):
                # Warned after the next cluster view, unless another node can take it by then.
                still_pending.append(req)
                continue
            if not res.fits(req.resources, self.available):
                blocked_on_resources = True
                still_pending.append(req)
                continue
            worker = self.pool.pop_idle()
            if worker is None:
                waiting_for_worker += 1
                still_pending.append(req)
                continue
            self._grant(req, worker)
        self.pending = still_pending
        starting = self.pool.num_starting()
        while waiting_for_worker > starting and self.pool.can_start(self._num_blocked()) and not self.stopping:
            self._start_worker()
            starting += 1
        if blocked_on_resources:
            for holder in {id(l.holder): l.holder for l in self.leases.values()}.values():
                if holder is not self.gcs:
                    holder.notify("release_idle_leases", None)

    def _grant(self, req: LeaseRequest, worker: WorkerHandle) -> None:
        lease_id = ids.random_unique_id()
        worker.transition(WorkerState.LEASED)
        worker.lease_id = lease_id
        res.subtract(self.available, req.hold)
        lease = Lease(lease_id, worker, req.hold, req.conn)
        lease.gpu_ids = self.gpus.allocate(req.hold.get("GPU", 0))
        lease.retriable = bool(req.payload.get("retriable", True))
        lease.granted_at = time.monotonic()
        self.leases[lease_id] = lease
        # Keep a worker warm so the next lease (often an actor) does not wait for a process start.
        if not self.pool.idle and not self.pool.num_starting() and self.pool.can_start(self._num_blocked()) and not self.stopping:
            self._start_worker()
        req.future.set_result({
            "lease_id": lease_id,
            "worker_id": worker.worker_id,
            "address": worker.address,
            "node_id": self.node_id,
            "pid": worker.pid,
            "gpu_ids": lease.gpu_ids,
        })

    def _warn_infeasible(self, req: LeaseRequest) -> None:
        if req.warned_infeasible:
            return
        if any("_group_" in name for name in req.resources):
            return  # waiting for a placement group to be placed is normal; the control service reports groups that cannot be
        req.warned_infeasible = True
        shape = res.describe(req.resources)
        shapes = "; ".join(sorted(res.describe(n.total) for n in self._local_view().values() if n.alive))
        message = (
            f"No node in this cluster can ever satisfy the resource request {shape}. "
            f"The nodes have: {shapes}. It will wait until a node that can run it joins. "
            "Lower the request (num_cpus=, num_gpus=, resources=), or add a node with enough resources."
        )
        req.conn.notify("infeasible", {"request_id": req.request_id, "message": message})

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

    # ================================================================ RPC: objects
    async def rpc_create_object(self, conn: Connection, p: dict[str, Any]) -> Any:
        size = int(p["size"])
        if size < 0 or not isinstance(p.get("object_id"), bytes) or len(p["object_id"]) != 20:
            raise ValueError(f"bad create_object request: size {size}, object id {p.get('object_id')!r}")
        try:
            if self.store.used + size > self.store.capacity:
                await self.spiller.make_room(size)
            reuse = self.store.reserve(p["object_id"], size, p["owner"])
        except ObjectStoreFullError as exc:
            exc.expected = True  # type: ignore[attr-defined]
            raise
        if p.get("owner_address") and p["owner"] not in self.clients and p["owner"] not in self._owner_watches:
            self._owner_watches[p["owner"]] = asyncio.get_running_loop().create_task(
                self._watch_owner(p["owner"], p["owner_address"])
            )
        return {"reuse": reuse}

    async def _watch_owner(self, owner: bytes, address: list[Any]) -> None:
        """An owner on another node: its objects here are freed when it dies (the connection drops)."""
        conn = await self._connect_owner(owner, address)
        if conn is None:
            return
        self._owner_conns[owner] = conn
        conn.add_close_callback(lambda c: self._owner_gone(owner))

    async def _connect_owner(self, owner: bytes, address: list[Any]) -> Connection | None:
        """A connection to a live owner; None (and its objects freed) if it is gone."""
        delay = 0.1
        failure: Exception | None = None
        for _ in range(OWNER_WATCH_ATTEMPTS):
            try:
                return await connect((address[0], address[1]), self.token, None, info={"role": "raylet"},
                                     timeout=10.0, retry=False)
            except ConnectionLost as exc:
                # A core worker listens before its address is handed out: a refusal means it is gone.
                if isinstance(exc.__cause__, ConnectionRefusedError):
                    self._owner_gone(owner)
                    return None
                # Reset or closed mid-handshake: often an owner dying right now. Look again (the
                # next try is refused if it is gone), unless it has nothing here any more.
                failure = exc
            except Exception as exc:  # e.g. a wrong token: keep the objects, watch again at the next create
                failure = exc
                break
            if not self.store.holds_owner(owner):
                failure = None
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        self._owner_watches.pop(owner, None)
        if failure is not None:
            logger.warning("cannot watch owner %s at %s (its objects here stay until it frees them): %s",
                           owner.hex()[:12], address, failure)
        return None

    def _owner_gone(self, owner: bytes) -> None:
        self._owner_watches.pop(owner, None)
        self._owner_conns.pop(owner, None)
        if not self.stopping and owner not in self.clients:
            self._free_owned(owner)

    def _free_owned(self, owner: bytes) -> None:
        """Free every object (in memory, spilled, and the copies on other nodes) of an owner that died."""
        oids = [oid for oid, e in self.store.objects.items() if e.owner == owner]
        oids += [oid for oid, e in self.store.spilled.items() if e.owner == owner and oid not in oids]
        if oids:
            logger.info("freeing %d object(s) of owner %s, which died", len(oids), owner.hex()[:12])
            self.rpc_free_objects(None, {"object_ids": oids})  # type: ignore[arg-type]

    def _close_idle_owner_watches(self) -> None:
        if not self._owner_conns:
            return
        owners = {e.owner for e in self.store.objects.values()} | {e.owner for e in self.store.spilled.values()}
        for owner, conn in list(self._owner_conns.items()):
            if owner not in owners:
                del self._owner_conns[owner]
                self._owner_watches.pop(owner, None)
                conn.close("no objects of this owner left here")

    def rpc_seal_object(self, conn: Connection, p: dict[str, Any]) -> None:
        self.store.seal(p["object_id"])
        self.spiller.after_seal()

    async def rpc_restore_object(self, conn: Connection, p: dict[str, Any]) -> bool:
        """Make a spilled object readable in memory again; False if this node does not have it."""
        return await self.spiller.restore(p["object_id"])

    async def rpc_prepare_transfer(self, conn: Connection, p: dict[str, Any]) -> bool:
        """Before another node streams an object from us: make sure there is a local file to send."""
        object_id = p["object_id"]
        if self._sealed_path(object_id) is not None:
            return True
        if await self.spiller.restore(object_id):
            return True
        from ember.exceptions import ObjectLostError

        err = ObjectLostError(object_id.hex(), f"object {object_id.hex()} is not on node {self.node_id.hex()[:12]}")
        err.expected = True  # type: ignore[attr-defined]
        raise err

    def rpc_free_objects(self, conn: Connection, p: dict[str, Any]) -> None:
        by_copy: dict[tuple[str, int], list[bytes]] = {}
        for oid in p["object_ids"]:
            url = self.store.free(oid)
            if url:
                self.spiller.delete(url)
            for address in self.objects.on_free(oid):
                by_copy.setdefault((address[0], address[1]), []).append(oid)
        for address, oids in by_copy.items():
            asyncio.get_running_loop().create_task(self._free_remote(list(address), oids))

    async def _free_remote(self, address: list[Any], object_ids: list[bytes]) -> None:
        try:
            conn = await self._connect_raylet(address)
            conn.notify("free_objects", {"object_ids": object_ids})
        except Exception as exc:
            logger.debug("could not free copies on %s: %s", address, exc)

    async def rpc_pull_object(self, conn: Connection, p: dict[str, Any]) -> bool:
        source = p["address"]
        if any(list(dead.address[:2]) == list(source[:2]) for dead in self.dead_nodes.values()):
            # Fail at once (the owner rebuilds it from lineage) instead of retrying a
            # connection to a dead daemon for connect_timeout_s.
            from ember.exceptions import ObjectLostError

            err = ObjectLostError(p["object_id"].hex(), f"the node at {source[0]}:{source[1]} that held it is dead")
            err.expected = True  # type: ignore[attr-defined]
            raise err
        await self.objects.pull(p["object_id"], p["address"], int(p["size"]), p.get("owner") or b"")
        return True

    def rpc_read_object_chunk(self, conn: Connection, p: dict[str, Any]) -> bytes:
        return self.objects.read_chunk(p["object_id"], int(p["offset"]), int(p["length"]))

    def rpc_copy_made(self, conn: Connection, p: dict[str, Any]) -> None:
        object_id = p["object_id"]
        if object_id not in self.store.objects and object_id not in self.store.spilled:
            # Freed here while the other node was copying it: nobody would free that copy.
            conn.notify("free_objects", {"object_ids": [object_id]})
            return
        address = conn.peer_info.get("address")
        if address:
            self.objects.copy_made(object_id, address)

    def rpc_store_stats(self, conn: Connection, p: Any) -> dict[str, int]:
        return self.store.stats()

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
            {"worker_id": w.worker_id, "pid": w.pid, "state": w.state.value} for w in self.pool.alive()
        ]
        return info

    def rpc_list_clients(self, conn: Connection, p: Any) -> list[list[Any]]:
        """Addresses of the core workers on this node (drivers and workers), for inspection tools."""
        out = []
        for client in self.clients.values():
            worker = client.state.get("worker")
            address = worker.address if worker is not None else client.state.get("address")
            if address:
                out.append(address)
        return out

    def rpc_ping(self, conn: Connection, p: Any) -> str:
        return "pong"
