"""The core worker: the runtime inside the driver and every worker process.

It owns the objects this process creates (``put`` values and the returns of
tasks it submits), keeps their entries in the memory store and their
reference counts, submits tasks (``TaskSubmitter``), executes tasks in a
worker (``TaskExecutor``), and answers other processes that ask for the
objects it owns. All network I/O happens on one event loop in a background
thread; user code calls in from its own thread.

The reference-counting protocol lives in ``ownership_protocol.py`` and
put/get/wait in ``object_access.py``; both are mixed into ``CoreWorker``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import sys
from collections import deque
from typing import Any

from ember._private import ids
from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember._private.object_ref import ObjectRef, is_counted
from ember.core import metrics_recorder
from ember.core.actor_submitter import ActorCall, ActorSubmitter
from ember.core.function_manager import FunctionManager
from ember.core.lineage import Lineage
from ember.core.memory_store import PLASMA, MemoryStore
from ember.core.object_access import ObjectAccess
from ember.core.ownership_protocol import OwnershipProtocol
from ember.core.reference_counter import ReferenceCounter
from ember.core.task_counts import NoTaskCounts, TaskCounts
from ember.core.task_events import TaskEventRecorder
from ember.core.task_executor import ACTOR_CALL, CREATE_ACTOR, TASK, TaskExecutor
from ember.core.task_state import TaskEntry
from ember.core.task_submitter import ARG_REF, ARG_VALUE, TaskSubmitter
from ember.exceptions import (
    ConnectionLost,
    RemoteError,
)
from ember.rpc import Connection, EventLoopThread, connect, start_server

logger = logging.getLogger(__name__)

DRIVER = "driver"
WORKER = "worker"


#: (task id, job id, task name) of the task running in this thread / coroutine.
_task_context: contextvars.ContextVar[tuple[bytes, bytes, str] | None] = contextvars.ContextVar(
    "ember_task_context", default=None
)
#: [placement group id, capture children] of the running task, or None.
_task_placement_group: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "ember_task_placement_group", default=None
)


class CoreWorker(OwnershipProtocol, ObjectAccess):
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
        self.node_ip = node_ip
        self.worker_id = worker_id or ids.random_unique_id()
        self.namespace = namespace
        self.log_to_driver = log_to_driver
        self.job_config = job_config or {}
        self.job_id = b"\0\0\0\0"
        self.node_id = b""
        self.store_dir = ""
        self.session_dir = ""
        self.address: list[Any] = []
        self.memory_store = MemoryStore()
        self.reference_counter = ReferenceCounter(self._on_free, self._wake_drain, self.worker_id)
        #: Refs held on behalf of stored values that contain them (object id -> refs).
        self._contained: dict[bytes, list[Any]] = {}
        #: Refs inside task results we sent, held until the caller has taken them over.
        self._handoffs: dict[bytes, list[Any]] = {}
        self._pending_unborrows: list[tuple[bytes, Any]] = []
        self._registrations: dict[bytes, list[Any]] = {}
        self.function_manager = FunctionManager(self)
        #: Every background task this process's runtime starts on its I/O loop.
        self.background = BackgroundTasks("core worker")
        self.submitter = TaskSubmitter(self)
        self.lineage = Lineage(self)
        self.actor_submitter = ActorSubmitter(self)
        self.actor_id: bytes | None = None
        #: Generator tasks this process submitted whose items still stream in (task id -> StreamState).
        self.generators: dict[bytes, Any] = {}
        #: [placement group id, capture children] of this actor, or None.
        self.actor_placement_group: list[Any] | None = None
        #: The creation spec of the actor this worker hosts (set when its constructor starts).
        self.actor_spec: dict[str, Any] | None = None
        #: Lifetime of actors created without ``lifetime=`` (``JobConfig.default_actor_lifetime``).
        self.default_actor_lifetime = "non_detached"
        #: What the running task or the hosted actor holds (names as requested), for the runtime context.
        self.assigned_resources: dict[str, float] = {}
        self.gpu_ids: list[int] = []
        self._auto_destroy_actors: set[bytes] = set()
        #: [control-service instance, sequence number] of the last log record printed here.
        self._last_log: list[Any] | None = None
        self._creation_args: dict[bytes, list[bytes]] = {}
        self.executor = TaskExecutor(self) if mode == WORKER else None
        #: This process's tasks by state, for ray_tasks (sent with its metrics batches).
        self.task_counts: TaskCounts | NoTaskCounts = (
            TaskCounts(self, metrics_recorder.get_recorder().poke) if config().enable_metrics_collection
            else NoTaskCounts()
        )
        #: State transitions of the tasks this process submits or runs, for the state API.
        self.task_events = TaskEventRecorder(self)
        self.io: EventLoopThread | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.raylet: Connection = None  # type: ignore[assignment]
        self.gcs: Connection = None  # type: ignore[assignment]
        self._server: asyncio.AbstractServer | None = None
        self._peers: dict[tuple[str, int], asyncio.Future[Connection]] = {}
        self._fetching: set[bytes] = set()
        self._submit_queue: deque[TaskEntry] = deque()
        self._submit_scheduled = False
        self._pending_frees: list[tuple[bytes, Any]] = []
        #: Results of task attempts whose worker died: the nodes where a copy may have been
        #: stored anyway (the worker's last messages can reach its node after the owner's
        #: first free). Freed there again when the owner frees the object.
        self._dead_attempt_copies: dict[bytes, set[tuple[str, int]]] = {}
        self.driver_task_id = b""
        self.shutting_down = False
        self._inline_limit = config().max_direct_call_object_size
        self.on_raylet_lost: Any = None
        from ember.runtime_env.resolve import WORKER_ENV_VAR, EnvResolver

        #: This process's runtime env (a worker's: the one it was started in; a driver's: its job's,
        #: set by ``init``) and the effective envs of what it submits.
        parent_env = json.loads(os.environ.get(WORKER_ENV_VAR) or "{}") if mode == WORKER else {}
        self.renv = EnvResolver(parent_env, self.gcs_call, lambda: self.current_job_id)

    # ================================================================ lifecycle
    def start(self) -> None:
        self.io = EventLoopThread("ember-io")
        self.loop = self.io.loop
        self.io.run(self._connect(), timeout=config().connect_timeout_s + 5)

    async def _connect(self) -> None:
        self._server = await start_server(self, self.token, self.node_ip, 0, info={"role": self.mode})
        port = self._server.sockets[0].getsockname()[1]
        self.address = [self.node_ip, port, self.worker_id]
        self.raylet = await connect(self.raylet_address, self.token, self, info={"role": self.mode})
        if self.mode == WORKER:
            info = await self.raylet.call("register_worker", {"worker_id": self.worker_id, "address": self.address})
        else:
            info = await self.raylet.call("register_client", {"client_id": self.worker_id, "pid": os.getpid(), "address": self.address})
        self.node_id = info["node_id"]
        self.raylet_location = info["raylet_address"]
        self.store_dir = info["store_dir"]
        self.session_dir = info["session_dir"]
        self.raylet.add_close_callback(self._raylet_lost)
        self._gcs_up = asyncio.Event()
        if self.task_events.enabled:
            self.background.spawn(self.task_events.run(), "send task events", loop=self.loop)
        if self.mode == WORKER:
            # A worker may start while the control service restarts: connect in the background;
            # calls that need it (gcs_request) wait for it.
            self.gcs = None  # type: ignore[assignment]
            self.background.spawn(self._reconnect_gcs(), "connect to the control service", loop=self.loop)
            return
        self.gcs = await connect(self.gcs_address, self.token, self, info={"role": self.mode})
        if self.mode == DRIVER:
            job = await self.gcs.call("register_job", {
                "namespace": self.namespace, "pid": os.getpid(), "address": self.address,
                "entrypoint": " ".join(sys.argv),
                # Set by the job supervisor for a submitted job's driver.
                "submission_id": os.environ.get("EMBER_JOB_SUBMISSION_ID"),
            })
            self.job_id = job["job_id"]
            self.namespace = job["namespace"]
            self.driver_task_id = ids.new_task_id(self.job_id)
            await self.gcs.call("kv_put", {"ns": "job", "key": self.job_id, "value": json.dumps(self.job_config).encode()})
        await self.gcs.call("subscribe", {"channels": self._channels()})
        self._gcs_up.set()
        self.gcs.add_close_callback(self._gcs_lost)

    def _channels(self) -> list[str]:
        return ["logs", "nodes"] if self.mode == DRIVER and self.log_to_driver else ["nodes"]

    def _gcs_lost(self, conn: Connection) -> None:
        if self.shutting_down or conn is not self.gcs:
            return
        self._gcs_up.clear()
        logger.warning("lost the connection to the control service (%s); reconnecting", conn.close_reason)
        self.background.spawn(self._reconnect_gcs(), "reconnect to the control service", loop=self.loop)

    async def _reconnect_gcs(self) -> None:
        """Wait out a control-service restart: reconnect, re-attach our job, re-subscribe."""
        loop = asyncio.get_running_loop()
        timeout = config().gcs_reconnect_timeout_s
        deadline = loop.time() + timeout
        delay = 0.05
        while not self.shutting_down:
            try:
                conn = await connect(self.gcs_address, self.token, self, info={"role": self.mode}, timeout=2.0, retry=False)
                if self.mode == DRIVER:
                    await conn.call("reattach_job", {"job_id": self.job_id})
                # The log records published while we were away are sent first.
                await conn.call("subscribe", {"channels": self._channels(), "logs_after": self._last_log})
            except (ConnectionLost, OSError, RemoteError) as exc:
                if loop.time() > deadline:
                    logger.error("the control service did not come back within %gs: %s", timeout, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.gcs = conn
            conn.add_close_callback(self._gcs_lost)
            self._gcs_up.set()
            logger.info("reconnected to the control service")
            return

    async def gcs_request(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        """Call the control service, waiting out a restart (requests must be idempotent)."""
        wait = config().gcs_reconnect_timeout_s
        while True:
            if not self._gcs_up.is_set():
                try:
                    await asyncio.wait_for(self._gcs_up.wait(), wait)
                except asyncio.TimeoutError:
                    raise ConnectionLost(f"the control service has been unreachable for {wait:g}s") from None
            conn = self.gcs
            try:
                return await conn.call(method, payload, timeout)
            except ConnectionLost:
                if self.shutting_down:
                    raise
                if conn is self.gcs and not conn.closed:
                    raise  # a timeout, not a lost connection
                await asyncio.sleep(0)

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
        if self.io is None or self.shutting_down:
            return
        self.shutting_down = True

        async def _close() -> None:
            metrics_recorder.flush_if_used(self)
            self.task_events.flush()
            self.submitter.release_idle_leases()
            await asyncio.sleep(0)
            for conn in [self.raylet, self.gcs]:
                if conn is not None:
                    conn.close("shutting down")
            for fut in self._peers.values():
                if fut.done() and not fut.exception():
                    fut.result().close("shutting down")
            if self._server is not None:
                self._server.close()
            await self.background.close(config().process_stop_timeout_s)

        try:
            self.io.run(_close(), timeout=5)
        except Exception as exc:  # best effort: the daemons may already be gone
            logger.debug("error while closing connections: %s", exc)
        self.io.stop()

    # ================================================================ context
    def set_gpu_ids(self, gpu_ids: list[int] | None) -> None:
        """The GPUs this worker may use now: CUDA_VISIBLE_DEVICES follows them (empty: none)."""
        gpu_ids = list(gpu_ids or [])
        if gpu_ids != self.gpu_ids or "CUDA_VISIBLE_DEVICES" not in os.environ:
            self.gpu_ids = gpu_ids
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)

    def set_task_context(self, spec: dict[str, Any]) -> None:
        _task_context.set((spec["tid"], spec["job"], spec["name"]))
        self.task_counts.running(spec["name"], spec["job"], 1)
        self.task_events.execution_started(spec)
        _task_placement_group.set(spec.get("pg_group"))

    def clear_task_context(self) -> None:
        ctx = _task_context.get()
        if ctx is not None:
            self.task_counts.running(ctx[2], ctx[1], -1)
            self.task_events.execution_ended(ctx[0])
        _task_context.set(None)
        _task_placement_group.set(None)

    @property
    def current_placement_group(self) -> bytes | None:
        """The group the running task or this actor runs in, if any."""
        group = _task_placement_group.get() or self.actor_placement_group
        return group[0] if group else None

    @property
    def captured_placement_group(self) -> bytes | None:
        """The group the running task or this actor puts its children in
        (``placement_group_capture_child_tasks=True``), if any."""
        group = _task_placement_group.get() or self.actor_placement_group
        return group[0] if group and group[1] else None

    @property
    def current_task_id(self) -> bytes | None:
        ctx = _task_context.get()
        return ctx[0] if ctx else None

    @property
    def current_job_id(self) -> bytes:
        ctx = _task_context.get()
        return ctx[1] if ctx else self.job_id

    @property
    def current_task_name(self) -> str | None:
        ctx = _task_context.get()
        return ctx[2] if ctx else None

    def _put_parent_task(self) -> bytes:
        return self.current_task_id or self.driver_task_id or ids.new_task_id(self.current_job_id)

    # ================================================================ loop helpers
    def gcs_call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        assert self.io is not None
        return self.io.run(self.gcs_request(method, payload, timeout))

    def raylet_call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        assert self.io is not None
        return self.io.run(self.raylet.call(method, payload, timeout))

    async def connect_to(self, address: list[Any]) -> Connection:
        """A (cached) connection to another core worker."""
        key = (address[0], address[1])
        fut = self._peers.get(key)
        if fut is not None:
            if not fut.done():
                return await asyncio.shield(fut)
            if fut.exception() is None and not fut.result().closed:
                return fut.result()
        fut = self.loop.create_future()
        self._peers[key] = fut
        try:
            try:
                conn = await connect(key, self.token, self, info={"role": self.mode}, timeout=5.0, retry=False)
            except ConnectionLost as exc:
                # A core worker listens before its address is ever handed out: a refusal means
                # the process is gone (an owner that died), so fail now rather than retry for 5 s.
                if isinstance(exc.__cause__, ConnectionRefusedError):
                    raise
                conn = await connect(key, self.token, self, info={"role": self.mode}, timeout=5.0)
        except BaseException as exc:
            self._peers.pop(key, None)
            fut.set_exception(exc)
            fut.exception()
            raise
        fut.set_result(conn)
        return conn

    def _wake_drain(self) -> None:
        self.loop.call_soon_threadsafe(self.reference_counter.drain)

    # ================================================================ tasks
    def submit_task(self, entry: TaskEntry) -> None:
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
            if type(item) is ActorCall:
                submit_actor(item)
            else:
                submit(item)

    def _notify_gcs(self, method: str, payload: Any) -> None:
        if self.gcs is not None and not self.gcs.closed:
            self.gcs.notify(method, payload)

    def submit_actor_call(
        self, actor_id: bytes, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
        num_returns: int | str, group: str | None, name: str, max_task_retries: int, backpressure: int = 0,
    ) -> list[Any]:
        from ember.core.generator_stream import generator_mode, start_stream

        task_id = ids.new_task_id(self.current_job_id)
        mode = generator_mode(num_returns)
        nret = 1 if mode else num_returns
        return_ids = [ids.return_object_id(task_id, i + 1) for i in range(nret)]
        wire_args, kw_names, arg_ids = self.encode_args(args, kwargs, name)
        address = self.address
        spec = {
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
        self.submit_task(ActorCall(spec, return_ids, max_task_retries, arg_ids))  # type: ignore[arg-type]
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
                conn = await self.connect_to(owner)
            except ConnectionLost:
                return  # the owner is gone, and its tasks with it
            conn.notify("cancel_owned_task", payload)

        assert self.io is not None
        self.io.run(forward())

    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any], fname: str) -> tuple[list[Any], list[str], list[bytes]]:
        """Task arguments in wire form, plus the ids of refs the task depends on."""
        wire: list[Any] = []
        ref_ids: list[bytes] = []
        nested_owners: dict[bytes, Any] = {}
        names = list(kwargs)
        values = list(args) + [kwargs[k] for k in names]
        for position, value in enumerate(values):
            if isinstance(value, ObjectRef):
                wire.append([ARG_REF, value._id, value._owner])
                ref_ids.append(value._id)
                continue
            what = (
                f"argument {position} of {fname}()" if position < len(args)
                else f"keyword argument {names[position - len(args)]!r} of {fname}()"
            )
            obj = self.serialize_value(value, what)
            if obj.nested_refs:
                # Held as submitted until the task ends: by then the executor has registered as a borrower.
                for r in obj.nested_refs:
                    if is_counted(r):
                        ref_ids.append(r._id)
                        nested_owners[r._id] = r._owner
            if obj.total_bytes < self._inline_limit:
                wire.append([ARG_VALUE, obj.to_inline()])
            else:
                ref = self._store_put(ids.put_object_id(self._put_parent_task()), obj)
                wire.append([ARG_REF, ref._id, ref._owner])
                ref_ids.append(ref._id)
        if ref_ids:
            owners = {r[1]: r[2] for r in wire if r[0] == ARG_REF}
            owners.update(nested_owners)
            self.reference_counter.add_submitted(ref_ids, owners.__getitem__)
        return wire, names, ref_ids

    # ================================================================ RPC handlers
    def rpc_push_task(self, conn: Connection, spec: dict[str, Any]) -> Any:
        if self.executor is None:
            raise ValueError("this process does not execute tasks")
        return self.executor.push(TASK, spec)

    def rpc_create_actor(self, conn: Connection, spec: dict[str, Any]) -> Any:
        if self.executor is None or self.executor.actor is not None:
            raise ValueError("this process cannot host an actor")
        return self.executor.push(CREATE_ACTOR, spec)

    def rpc_push_actor_task(self, conn: Connection, spec: dict[str, Any]) -> Any:
        if self.executor is None:
            raise ValueError("this process does not host an actor")
        return self.executor.push(ACTOR_CALL, spec)

    def rpc_generator_item(self, conn: Connection, p: dict[str, Any]) -> Any:
        """An item of a generator task this process submitted (answered when the executor may go on)."""
        from ember.core.generator_stream import on_item

        return on_item(self, p, conn)

    def rpc_steal_tasks(self, conn: Connection, p: Any) -> None:
        if self.executor is not None:
            self.executor.bounce_queued()

    def rpc_cancel_task(self, conn: Connection, p: dict[str, Any]) -> None:
        """The owner of the task running here cancels it (and, recursively, what it submitted)."""
        if self.executor is not None:
            if p.get("recursive"):
                self.submitter.cancel_children(p["tid"])
            self.executor.cancel(p["tid"])

    def rpc_cancel_owned_task(self, conn: Connection, p: dict[str, Any]) -> None:
        """Another process asks this owner to cancel one of its tasks (``ember.cancel`` of a ref it got)."""
        self.cancel_owned(p["tid"], bool(p.get("force")), bool(p.get("recursive")))

    def cancel_owned(self, task_id: bytes, force: bool, recursive: bool) -> None:
        """On the loop: cancel a task or an actor call this process submitted."""
        if not self.submitter.cancel(task_id, force, recursive):
            self.actor_submitter.cancel(task_id, recursive)

    def rpc_infeasible(self, conn: Connection, p: dict[str, Any]) -> None:
        self.submitter.on_infeasible(p["request_id"], p["message"])

    def rpc_worker_oom_killed(self, conn: Connection, p: dict[str, Any]) -> None:
        self.submitter.on_worker_oom_killed(p["worker_id"], p["detail"])

    def rpc_release_idle_leases(self, conn: Connection, p: Any) -> None:
        self.submitter.release_idle_leases()

    def rpc_pub(self, conn: Connection, message: list[Any]) -> None:
        channel, data = message
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

    def rpc_memory_table(self, conn: Connection, p: Any) -> dict[str, Any]:
        """What this process references, for ``ember memory``."""
        counter = self.reference_counter
        borrowers = counter.borrower_counts()
        contained: set[bytes] = {r._id for refs in self._contained.values() for r in refs}
        rows = []
        for oid, (local, submitted, owned) in counter.snapshot().items():
            if len(oid) == ids.UNIQUE_ID_LEN:
                kind, size = "ACTOR_HANDLE", 0
            else:
                entry = self.memory_store.get(oid)
                size = 0
                in_store = False
                if entry is not None:
                    in_store = entry[0] == PLASMA
                    size = entry[1][1] if in_store else sum(len(b) for b in [entry[1][1], *entry[1][2]])
                if submitted > 0:
                    kind = "USED_BY_PENDING_TASK"
                elif oid in contained and local <= 1:
                    kind = "CAPTURED_IN_OBJECT"
                elif owned and in_store:
                    kind = "PINNED_IN_MEMORY"
                else:
                    kind = "LOCAL_REFERENCE"
            rows.append({
                "object_id": oid.hex(), "size": size, "reference_type": kind, "owned": owned,
                "local": local, "submitted": submitted, "borrowers": borrowers.get(oid, 0),
                "call_site": counter.call_sites.get(oid, "disabled" if not counter.record_sites else ""),
            })
        return {"pid": os.getpid(), "worker_id": self.worker_id.hex(), "node_id": self.node_id.hex(),
                "mode": self.mode, "ip": self.node_ip, "objects": rows}

    def rpc_owns_objects(self, conn: Connection, p: Any) -> bool:
        """Whether this process owns objects (or actors) still referenced: its node daemon keeps it then."""
        return any(owned for (_local, _submitted, owned) in self.reference_counter.snapshot().values())

    def rpc_ping(self, conn: Connection, p: Any) -> str:
        return "pong"
