"""The node's worker processes: starting them, their registration, deaths, logs and memory.

Owns the worker pool (``worker_pool.py``, the bookkeeping and state machine),
the fork server's readiness, the tailing of worker output (``log_monitor.py``)
and the memory monitor's loop (``memory_monitor.py`` chooses, this kills).
A worker's death ends its lease in the lease table, frees the objects it was
still writing, and is reported to the control service with its exit status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ember._private.config import config
from ember.protocol import raylet as msg
from ember.raylet.clients import ClientRegistry
from ember.raylet.control_link import ControlServiceLink
from ember.raylet.lease_table import LeaseTable
from ember.raylet.log_monitor import LogMonitor
from ember.raylet.node import NodeContext
from ember.raylet.object_store import ObjectStore
from ember.raylet.runtime_env_agent import RuntimeEnvAgent
from ember.raylet.worker_launcher import SpawnLauncher, ZygoteLauncher, fork_server_log
from ember.raylet.worker_pool import WorkerHandle, WorkerPool, WorkerState
from ember.rpc import Connection

logger = logging.getLogger(__name__)


class WorkerService:
    def __init__(
        self,
        node: NodeContext,
        pool: WorkerPool,
        table: LeaseTable,
        renv_agent: RuntimeEnvAgent,
        store: ObjectStore,
        clients: ClientRegistry,
        link: ControlServiceLink,
        prestart: int,
        on_change: Callable[[], None],
        report_now: Callable[[], None],
    ) -> None:
        self.node = node
        self.pool = pool
        self.table = table
        self.renv_agent = renv_agent
        self.store = store
        self.clients = clients
        self.link = link
        #: Default-env workers kept started (``num_prestart_workers``, default: one per CPU).
        self.prestart = prestart
        #: Something a lease may wait for changed (a worker registered or died): schedule again.
        self._on_change = on_change
        self._report_now = report_now
        cfg = config()
        self.log_monitor = LogMonitor(link.publish_log, period_s=cfg.log_poll_period_s,
                                      idle_period_s=cfg.log_poll_idle_period_s)

    # ------------------------------------------------------------ start/stop
    def start(self, worker_env: dict[str, str], fork_server: ZygoteLauncher | None = None) -> None:
        """Adopt the fork server (``main`` starts it before this process's own imports, so the
        two warm up together; one is started here otherwise) and start the prestarted workers.

        The prestarted workers are forks: they start once the fork server is ready. Fresh
        interpreters started meanwhile would import the same runtime again on the same
        cores and be ready no sooner (the fork server has a head start on any lease).
        """
        self.pool.env = worker_env
        cfg = config()
        if fork_server is None and cfg.use_fork_server:
            fork_server = ZygoteLauncher(fork_server_log(self.pool.logs_dir, self.node.node_id))
        if fork_server is not None:
            self.pool.launcher = fork_server
            loop = asyncio.get_running_loop()
            # Its "ready" line releases the workers that waited for it (see WorkerPool.launch_ready).
            loop.add_reader(fork_server.output_fd, self._on_fork_server_output, fork_server)
            loop.call_later(cfg.fork_server_ready_timeout_s, self._fork_server_overdue, fork_server)
        self._fill_prestarted()

    def _fill_prestarted(self) -> None:
        """Start default workers until ``prestart`` of them are alive (once workers can start)."""
        if self.node.stopping or not self.pool.launch_ready():
            return
        missing = self.prestart - sum(1 for w in self.pool.alive() if not w.env_key)
        for _ in range(max(0, missing)):
            self.start_worker()

    def _on_fork_server_output(self, launcher: ZygoteLauncher) -> None:
        was_ready = launcher.ready
        launcher.read_available()
        if launcher.dead or launcher is not self.pool.launcher:
            asyncio.get_running_loop().remove_reader(launcher.output_fd)
        if launcher is not self.pool.launcher or was_ready:
            return
        if launcher.ready:
            self._fill_prestarted()
            self._on_change()
        elif launcher.dead:
            self._without_fork_server(f"the fork server exited before it was ready (see its log in {self.pool.logs_dir})")

    def _fork_server_overdue(self, launcher: ZygoteLauncher) -> None:
        """The fork server did not get ready in time: end it and start fresh interpreters."""
        if launcher.ready or launcher.dead or launcher is not self.pool.launcher:
            return
        asyncio.get_running_loop().remove_reader(launcher.output_fd)
        launcher.kill()
        self._without_fork_server(
            f"the fork server was not ready after {config().fork_server_ready_timeout_s:g}s "
            f"(see its log in {self.pool.logs_dir})"
        )

    def _without_fork_server(self, reason: str) -> None:
        logger.warning("%s; starting workers as new interpreters", reason)
        self.pool.launcher = SpawnLauncher()
        self._fill_prestarted()
        self._on_change()

    def stop(self) -> None:
        launcher = self.pool.launcher
        if isinstance(launcher, ZygoteLauncher) and not launcher.dead:
            asyncio.get_running_loop().remove_reader(launcher.output_fd)
        self.pool.stop_all(config().process_stop_timeout_s)
        self.log_monitor.poll(force=True)

    def start_worker(self, env_key: str = "") -> WorkerHandle:
        if env_key:
            ctx, env_wire = self.renv_agent.prepared(env_key)
            handle = self.pool.start_worker(env_key, ctx, env_wire)
        else:
            handle = self.pool.start_worker()
        self.log_monitor.add(handle.out_path, handle.pid, False)
        self.log_monitor.add(handle.err_path, handle.pid, True)
        return handle

    def kill(self, worker: WorkerHandle, reason: str = "") -> None:
        self.pool.kill(worker, reason)

    # ------------------------------------------------------------ registration and death
    def rpc_register_worker(self, conn: Connection, p: msg.RegisterWorker) -> msg.NodeIdentity:
        handle = self.pool.register(conn, p.worker_id, list(p.address))
        if handle is None:
            raise ValueError("unknown worker id; this worker was not started by this node daemon")
        conn.state["worker"] = handle
        self.clients.add(p.worker_id, conn, f"worker pid {handle.pid}")
        self._on_change()
        return self.clients.client_info()

    def rpc_kill_worker(self, conn: Connection, p: msg.WorkerId) -> bool:
        worker = self.pool.workers.get(p.worker_id)
        if worker is None:
            return False
        self.pool.kill(worker)
        return True

    def worker_died(self, worker: WorkerHandle) -> None:
        """Its connection dropped: end its lease, free what it was writing, report the death."""
        if worker.state is WorkerState.DEAD:
            return
        if self.table.worker_died(worker):
            self._report_now()
        self.pool.mark_dead(worker)
        self.store.free_owned_by(worker.worker_id, unsealed_only=True)
        self.log_monitor.remove(worker.out_path)
        self.log_monitor.remove(worker.err_path)
        if self.node.stopping:
            # A stopping node leaves the cluster as a whole (unregister_node): no death to report.
            logger.debug("worker %s ended while the node stops", worker.label)
            return
        self.node.background.spawn_if_open(self._report_death(worker), "report a worker death")
        self._fill_prestarted()
        self._on_change()

    async def _report_death(self, worker: WorkerHandle) -> None:
        """Tell the control service a worker died, with its exit status once it is known."""
        code = await wait_for_exit(worker, config().worker_exit_wait_s)
        detail = death_detail(worker.end_reason, code)
        worker.exit_detail = detail
        logger.info("worker %s (pid %d) died: %s", worker.worker_id.hex()[:12], worker.pid, detail)
        self.link.notify("worker_died", {"worker_id": worker.worker_id, "node_id": self.node.node_id,
                                         "pid": worker.pid, "detail": detail})

    # ------------------------------------------------------------ housekeeping
    async def housekeeping(self) -> None:
        """Forget exited workers, end surplus idle ones, fail envs whose workers crash at start."""
        before = len(self.pool.workers)
        self.pool.reap()
        await self._kill_surplus_idle()
        self.fail_envs_whose_workers_crash()
        self.renv_agent.collect({w.env_key for w in self.pool.alive()})
        if len(self.pool.workers) != before:
            self._on_change()

    async def _kill_surplus_idle(self) -> None:
        timeout = config().idle_worker_kill_s
        now = time.monotonic()
        idle = [w for w in self.pool.alive() if w.state is WorkerState.IDLE]
        # The prestarted pool is of default workers; a runtime env's idle workers all go.
        surplus = sum(1 for w in self.pool.alive() if not w.env_key) - self.prestart
        for worker in sorted(idle, key=lambda w: w.idle_since):
            if (surplus <= 0 and not worker.env_key) or now - worker.idle_since <= timeout:
                continue
            if await self._owns_objects(worker):
                continue
            if worker.state is WorkerState.IDLE:
                self.pool.kill(worker, f"idle for over {timeout:g}s beyond the pool's size")
                surplus -= 0 if worker.env_key else 1

    async def _owns_objects(self, worker: WorkerHandle) -> bool:
        """Whether an idle worker owns objects still referenced elsewhere (a task put a value and
        returned its ref): as in Ray, such a worker stays, since its exit would lose them. It is
        asked again after another idle period."""
        try:
            owns = worker.conn is None or bool(await worker.conn.call("owns_objects", None, config().worker_query_timeout_s))
        except Exception:
            owns = True
        if owns:
            worker.idle_since = time.monotonic()
        return owns

    def fail_envs_whose_workers_crash(self, limit: int = 3) -> None:
        """An env whose workers keep exiting before they register (a broken interpreter or
        package) fails its requests with the last worker's error output, instead of looping."""
        for env_key, err_paths in list(self.pool.failed_starts.items()):
            if len(err_paths) < limit:
                continue
            del self.pool.failed_starts[env_key]
            try:
                with open(err_paths[-1], errors="replace") as f:
                    tail = "\n".join(f.read().splitlines()[-20:])
            except OSError:
                tail = "(no output)"
            self.renv_agent.report_failure(
                env_key, f"{len(err_paths)} workers exited before they could start in it; the last one wrote:\n{tail}")
            self._on_change()

    async def log_loop(self) -> None:
        period = config().log_poll_period_s
        while True:
            self.log_monitor.poll()
            await asyncio.sleep(period)

    async def memory_loop(self) -> None:
        """End the newest retriable leased worker while the node's memory is above the threshold."""
        from ember.raylet import memory_monitor as mm

        cfg = config()
        if cfg.memory_usage_threshold >= 1.0:
            return
        while True:
            await asyncio.sleep(cfg.memory_monitor_period_s)
            snapshot = mm.read_memory()
            if snapshot.fraction <= cfg.memory_usage_threshold:
                continue
            leases = self.table.leases.values()
            candidates = [mm.Candidate(lease.worker.worker_id, lease.retriable, lease.granted_at)
                          for lease in leases if lease.worker.proc.poll() is None]
            victim = mm.choose_victim(candidates)
            if victim is None:
                continue
            lease = next(lease for lease in leases if lease.worker.worker_id == victim.worker_id)
            gib = 1024 ** 3
            detail = (
                f"the memory monitor of node {self.node.label} ended it because the node "
                f"used {snapshot.used / gib:.2f} GiB of {snapshot.total / gib:.2f} GiB "
                f"({100 * snapshot.fraction:.0f}%, above the threshold of {100 * cfg.memory_usage_threshold:.0f}%)"
            )
            logger.warning("killing worker pid %d: %s", lease.worker.pid, detail)
            lease.holder.notify("worker_oom_killed", {"worker_id": victim.worker_id, "detail": detail})
            self.pool.kill(lease.worker)
            # Let the kill take effect before looking again.
            await wait_for_exit(lease.worker, cfg.worker_exit_wait_s)


#: How often the exit status of a process that is not our child is looked at (no event tells us).
EXIT_POLL_PERIOD_S = 0.01


async def wait_for_exit(worker: WorkerHandle, timeout: float) -> int | None:
    """The worker process's exit code once it has exited, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    code: int | None = worker.proc.poll()
    while code is None and time.monotonic() < deadline:
        await asyncio.sleep(EXIT_POLL_PERIOD_S)
        code = worker.proc.poll()
    return code


def death_detail(end_reason: str, exit_code: int | None) -> str:
    """Why a worker died, as its death report says it."""
    if end_reason:
        return f"the node daemon ended it: {end_reason}"
    if exit_code is None:
        return "it closed its connection to the node daemon"
    if exit_code < 0:
        return f"it was killed by signal {-exit_code}"
    return f"it exited with code {exit_code}"
