"""The core worker: the runtime inside the driver and every worker process.

It owns the objects this process creates (``put`` values and the returns of
tasks it submits), keeps their entries in the memory store and their
reference counts, submits tasks, executes tasks in a worker, and answers other
processes that ask for the objects it owns. All network I/O happens on one
event loop in a background thread; user code calls in from its own thread.

``CoreWorker`` is an assembly: each mechanism is a component that owns its
state and receives what it uses (``links.py``: connections; ``task_context.py``;
``ownership_protocol.py``: reference counting between processes;
``object_access.py``: put/get/wait; ``task_manager.py``: submitted tasks, retries and
lineage, sans-I/O; ``task_submitter.py``, ``actor_submitter.py``, ``task_executor.py``). It wires them and registers their RPC
handlers; the methods here that only delegate are the API the rest of Ember uses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ember._private import ids
from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember._private.object_ref import ObjectRef
from ember.core import metrics_recorder
from ember.core.actor_submitter import ActorCall, ActorSubmitter
from ember.core.function_manager import FunctionManager
from ember.core.generator_stream import StreamState
from ember.core.links import DRIVER, WORKER, ClusterLinks, ProcessInfo
from ember.core.memory_store import MemoryStore
from ember.core.object_access import ObjectAccess
from ember.core.ownership_protocol import OwnershipService
from ember.core.task_context import TaskContext
from ember.core.task_counts import NoTaskCounts, TaskCounts
from ember.core.task_events import TaskEventRecorder
from ember.core.task_executor import ACTOR_CALL, CREATE_ACTOR, TASK, TaskExecutor
from ember.core.task_state import TaskEntry
from ember.core.task_submitter import TaskSubmitter
from ember.exceptions import (
    ConnectionLost,
    RemoteError,
)
from ember.protocol import Service
from ember.protocol import core_worker as msg
from ember.rpc import Connection, EventLoopThread, connect, start_server
from ember.rpc.handlers import RpcHandlers

logger = logging.getLogger(__name__)

__all__ = ["DRIVER", "WORKER", "CoreWorker", "RpcHandlers"]


class CoreWorker:
    """The runtime of one driver or worker process: it assembles the components and wires them.

    ``ownership`` (reference counts, borrowing, frees, fetches from owners), ``objects``
    (put/get/wait, object-store reads and writes), ``task_manager`` (what was submitted,
    retries, lineage: plain bookkeeping), ``submitter`` / ``actor_submitter`` (leases and
    pushes on the I/O loop), ``executor`` (running pushed work, in a worker). Each receives
    what it uses; ``handlers`` answers other processes.
    """

    def __init__(
        self,
        mode: str,
        *,
        gcs_address: str,
        raylet_address: str,
        token: str,
        node_ip: str = "127.0.0.1",
        worker_id: bytes | None = None,
        namespace: str | None = None,
        log_to_driver: bool = True,
        job_config: dict[str, Any] | None = None,
    ) -> None:
        self.mode = mode
        self.gcs_address = gcs_address
        self.raylet_address = raylet_address
        self.token = token
        self.namespace = namespace
        self.log_to_driver = log_to_driver
        self.job_config = job_config or {}
        self.info = ProcessInfo(mode, worker_id or ids.random_unique_id(), node_ip)
        self.handlers = RpcHandlers(Service.CORE_WORKER)
        self.links = ClusterLinks(mode, gcs_address, token, self.handlers)
        self.context = TaskContext()
        #: Every background task this process's runtime starts on its I/O loop.
        self.background = BackgroundTasks("core worker")
        self.memory_store = MemoryStore()
        self.ownership = OwnershipService(self.info, self.links, self.memory_store, self.background)
        self.reference_counter = self.ownership.counter
        self.objects = ObjectAccess(self.info, self.links, self.context, self.memory_store, self.ownership, self.background)
        self.function_manager = FunctionManager(self.links.gcs_call)
        #: This process's tasks by state, for ray_tasks (sent with its metrics batches).
        self.task_counts: TaskCounts | NoTaskCounts = (
            TaskCounts(self, metrics_recorder.get_recorder().poke) if config().enable_metrics_collection
            else NoTaskCounts()
        )
        #: State transitions of the tasks this process submits or runs, for the state API.
        self.task_events = TaskEventRecorder(self.info, self.context, self.links)
        self.submitter = TaskSubmitter(self.info, self.links, self.ownership, self.memory_store, self.task_events,
                                       self.background)
        #: What was submitted, retries and lineage: the sans-I/O core inside the submitter.
        self.task_manager = self.submitter.manager
        self.ownership.on_owned_freed = self.task_manager.object_freed
        self.ownership.reconstruct = self.task_manager.reconstruct
        self.task_events.live_tasks = self.task_manager.pending.values
        self.actor_submitter = ActorSubmitter(self.info, self.links, self.ownership, self.task_events, self.task_counts,
                                              self.background)
        self.actor_id: bytes | None = None
        #: Generator tasks this process submitted whose items still stream in (task id -> StreamState).
        self.generators: dict[bytes, StreamState] = {}
        #: The creation spec of the actor this worker hosts (set when its constructor starts).
        self.actor_spec: msg.ActorCreationPush | None = None
        #: Lifetime of actors created without ``lifetime=`` (``JobConfig.default_actor_lifetime``).
        self.default_actor_lifetime = "non_detached"
        #: What the running task or the hosted actor holds (names as requested), for the runtime context.
        self.assigned_resources: dict[str, float] = {}
        self.gpu_ids: list[int] = []
        #: [control-service instance, sequence number] of the last log record printed here.
        self._last_log: list[Any] | None = None
        self.executor = TaskExecutor(self) if mode == WORKER else None
        if self.executor is not None:
            self.objects.bounce_queued = self.executor.bounce_queued
        self._server: asyncio.AbstractServer | None = None
        self._submit_queue: deque[TaskEntry | ActorCall] = deque()
        self._submit_scheduled = False
        self.on_raylet_lost: Callable[[], None] | None = None
        for component in (self, self.ownership, self.submitter):
            self.handlers.register(component)
        from ember.runtime_env.resolve import WORKER_ENV_VAR, EnvResolver

        #: This process's runtime env (a worker's: the one it was started in; a driver's: its job's,
        #: set by ``init``) and the effective envs of what it submits.
        parent_env = json.loads(os.environ.get(WORKER_ENV_VAR) or "{}") if mode == WORKER else {}
        self.renv = EnvResolver(parent_env, self.gcs_call, lambda: self.current_job_id)

    # ================================================================ who and where
    @property
    def worker_id(self) -> bytes:
        return self.info.worker_id

    @property
    def node_ip(self) -> str:
        return self.info.node_ip

    @property
    def address(self) -> list[Any]:
        return self.info.address

    @property
    def node_id(self) -> bytes:
        return self.info.node_id

    @property
    def store_dir(self) -> str:
        return self.info.store_dir

    @property
    def session_dir(self) -> str:
        return self.info.session_dir

    @property
    def raylet_location(self) -> list[Any]:
        return self.info.raylet_location

    @property
    def job_id(self) -> bytes:
        return self.context.job_id

    @property
    def driver_task_id(self) -> bytes:
        return self.context.driver_task_id

    @property
    def io(self) -> EventLoopThread | None:
        return self.links.io

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.links.loop

    @property
    def raylet(self) -> Connection:
        return self.links.raylet

    @property
    def gcs(self) -> Connection | None:
        return self.links.gcs

    @property
    def shutting_down(self) -> bool:
        return self.links.shutting_down

    # ================================================================ lifecycle
    def start(self) -> None:
        io = self.links.start_loop()
        io.run(self._connect(), timeout=config().connect_timeout_s + 5)

    async def _connect(self) -> None:
        info, links = self.info, self.links
        self._server = await start_server(self.handlers, self.token, info.node_ip, 0, info={"role": self.mode})
        port = self._server.sockets[0].getsockname()[1]
        info.address = [info.node_ip, port, info.worker_id]
        raylet = await connect(self.raylet_address, self.token, self.handlers, info={"role": self.mode})
        links.raylet = raylet
        if self.mode == WORKER:
            reply = await raylet.call("register_worker", {"worker_id": info.worker_id, "address": info.address})
        else:
            reply = await raylet.call("register_client", {"client_id": info.worker_id, "pid": os.getpid(), "address": info.address})
        info.node_id = reply["node_id"]
        info.raylet_location = reply["raylet_address"]
        info.store_dir = reply["store_dir"]
        info.session_dir = reply["session_dir"]
        raylet.add_close_callback(self._raylet_lost)
        links.gcs_up = asyncio.Event()
        if self.task_events.enabled:
            self.background.spawn(self.task_events.run(), "send task events", loop=self.loop)
        if self.mode == WORKER:
            # A worker may start while the control service restarts: connect in the background;
            # calls that need it (gcs_request) wait for it.
            self.background.spawn(self._reconnect_gcs(first=True), "connect to the control service", loop=self.loop)
            return
        gcs = links.gcs = await connect(self.gcs_address, self.token, self.handlers, info={"role": self.mode})
        if self.mode == DRIVER:
            job = await gcs.call("register_job", {
                "namespace": self.namespace, "pid": os.getpid(), "address": info.address,
                "entrypoint": " ".join(sys.argv),
                # Set by the job supervisor for a submitted job's driver.
                "submission_id": os.environ.get("EMBER_JOB_SUBMISSION_ID"),
            })
            self.context.job_id = job["job_id"]
            self.namespace = job["namespace"]
            self.context.driver_task_id = ids.new_task_id(self.job_id)
            await gcs.call("kv_put", {"ns": "job", "key": self.job_id, "value": json.dumps(self.job_config).encode()})
        await gcs.call("subscribe", {"channels": self._channels()})
        links.gcs_up.set()
        gcs.add_close_callback(self._gcs_lost)

    def _channels(self) -> list[str]:
        return ["logs", "nodes"] if self.mode == DRIVER and self.log_to_driver else ["nodes"]

    def _gcs_lost(self, conn: Connection) -> None:
        if self.shutting_down or conn is not self.links.gcs:
            return
        if self.links.gcs_up is not None:
            self.links.gcs_up.clear()
        logger.warning("lost the connection to the control service (%s); reconnecting", conn.close_reason)
        self.background.spawn(self._reconnect_gcs(), "reconnect to the control service", loop=self.loop)

    async def _reconnect_gcs(self, first: bool = False) -> None:
        """Wait out a control-service restart: reconnect, re-attach our job, re-subscribe.

        ``first``: a worker's first connection (made in the background), not a reconnection."""
        loop = asyncio.get_running_loop()
        cfg = config()
        timeout = cfg.gcs_reconnect_timeout_s
        deadline = loop.time() + timeout
        delay = 0.05
        while not self.shutting_down:
            try:
                conn = await connect(self.gcs_address, self.token, self.handlers, info={"role": self.mode},
                                     timeout=cfg.gcs_reconnect_attempt_timeout_s, retry=False)
                if self.mode == DRIVER:
                    await conn.call("reattach_job", {"job_id": self.job_id})
                # The log records published while we were away are sent first.
                await conn.call("subscribe", {"channels": self._channels(), "logs_after": self._last_log})
            except (ConnectionLost, OSError, RemoteError) as exc:
                if loop.time() > deadline:
                    logger.error("the control service did not come back within %gs: %s", timeout, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, cfg.gcs_reconnect_max_backoff_s)
                continue
            self.links.gcs = conn
            conn.add_close_callback(self._gcs_lost)
            assert self.links.gcs_up is not None
            self.links.gcs_up.set()
            if first:
                logger.debug("connected to the control service")
            else:
                logger.info("reconnected to the control service")
            return

    async def gcs_request(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        """Call the control service, waiting out a restart (requests must be idempotent)."""
        return await self.links.gcs_request(method, payload, timeout)

    def _raylet_lost(self, conn: Connection) -> None:
        if self.shutting_down:
            return
        if self.mode == WORKER:
            # Our node daemon is gone: nothing can reach us any more.
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(1)
        logger.error("lost the connection to the node daemon: %s", conn.close_reason)
        if self.on_raylet_lost is not None:
            self.on_raylet_lost()

    def shutdown(self) -> None:
        self.task_counts.close()
        self.task_events.close()
        io = self.links.io
        if io is None or self.shutting_down:
            return
        self.links.shutting_down = True

        async def _close() -> None:
            metrics_recorder.flush_if_used(self)
            self.task_events.flush()
            self.submitter.release_idle_leases()
            await asyncio.sleep(0)
            self.links.close_all("shutting down")
            if self._server is not None:
                self._server.close()
            await self.background.close(config().process_stop_timeout_s)

        try:
            io.run(_close(), timeout=config().core_worker_shutdown_timeout_s)
        except Exception as exc:  # best effort: the daemons may already be gone
            logger.debug("error while closing connections: %s", exc)
        io.stop()

    # ================================================================ context
    def set_gpu_ids(self, gpu_ids: list[int] | None) -> None:
        """The GPUs this worker may use now: CUDA_VISIBLE_DEVICES follows them (empty: none)."""
        gpu_ids = list(gpu_ids or [])
        if gpu_ids != self.gpu_ids or "CUDA_VISIBLE_DEVICES" not in os.environ:
            self.gpu_ids = gpu_ids
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)

    def set_task_context(self, spec: msg.CallSpec, actor_id: bytes | None = None) -> None:
        self.context.enter(spec)
        self.task_counts.running(spec["name"], spec["job"], 1)
        self.task_events.execution_started(spec, actor_id)

    def clear_task_context(self) -> list[float] | None:
        """Leave the running task; its execution's ``[start, end]`` for the reply (task events on)."""
        ctx = self.context.leave()
        if ctx is None:
            return None
        self.task_counts.running(ctx[2], ctx[1], -1)
        return self.task_events.execution_ended(ctx[0])

    @property
    def actor_placement_group(self) -> list[Any] | None:
        return self.context.actor_placement_group

    @property
    def current_placement_group(self) -> bytes | None:
        return self.context.current_placement_group

    @property
    def captured_placement_group(self) -> bytes | None:
        return self.context.captured_placement_group

    @property
    def current_task_id(self) -> bytes | None:
        return self.context.current_task_id

    @property
    def current_job_id(self) -> bytes:
        return self.context.current_job_id

    @property
    def current_task_name(self) -> str | None:
        return self.context.current_task_name

    # ================================================================ calls from user threads
    def gcs_call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        return self.links.gcs_call(method, payload, timeout)

    def raylet_call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        return self.links.raylet_call(method, payload, timeout)

    async def connect_to(self, address: list[Any]) -> Connection:
        """A (cached) connection to another core worker."""
        return await self.links.connect_to(address)

    # ================================================================ objects (see ObjectAccess)
    def put(self, value: Any) -> ObjectRef:
        return self.objects.put(value)

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        return self.objects.get(refs, timeout)

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None,
             fetch_local: bool) -> tuple[list[ObjectRef], list[ObjectRef]]:
        return self.objects.wait(refs, num_returns, timeout, fetch_local)

    def get_future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        return self.objects.get_future(ref)

    def object_from_coroutine(self, make_coro: Callable[[], Awaitable[Any]]) -> ObjectRef:
        return self.objects.object_from_coroutine(make_coro)

    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                    fname: str) -> tuple[list[Any], list[str], list[bytes]]:
        return self.objects.encode_args(args, kwargs, fname)

    def register_owned_actor(self, actor_id: bytes, auto_destroy: bool, creation_arg_ids: list[bytes] | None = None) -> None:
        self.ownership.register_owned_actor(actor_id, auto_destroy, creation_arg_ids)

    # ================================================================ tasks
    def submit_task(self, entry: TaskEntry | ActorCall) -> None:
        """Hand a task to the loop; many submissions share one wake-up."""
        self._submit_queue.append(entry)
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self.loop.call_soon_threadsafe(self._drain_submissions)

    def _drain_submissions(self) -> None:
        self._submit_scheduled = False
        queue = self._submit_queue
        submit = self.submitter.submit
        submit_actor = self.actor_submitter.submit
        while queue:
            item = queue.popleft()
            if isinstance(item, ActorCall):
                submit_actor(item)
            else:
                submit(item)

    def submit_actor_call(
        self, actor_id: bytes, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
        num_returns: int | str, group: str | None, name: str, max_task_retries: int, backpressure: int = 0,
    ) -> list[Any]:
        from ember.core.generator_stream import generator_mode, start_stream

        task_id = ids.new_task_id(self.current_job_id)
        mode = generator_mode(num_returns)
        nret = 1 if mode else int(num_returns)
        return_ids = [ids.return_object_id(task_id, i + 1) for i in range(nret)]
        wire_args, kw_names, arg_ids = self.objects.encode_args(args, kwargs, name)
        address = self.address
        spec: msg.ActorCallSpec = {
            "tid": task_id, "job": self.current_job_id, "aid": actor_id, "m": method,
            "args": wire_args, "kw": kw_names, "nret": nret, "rids": return_ids,
            "owner": address, "name": name,
        }
        if mode:
            spec["gen"] = mode
        if group:
            spec["cg"] = group
        counter = self.reference_counter
        for rid in return_ids:
            counter.add_owned(rid, address)
        # A pending call keeps its actor alive (as in Ray: `get(A.remote().f.remote())` works);
        # released with the argument refs when the call completes.
        counter.add_submitted([actor_id], lambda _: None)
        arg_ids = [*arg_ids, actor_id]
        refs = [ObjectRef(rid, address) for rid in return_ids]
        if mode:
            refs = [start_stream(self, task_id, refs[0], mode, backpressure)]
        self.submit_task(ActorCall(spec, return_ids, max_task_retries, arg_ids))
        return refs

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        """Cancel the task that creates ``ref``: here if this process owns it, else at its owner
        (a task submitted by another task: its ref reached this process)."""
        task_id = ids.task_id_of(ref._id)
        owner = ref._owner
        if owner is None or list(owner) == list(self.address):
            self.loop.call_soon_threadsafe(self.cancel_owned, task_id, force, recursive)
            return
        payload = {"tid": task_id, "force": bool(force), "recursive": bool(recursive)}

        async def forward() -> None:
            try:
                conn = await self.links.connect_to(owner)
            except ConnectionLost:
                return  # the owner is gone, and its tasks with it
            conn.notify("cancel_owned_task", payload)

        self.links.run(forward())

    # ================================================================ RPC handlers
    def rpc_push_task(self, conn: Connection, spec: msg.TaskSpec) -> asyncio.Future[msg.PushReply]:
        if self.executor is None:
            raise ValueError("this process does not execute tasks")
        return self.executor.push(TASK, spec)

    def rpc_create_actor(self, conn: Connection, spec: msg.ActorCreationPush) -> asyncio.Future[msg.PushReply]:
        if self.executor is None or self.executor.actor is not None:
            raise ValueError("this process cannot host an actor")
        return self.executor.push(CREATE_ACTOR, spec)

    def rpc_push_actor_task(self, conn: Connection, spec: msg.ActorCallSpec) -> asyncio.Future[msg.PushReply]:
        if self.executor is None:
            raise ValueError("this process does not host an actor")
        return self.executor.push(ACTOR_CALL, spec)

    def rpc_generator_item(self, conn: Connection, p: msg.GeneratorItem) -> Any:
        """An item of a generator task this process submitted (answered when the executor may go on)."""
        from ember.core.generator_stream import on_item

        return on_item(self, p, conn)

    def rpc_steal_tasks(self, conn: Connection, p: None) -> None:
        if self.executor is not None:
            self.executor.bounce_queued()

    def rpc_cancel_task(self, conn: Connection, p: msg.CancelTask) -> None:
        """The owner of the task running here cancels it (and, recursively, what it submitted)."""
        if self.executor is not None:
            if p.recursive:
                self.submitter.cancel_children(p.task_id)
            self.executor.cancel(p.task_id)

    def rpc_cancel_owned_task(self, conn: Connection, p: msg.CancelOwnedTask) -> None:
        """Another process asks this owner to cancel one of its tasks (``ember.cancel`` of a ref it got)."""
        self.cancel_owned(p.task_id, p.force, p.recursive)

    def cancel_owned(self, task_id: bytes, force: bool, recursive: bool) -> None:
        """On the loop: cancel a task or an actor call this process submitted."""
        if not self.submitter.cancel(task_id, force, recursive):
            self.actor_submitter.cancel(task_id, recursive)

    def rpc_pub(self, conn: Connection, message: msg.Publication) -> None:
        channel, data = message.channel, message.data
        if channel == "logs":
            self._print_logs(data)
        elif channel == "nodes" and not data.get("Alive"):
            node_id = bytes.fromhex(data["NodeID"])
            address = f"{data['NodeManagerAddress']}:{data['NodeManagerPort']}"
            reason = data.get("DeathReason") or "unknown reason"
            if self.mode == DRIVER:
                logger.warning("node %s at %s died: %s", node_id.hex()[:12], address, reason)
            self.submitter.on_node_died(node_id, address, reason)

    def _print_logs(self, record: dict[str, Any]) -> None:
        if "seq" in record:
            self._last_log = [record.get("gcs"), record["seq"]]
        job = record.get("job", "")
        if job and job != self.job_id.hex():
            return
        fn = record.get("fn") or ""
        prefix = f"({fn} pid={record['pid']}) " if fn else f"(pid={record['pid']}) "
        out = sys.stderr if record.get("err") else sys.stdout
        try:
            out.write("".join(prefix + line + "\n" for line in record["lines"]))
            out.flush()
        except (OSError, ValueError):
            pass

    def rpc_cluster_warning(self, conn: Connection, p: msg.ClusterWarning) -> None:
        """The control service warns this driver (an actor or placement group that cannot be placed)."""
        print(f"WARNING: {p.message}", file=sys.stderr, flush=True)

    def rpc_ping(self, conn: Connection, p: None) -> str:
        return "pong"
