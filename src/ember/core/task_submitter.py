"""Submitting tasks: resolve arguments, lease workers, push, retry.

Runs entirely on the I/O loop. Tasks are grouped by *scheduling class*
(their resource shape); each class keeps a queue and the worker leases it
holds. A lease is reused for every queued task of its class (several in
flight per worker), so the hot path is one message to the worker and one
reply, with no node-daemon or control-service round trip. Idle leases go
back to the node daemon after ``idle_lease_timeout_s``, or at once when it
asks because another request is waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from ember._private import serialization
from ember._private.config import config
from ember.core.memory_store import INLINE, Entry
from ember.core.task_state import TaskEntry, TaskStatus
from ember.exceptions import (
    ConnectionLost,
    ErrorCode,
    LocalRayletDiedError,
    NodeDiedError,
    OutOfMemoryError,
    RayError,
    RemoteError,
    RpcError,
    TaskCancelledError,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from ember.rpc import Connection

if TYPE_CHECKING:
    from ember.core.worker import CoreWorker

logger = logging.getLogger(__name__)

ARG_VALUE = 0  # [0, inline]
ARG_REF = 1  # [1, object_id, owner]           resolved by the owner before pushing
ARG_PLASMA = 2  # [2, object_id, owner, [node_id, size, raylet_address]]  read from an object store


class LeaseState:
    __slots__ = ("lease_id", "worker_id", "conn", "in_flight", "idle_timer", "dead", "pid", "raylet", "stealing", "node_death", "oom_detail", "gpu_ids")

    def __init__(self, lease_id: bytes, worker_id: bytes, conn: Connection, pid: int, raylet: Connection) -> None:
        self.raylet = raylet
        #: A steal request is out: its queued tasks are on their way back.
        self.stealing = False
        #: Set when the control service declared this lease's node dead: (node id, address, reason).
        self.node_death: tuple[bytes, str, str] | None = None
        #: Set when the memory monitor ended this lease's worker.
        self.oom_detail = ""
        self.gpu_ids: list[int] = []
        self.lease_id = lease_id
        self.worker_id = worker_id
        self.conn = conn
        self.in_flight = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.dead = False
        self.pid = pid


class SchedulingClass:
    __slots__ = ("key", "resources", "queue", "leases", "pending_requests", "infeasible", "infeasible_timer", "strategy", "renv")

    def __init__(self, key: Any, resources: dict[str, float], strategy: Any = None, renv: list[Any] | None = None) -> None:
        self.strategy = strategy
        #: [key, wire env] of the class's runtime env (part of the class key), None for the default.
        self.renv = renv
        self.key = key
        self.resources = resources
        self.queue: deque[TaskEntry] = deque()
        self.leases: list[LeaseState] = []
        self.pending_requests: set[int] = set()
        self.infeasible = ""
        self.infeasible_timer: asyncio.TimerHandle | None = None


class TaskSubmitter:
    def __init__(self, worker: CoreWorker) -> None:
        self.worker = worker
        self.tasks: dict[bytes, TaskEntry] = {}
        self.classes: dict[Any, SchedulingClass] = {}
        self._request_ids = itertools.count(1)
        self._request_class: dict[int, SchedulingClass] = {}
        cfg = config()
        self._depth = max(1, cfg.max_tasks_in_flight_per_worker)
        self._max_requests = max(1, cfg.max_pending_lease_requests)
        self._idle_timeout = cfg.idle_lease_timeout_s

    # ================================================================ intake
    def submit(self, entry: TaskEntry) -> None:
        """Called on the loop for each new task."""
        self.tasks[entry.spec["tid"]] = entry
        args = entry.spec["args"]
        refs = [(index, arg) for index, arg in enumerate(args) if arg[0] == ARG_REF]
        if not refs:
            self._enqueue(entry, "no argument to wait for")
            return
        # Count every dependency before resolving any: a ready ref calls _dep_ready at once,
        # and only the last one may enqueue the task (else it is enqueued, and run, twice).
        entry.deps_pending += len(refs)
        for index, arg in refs:
            self.worker.ownership.resolve_entry(arg[1], arg[2], partial(self._dep_ready, entry, index))

    def _dep_ready(self, entry: TaskEntry, index: int, resolved: Entry) -> None:
        if entry.done or entry.state is not TaskStatus.PENDING_ARGS_AVAIL:
            return
        kind, data = resolved
        arg = entry.spec["args"][index]
        if kind == INLINE:
            if data[0] == serialization.FLAG_ERROR:
                # An argument failed: the task fails with the same error.
                self._fail(entry, resolved, f"argument {index} failed")
                return
            entry.spec["args"][index] = [ARG_VALUE, data]
        else:
            entry.spec["args"][index] = [ARG_PLASMA, arg[1], arg[2], data]
        entry.deps_pending -= 1
        if entry.deps_pending == 0:
            self._enqueue(entry, "every argument available")

    def _enqueue(self, entry: TaskEntry, reason: str) -> None:
        entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, reason)
        cls = self.classes.get(entry.sched_key)
        if cls is None:
            cls = self.classes[entry.sched_key] = SchedulingClass(entry.sched_key, entry.resources, entry.strategy, entry.renv)
        cls.queue.append(entry)
        self._dispatch(cls)

    # ============================================================== dispatch
    def _dispatch(self, cls: SchedulingClass) -> None:
        queue = cls.queue
        # SPREAD wants one placement decision per task: no pipelining onto a lease.
        depth = 1 if cls.strategy == "SPREAD" else self._depth
        while queue:
            lease = None
            for candidate in cls.leases:
                if not candidate.dead and candidate.in_flight < depth and (
                    lease is None or candidate.in_flight < lease.in_flight
                ):
                    lease = candidate
            if lease is None:
                break
            entry = queue.popleft()
            if entry.done:
                continue
            self._push(entry, lease)
        # Tasks waiting behind a running one on a leased worker count as demand too:
        # a new lease lets _steal move them to a free worker (else they run serially).
        wanted = min(self._demand(cls), self._max_requests)
        while len(cls.pending_requests) < wanted:
            self._request_lease(cls)
        if not queue:
            self._steal(cls)
            for lease in cls.leases:
                if lease.in_flight == 0 and lease.idle_timer is None and not lease.dead:
                    lease.idle_timer = self.worker.loop.call_later(
                        self._idle_timeout, self._return_lease, cls, lease
                    )

    @staticmethod
    def _demand(cls: SchedulingClass) -> int:
        """Tasks that want a worker: queued ones, and those waiting behind a running task on a lease."""
        return len(cls.queue) + sum(max(0, l.in_flight - 1) for l in cls.leases if not l.dead)

    def _steal(self, cls: SchedulingClass) -> None:
        """An idle lease while another worker has tasks queued behind a running one: take them back."""
        if not any(l.in_flight == 0 and not l.dead for l in cls.leases):
            return
        for lease in cls.leases:
            if lease.in_flight >= 2 and not lease.stealing and not lease.dead:
                lease.stealing = True
                lease.conn.notify("steal_tasks", None)

    def _push(self, entry: TaskEntry, lease: LeaseState) -> None:
        if lease.idle_timer is not None:
            lease.idle_timer.cancel()
            lease.idle_timer = None
        entry.transition(TaskStatus.SUBMITTED_TO_WORKER, f"pushed to worker pid {lease.pid}")
        entry.lease = lease
        entry.attempt += 1
        entry.pushes += 1
        entry.spec["attempt"] = entry.pushes
        entry.spec["gpus"] = lease.gpu_ids
        lease.in_flight += 1
        fut = lease.conn.call_future("push_task", entry.spec)
        fut.add_done_callback(partial(self._on_reply, entry, lease))

    # ================================================================ leases
    def _request_lease(self, cls: SchedulingClass, raylet: Connection | None = None, request_id: int | None = None) -> None:
        if request_id is None:
            request_id = next(self._request_ids)
        raylet = raylet or self.worker.raylet
        cls.pending_requests.add(request_id)
        self._request_class[request_id] = cls
        request = {
            "request_id": request_id, "resources": cls.resources, "strategy": cls.strategy,
            "prefer": self._locality_hint(cls),
            "spilled": raylet is not self.worker.raylet,
            "retriable": any(e.retries_left != 0 for e in cls.queue) if cls.queue else True,
        }
        if cls.renv is not None:
            request["renv"] = cls.renv
        fut = raylet.call_future("request_lease", request)
        fut.add_done_callback(partial(self._on_lease_reply, cls, request_id, raylet))

    @staticmethod
    def _locality_hint(cls: SchedulingClass) -> bytes | None:
        """The node holding most of the next task's stored arguments (if they are large enough to matter)."""
        if not cls.queue:
            return None
        by_node: dict[bytes, int] = {}
        for arg in cls.queue[0].spec["args"]:
            if arg[0] == ARG_PLASMA:
                node_id, size = arg[3][0], arg[3][1]
                by_node[node_id] = by_node.get(node_id, 0) + size
        if not by_node:
            return None
        node_id, size = max(by_node.items(), key=lambda kv: kv[1])
        return node_id if size >= 1024 * 1024 else None

    def _on_lease_reply(self, cls: SchedulingClass, request_id: int, raylet: Connection, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            cls.pending_requests.discard(request_id)
            return
        exc = fut.exception()
        if exc is not None:
            cls.pending_requests.discard(request_id)
            self._request_class.pop(request_id, None)
            if isinstance(exc, RemoteError) and exc.code in (ErrorCode.TASK_UNSCHEDULABLE, ErrorCode.RUNTIME_ENV_SETUP_FAILED):
                self._fail_class(cls, exc.to_exception())
            elif raylet is not self.worker.raylet and isinstance(exc, ConnectionLost):
                self._dispatch(cls)  # that node went away: ask the local node again
            else:
                self._fail_class(cls, exc)
            return
        grant = fut.result()
        if grant.get("spillback"):
            # Keep the request counted while we ask the node it named.
            target = grant["spillback"]["address"]
            task = self.worker.background.spawn(self.worker.connect_to(target), "connect after spillback", loop=self.worker.loop)
            task.add_done_callback(partial(self._on_spillback_connected, cls, request_id))
            return
        cls.pending_requests.discard(request_id)
        self._request_class.pop(request_id, None)
        if grant.get("cancelled"):
            self._dispatch(cls)
            return
        if cls.infeasible_timer is not None:
            cls.infeasible_timer.cancel()
            cls.infeasible_timer = None
        cls.infeasible = ""
        task = self.worker.background.spawn(self.worker.connect_to(grant["address"]), "connect to a leased worker",
                                            loop=self.worker.loop)
        task.add_done_callback(partial(self._on_worker_connected, cls, grant, raylet))

    def _on_spillback_connected(self, cls: SchedulingClass, request_id: int, task: asyncio.Task[Connection]) -> None:
        cls.pending_requests.discard(request_id)
        if task.cancelled() or task.exception() is not None:
            self._request_class.pop(request_id, None)
            self._dispatch(cls)
            return
        self._request_class.pop(request_id, None)
        if not self._demand(cls):
            return
        # A new request id: node daemons answer a repeated id with their first answer (that is how a
        # resent request is told apart), so a request spilled back to a node that saw it before
        # would get the same spillback again, forever.
        self._request_lease(cls, task.result())

    def _on_worker_connected(self, cls: SchedulingClass, grant: dict[str, Any], raylet: Connection, task: asyncio.Task[Connection]) -> None:
        if task.cancelled() or task.exception() is not None:
            logger.warning("could not reach leased worker %s: %s", grant["address"], task.exception())
            raylet.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
            self._dispatch(cls)
            return
        conn = task.result()
        lease = LeaseState(grant["lease_id"], grant["worker_id"], conn, grant.get("pid", 0), raylet)
        lease.gpu_ids = grant.get("gpu_ids") or []
        cls.leases.append(lease)
        conn.add_close_callback(lambda c: self._lease_lost(cls, lease))
        self._dispatch(cls)

    def _return_lease(self, cls: SchedulingClass, lease: LeaseState) -> None:
        lease.idle_timer = None
        if lease.in_flight or lease.dead or cls.queue:
            return
        lease.dead = True
        cls.leases.remove(lease)
        lease.raylet.notify("return_lease", {"lease_id": lease.lease_id})

    def release_idle_leases(self) -> None:
        for cls in self.classes.values():
            for lease in list(cls.leases):
                if lease.in_flight == 0 and not cls.queue:
                    if lease.idle_timer is not None:
                        lease.idle_timer.cancel()
                    self._return_lease(cls, lease)

    def _lease_lost(self, cls: SchedulingClass, lease: LeaseState) -> None:
        lease.dead = True
        if lease in cls.leases:
            cls.leases.remove(lease)
        if lease.idle_timer is not None:
            lease.idle_timer.cancel()

    def on_infeasible(self, request_id: int, message: str) -> None:
        cls = self._request_class.get(request_id)
        if cls is None or cls.infeasible:
            return
        cls.infeasible = message
        names = sorted({e.name for e in cls.queue})
        print(f"WARNING: task(s) {', '.join(names[:3])} cannot be scheduled. {message}", file=sys.stderr, flush=True)
        timeout = config().infeasible_timeout_s
        if timeout > 0 and cls.infeasible_timer is None:
            cls.infeasible_timer = self.worker.loop.call_later(timeout, self._infeasible_expired, cls)

    def _infeasible_expired(self, cls: SchedulingClass) -> None:
        cls.infeasible_timer = None
        if not cls.infeasible:
            return
        error = TaskUnschedulableError(
            f"Gave up after {config().infeasible_timeout_s:g}s (EMBER_infeasible_timeout_s): {cls.infeasible}"
        )
        while cls.queue:
            self._fail(cls.queue.popleft(), self._error_entry(error), type(error).__name__)

    # ================================================================ replies
    def _on_reply(self, entry: TaskEntry, lease: LeaseState, fut: asyncio.Future[Any]) -> None:
        lease.in_flight -= 1
        lease.stealing = False
        cls = self.classes[entry.sched_key]
        if cls.strategy == "SPREAD" and lease.in_flight == 0 and not lease.dead:
            # One placement decision per task: never reuse a SPREAD lease.
            lease.dead = True
            if lease in cls.leases:
                cls.leases.remove(lease)
            lease.raylet.notify("return_lease", {"lease_id": lease.lease_id})
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self._worker_failed(entry, lease, exc)
        else:
            reply = fut.result()
            status = reply.get("s")
            if status == "ok":
                self._finish(entry, reply["r"])
            elif status == "err":
                self._task_raised(entry, reply["e"])
            elif status == "requeue":
                entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, "bounced by a blocked worker")
                entry.attempt -= 1
                cls.queue.appendleft(entry)
            elif status == "cancelled":
                self._fail(entry, self._error_entry(TaskCancelledError(entry.spec["tid"].hex())), "cancelled while running")
            elif status == "arg_lost":
                self._arg_lost(entry, reply["oid"], reply["owner"])
            else:
                self._fail(entry, self._error_entry(RayError(f"bad reply from worker: {reply!r}")), "bad reply")
        self._dispatch(cls)

    def _worker_failed(self, entry: TaskEntry, lease: LeaseState, exc: BaseException | None) -> None:
        if isinstance(exc, RemoteError):
            self._fail(entry, self._error_entry(RayError(f"the worker could not run {entry.name}: {exc}")),
                       "the worker refused the task")
            return
        # The dead attempt may have stored results in its node's store before it died: nobody would
        # ever read or free them (a retry's results are recorded where the retry ran).
        self.worker.ownership.note_dead_attempt(list(entry.return_ids), lease.raylet.peername)
        if entry.cancelled:
            self._fail(entry, self._error_entry(TaskCancelledError(entry.spec["tid"].hex())), "cancelled; its worker ended")
            return
        detail = f"pid={lease.pid}" if lease.pid else "unknown pid"
        if entry.retries_left != 0:
            if entry.retries_left > 0:
                entry.retries_left -= 1
            logger.info("worker running %s died (%s); retrying", entry.name, detail)
            if lease.oom_detail:
                # Give the node time to recover memory before the task runs again.
                delay = config().oom_retry_backoff_s * (2 ** min(entry.attempt - 1, 6))
                entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, f"worker {detail} killed for memory; retry in {delay:.1f}s")
                self.worker.loop.call_later(delay, self._requeue_later, entry)
                return
            self._requeue(entry, f"worker {detail} died; retrying")
            return
        error: RayError
        if lease.oom_detail:
            error = OutOfMemoryError(
                f"Task {entry.name}() was killed: {lease.oom_detail}. It has no retries left (max_retries). "
                "Run fewer such tasks at once, or request memory= for it so the scheduler does not "
                "pack more of them onto a node than fit; the threshold is EMBER_memory_usage_threshold."
            )
        elif lease.node_death is not None:
            node_id, address, reason = lease.node_death
            error = NodeDiedError(
                f"The node {node_id.hex()[:12]} at {address} running {entry.name}() died ({reason}), "
                "and the task has no retries left (max_retries)."
            )
        else:
            error = WorkerCrashedError(
                f"The worker running {entry.name}() ({detail}) died unexpectedly "
                f"({exc or 'connection lost'}), and the task has no retries left "
                "(max_retries). Check the worker's log in the session's logs folder for the cause "
                "(for example an out-of-memory kill or a crash in native code)."
            )
        self._fail(entry, self._error_entry(error), f"worker {detail} died, no retries left")

    def on_node_died(self, node_id: bytes, address: str, reason: str) -> None:
        """The control service declared a node dead: its leases are lost even if no socket noticed yet."""
        for cls in self.classes.values():
            for lease in list(cls.leases):
                if lease.raylet.peer_info.get("node_id") == node_id or (
                    lease.raylet is self.worker.raylet and self.worker.node_id == node_id
                ):
                    lease.node_death = (node_id, address, reason)
                    lease.conn.close(f"its node died ({reason})")

    def _task_raised(self, entry: TaskEntry, error_inline: list[Any]) -> None:
        if entry.retries_left != 0 and entry.retry_exceptions and not entry.cancelled:
            retry = entry.retry_exceptions is True
            if not retry:
                try:
                    _, err = serialization.deserialize_inline(error_inline)
                    cause = getattr(err, "cause", err)
                    retry = isinstance(cause, tuple(entry.retry_exceptions))
                except Exception:
                    retry = False
            if retry:
                if entry.retries_left > 0:
                    entry.retries_left -= 1
                self._requeue(entry, "raised; retry_exceptions allows a retry")
                return
        self._fail(entry, (INLINE, error_inline), "raised")

    def _requeue_later(self, entry: TaskEntry) -> None:
        if entry.done:
            return
        cls = self.classes[entry.sched_key]
        cls.queue.append(entry)
        self._dispatch(cls)

    def on_worker_oom_killed(self, worker_id: bytes, detail: str) -> None:
        for cls in self.classes.values():
            for lease in cls.leases:
                if lease.worker_id == worker_id:
                    lease.oom_detail = detail

    def _requeue(self, entry: TaskEntry, reason: str) -> None:
        entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, reason)
        cls = self.classes[entry.sched_key]
        cls.queue.append(entry)

    # ============================================================== results
    def _finish(self, entry: TaskEntry, returns: list[Any]) -> None:
        entry.transition(TaskStatus.FINISHED, "returned")
        # A result in an object store can be lost: keep the lineage (and the arguments) to redo it.
        in_store = any(ret[0] != 0 for ret in returns)
        self._complete(entry, release_args=not in_store)
        worker = self.worker
        if in_store:
            worker.lineage.keep(entry)
        worker.ownership.store_results(entry.spec["tid"], entry.return_ids, returns, entry.lease.conn if entry.lease else None)

    def _fail(self, entry: TaskEntry, error: Entry, reason: str) -> None:
        if entry.done:
            return
        entry.transition(TaskStatus.FAILED, reason)
        self.worker.task_events.owner_failed(entry.spec["tid"], entry.attempt, error, reason)
        self._complete(entry)
        for oid in entry.return_ids:
            self.worker.ownership.store_owned_result(oid, error)

    def resubmit(self, entry: TaskEntry) -> None:
        """Run a finished task again (lineage reconstruction); its entry is PENDING_ARGS_AVAIL."""
        self.tasks[entry.spec["tid"]] = entry
        self._enqueue(entry, "lineage reconstruction")

    def _arg_lost(self, entry: TaskEntry, object_id: bytes, owner: Any) -> None:
        """The worker could not read an argument: recover it, then run the task again."""
        entry.transition(TaskStatus.PENDING_ARGS_AVAIL, f"argument {object_id.hex()} lost; recovering it")
        entry.attempt -= 1
        indexes = [i for i, a in enumerate(entry.spec["args"]) if a[0] == ARG_PLASMA and a[1] == object_id]
        for index in indexes:
            entry.spec["args"][index] = [ARG_REF, object_id, owner]
        entry.deps_pending += len(indexes)
        worker = self.worker
        if worker.reference_counter.is_owned(object_id):
            error = worker.lineage.reconstruct(object_id)
            if error is not None:
                self._fail(entry, self._error_entry(error), "a lost argument cannot be recovered")
                return
        else:
            worker.memory_store.delete(object_id)
        for index in indexes:
            worker.ownership.resolve_entry(object_id, owner, partial(self._dep_ready, entry, index), recover=True)

    def _complete(self, entry: TaskEntry, release_args: bool = True) -> None:
        self.tasks.pop(entry.spec["tid"], None)
        if entry.arg_ids and release_args:
            self.worker.reference_counter.remove_submitted(entry.arg_ids)

    def _error_entry(self, error: BaseException) -> Entry:
        return (INLINE, serialization.serialize_error(error).to_inline())

    def _fail_class(self, cls: SchedulingClass, exc: BaseException) -> None:
        error: BaseException = exc
        if isinstance(exc, RpcError) or not isinstance(exc, RayError):
            error = LocalRayletDiedError(
                f"This process lost its node daemon ({exc}), so the task cannot be scheduled. "
                f"The daemon's log is in {self.worker.session_dir}/logs; restart the cluster (or ember.init())."
            )
        while cls.queue:
            self._fail(cls.queue.popleft(), self._error_entry(error), type(error).__name__)

    # ================================================================ cancel
    def cancel(self, task_id: bytes, force: bool, recursive: bool = False) -> bool:
        """Cancel a task this process owns; with ``recursive``, the tasks it submitted too.

        Queued: failed at once. Running: interrupted in its worker (which cancels the
        task's own children first when ``recursive``), or with ``force`` its worker is
        killed (the children it owns end with it: their leases' holder is gone).
        ``get`` raises ``TaskCancelledError`` either way, and a cancelled task is never retried.
        """
        entry = self.tasks.get(task_id)
        if entry is None or entry.done:
            return False
        entry.cancelled = True
        error = self._error_entry(TaskCancelledError(task_id.hex()))
        if entry.state is TaskStatus.PENDING_ARGS_AVAIL:
            self._fail(entry, error, "cancelled while waiting for arguments")
        elif entry.state is TaskStatus.PENDING_NODE_ASSIGNMENT:
            cls = self.classes.get(entry.sched_key)
            if cls is not None and entry in cls.queue:
                cls.queue.remove(entry)
            self._fail(entry, error, "cancelled while queued")
        else:
            lease: LeaseState = entry.lease
            if force:
                entry.force_cancel = True
                lease.raylet.notify("kill_worker", {"worker_id": lease.worker_id})
            else:
                lease.conn.notify("cancel_task", {"tid": task_id, "recursive": recursive})
        return True

    def cancel_children(self, parent_id: bytes) -> None:
        """Cancel (recursively) every unfinished task that task ``parent_id`` submitted."""
        for task_id, entry in list(self.tasks.items()):
            if entry.parent == parent_id and not entry.done:
                self.cancel(task_id, False, True)

    def rpc_infeasible(self, conn: Connection, p: dict[str, Any]) -> None:
        self.on_infeasible(p["request_id"], p["message"])

    def rpc_worker_oom_killed(self, conn: Connection, p: dict[str, Any]) -> None:
        self.on_worker_oom_killed(p["worker_id"], p["detail"])

    def rpc_release_idle_leases(self, conn: Connection, p: Any) -> None:
        self.release_idle_leases()

    def num_pending(self) -> int:
        return len(self.tasks)
