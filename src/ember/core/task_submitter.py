"""Submitting tasks: the I/O shell around ``TaskManager`` — leases, pushes, timers.

Runs entirely on the I/O loop. ``TaskManager`` (sans-I/O) decides what happens to
each task; this shell performs its actions and turns what the network says into its
events. Tasks are grouped by *scheduling class* (their resource shape); each class
keeps a queue and the worker leases it holds. A lease is reused for every queued task
of its class (several in flight per worker), so the hot path is one message to the
worker and one reply, with no node-daemon or control-service round trip. Idle leases
go back to the node daemon after ``idle_lease_timeout_s``, or at once when it asks
because another request is waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember.core.links import ClusterLinks, ProcessInfo
from ember.core.memory_store import Entry, MemoryStore
from ember.core.ownership_protocol import OwnershipService
from ember.core.task_manager import ARG_PLASMA, ARG_REF, ARG_VALUE, TaskManager, WorkerDeath
from ember.core.task_state import TaskEntry, TaskStatus
from ember.exceptions import (
    ConnectionLost,
    ErrorCode,
    LocalRayletDiedError,
    RayError,
    RemoteError,
    RpcError,
    TaskUnschedulableError,
)
from ember.protocol.core_worker import Infeasible, PushReply, WorkerOomKilled
from ember.protocol.raylet import LeaseReply
from ember.rpc import Connection

if TYPE_CHECKING:
    from ember.core.task_events import TaskEventRecorder

logger = logging.getLogger(__name__)

__all__ = ["ARG_PLASMA", "ARG_REF", "ARG_VALUE", "LeaseState", "SchedulingClass", "TaskSubmitter"]


class LeaseState:
    __slots__ = ("lease_id", "worker_id", "conn", "in_flight", "idle_timer", "dead", "pid", "raylet", "stealing", "node_death", "oom_detail", "gpu_ids",
                 "node_id")

    def __init__(self, lease_id: bytes, worker_id: bytes, conn: Connection, pid: int, raylet: Connection,
                 node_id: bytes | None = None) -> None:
        self.raylet = raylet
        #: The node of the leased worker.
        self.node_id = node_id
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
    __slots__ = ("key", "resources", "queue", "leases", "pending_requests", "infeasible", "infeasible_timer", "strategy", "renv",
                 "claims")

    def __init__(self, key: Any, resources: dict[str, float], strategy: Any = None, renv: list[Any] | None = None) -> None:
        self.strategy = strategy
        #: [key, wire env] of the class's runtime env (part of the class key), None for the default.
        self.renv = renv
        self.key = key
        self.resources = resources
        self.queue: deque[TaskEntry] = deque()
        self.leases: list[LeaseState] = []
        self.pending_requests: set[int] = set()
        #: SPREAD only: lease request id -> the queued task it was asked for, from the request until
        #: its lease is connected (or the request ends). The policy decides where each request goes,
        #: so a claimed task runs on its own request's lease only: otherwise the leases that come
        #: back first (the local node's) would run every task and SPREAD would not spread.
        self.claims: dict[int, TaskEntry] = {}
        self.infeasible = ""
        self.infeasible_timer: asyncio.TimerHandle | None = None


class TaskSubmitter:
    """Performs ``TaskManager``'s actions (``TaskActions``) and feeds it what the network says."""

    def __init__(self, info: ProcessInfo, links: ClusterLinks, ownership: OwnershipService, store: MemoryStore,
                 events: TaskEventRecorder, background: BackgroundTasks) -> None:
        self.info = info
        self.links = links
        self.ownership = ownership
        self.store = store
        self.events = events
        self.background = background
        cfg = config()
        self.manager = TaskManager(ownership.counter, self, cfg.oom_retry_backoff_s)
        self.classes: dict[Any, SchedulingClass] = {}
        self._request_ids = itertools.count(1)
        self._request_class: dict[int, SchedulingClass] = {}
        self._depth = max(1, cfg.max_tasks_in_flight_per_worker)
        self._max_requests = max(1, cfg.max_pending_lease_requests)
        self._idle_timeout = cfg.idle_lease_timeout_s

    @property
    def tasks(self) -> dict[bytes, TaskEntry]:
        """Submitted and unfinished tasks by id."""
        return self.manager.pending

    def submit(self, entry: TaskEntry) -> None:
        """Called on the loop for each new task."""
        self.manager.submit(entry)

    # ============================================================== TaskActions
    def resolve(self, entry: TaskEntry, index: int, object_id: bytes, owner: Any, recover: bool) -> None:
        self.ownership.resolve_entry(object_id, owner, partial(self.manager.arg_ready, entry, index), recover)

    def enqueue(self, entry: TaskEntry) -> None:
        cls = self.classes.get(entry.sched_key)
        if cls is None:
            cls = self.classes[entry.sched_key] = SchedulingClass(entry.sched_key, entry.resources, entry.strategy, entry.renv)
        cls.queue.append(entry)
        self._dispatch(cls)

    def requeue(self, entry: TaskEntry, front: bool) -> None:
        queue = self.classes[entry.sched_key].queue
        if front:
            queue.appendleft(entry)
        else:
            queue.append(entry)

    def requeue_later(self, entry: TaskEntry, delay_s: float) -> None:
        self.links.loop.call_later(delay_s, self.manager.requeue_due, entry)

    def dequeue(self, entry: TaskEntry) -> None:
        cls = self.classes.get(entry.sched_key)
        if cls is not None and entry in cls.queue:
            cls.queue.remove(entry)

    def store_results(self, entry: TaskEntry, returns: list[Any]) -> None:
        self.events.task_finished(entry)
        lease = entry.lease
        self.ownership.store_results(entry.spec["tid"], entry.return_ids, returns, lease.conn if lease else None)

    def store_error(self, entry: TaskEntry, error: Entry, reason: str) -> None:
        self.events.task_failed(entry, error, reason)
        store = self.ownership.store_owned_result
        for oid in entry.return_ids:
            store(oid, error)

    def forget_copy(self, object_id: bytes) -> None:
        self.store.delete(object_id)

    def free_dead_attempt(self, entry: TaskEntry, node_address: Any) -> None:
        self.ownership.note_dead_attempt(list(entry.return_ids), node_address)

    def cancel_running(self, entry: TaskEntry, force: bool, recursive: bool) -> None:
        lease: LeaseState = entry.lease
        if force:
            lease.raylet.notify("kill_worker", {"worker_id": lease.worker_id})
        else:
            lease.conn.notify("cancel_task", {"tid": entry.spec["tid"], "recursive": recursive})

    # ============================================================== dispatch
    def _dispatch(self, cls: SchedulingClass) -> None:
        if cls.strategy == "SPREAD":
            self._dispatch_spread(cls)
            return
        queue = cls.queue
        depth = self._depth
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
                    lease.idle_timer = self.links.loop.call_later(
                        self._idle_timeout, self._return_lease, cls, lease
                    )

    def _dispatch_spread(self, cls: SchedulingClass) -> None:
        """SPREAD wants one placement decision per task: one lease request per task, no pipelining.

        Each queued task without a request gets one (within ``max_pending_lease_requests``); a
        lease runs the task it was requested for (``_on_worker_connected``) and goes back after
        it. A lease whose task ended before the lease arrived takes a task nobody asked for yet,
        or goes back at once (it must not hold a CPU a claimed task's request waits for).
        """
        queue = cls.queue
        while queue and queue[0].done:
            queue.popleft()
        claimed = {id(entry) for entry in cls.claims.values()}
        for lease in list(cls.leases):
            if lease.in_flight or lease.dead:
                continue
            entry = self._take_unclaimed(queue, claimed)
            if entry is None:
                self._give_back(cls, lease)
            else:
                self._push(entry, lease)
        if len(cls.pending_requests) < self._max_requests:
            for entry in queue:
                if len(cls.pending_requests) >= self._max_requests:
                    break
                if id(entry) not in claimed and not entry.done:
                    claimed.add(id(entry))
                    self._request_lease(cls, for_task=entry)

    @staticmethod
    def _take_unclaimed(queue: deque[TaskEntry], claimed: set[int]) -> TaskEntry | None:
        """Remove and return the first queued task no lease request was made for."""
        for entry in queue:
            if id(entry) not in claimed and not entry.done:
                queue.remove(entry)
                return entry
        return None

    @staticmethod
    def _demand(cls: SchedulingClass) -> int:
        """Tasks that want a worker: queued ones, and those waiting behind a running task on a lease,
        less the idle leases (they are taking those back: ``_steal``; asking for more leases
        meanwhile would queue demand an autoscaler launches a node for)."""
        behind = idle = 0
        for lease in cls.leases:  # one pass, no list: this runs on every dispatch
            if lease.dead:
                continue
            if lease.in_flight:
                behind += lease.in_flight - 1
            else:
                idle += 1
        return len(cls.queue) + max(0, behind - idle)

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
        self.manager.pushed(entry, lease, lease.pid)
        entry.spec["gpus"] = lease.gpu_ids
        lease.in_flight += 1
        fut = lease.conn.call_future("push_task", entry.spec)
        fut.add_done_callback(partial(self._on_reply, entry, lease))

    # ================================================================ leases
    def _request_lease(self, cls: SchedulingClass, raylet: Connection | None = None,
                       for_task: TaskEntry | None = None) -> None:
        """Ask ``raylet`` (the local node daemon by default) for a lease; SPREAD: for task ``for_task``."""
        request_id = next(self._request_ids)
        raylet = raylet or self.links.raylet
        cls.pending_requests.add(request_id)
        if for_task is not None:
            cls.claims[request_id] = for_task
        self._request_class[request_id] = cls
        request = {
            "request_id": request_id, "resources": cls.resources, "strategy": cls.strategy,
            "prefer": self._locality_hint(cls),
            "spilled": raylet is not self.links.raylet,
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
            cls.claims.pop(request_id, None)
            return
        exc = fut.exception()
        if exc is not None:
            cls.pending_requests.discard(request_id)
            cls.claims.pop(request_id, None)
            self._request_class.pop(request_id, None)
            if isinstance(exc, RemoteError) and exc.code in (ErrorCode.TASK_UNSCHEDULABLE, ErrorCode.RUNTIME_ENV_SETUP_FAILED):
                self._fail_class(cls, exc.to_exception())
            elif raylet is not self.links.raylet and isinstance(exc, ConnectionLost):
                self._dispatch(cls)  # that node went away: ask the local node again
            else:
                self._fail_class(cls, exc)
            return
        grant: LeaseReply = fut.result()
        if grant.get("spillback"):
            # Keep the request counted while we ask the node it named.
            target = grant["spillback"]["address"]
            task = self.background.spawn_if_open(self.links.connect_to(target), "connect after spillback",
                                                 loop=self.links.loop)
            if task is None:  # the process is shutting down: nothing more runs
                cls.pending_requests.discard(request_id)
                cls.claims.pop(request_id, None)
                self._request_class.pop(request_id, None)
                return
            task.add_done_callback(partial(self._on_spillback_connected, cls, request_id))
            return
        cls.pending_requests.discard(request_id)
        self._request_class.pop(request_id, None)
        if grant.get("cancelled"):
            cls.claims.pop(request_id, None)
            self._dispatch(cls)
            return
        if cls.infeasible_timer is not None:
            cls.infeasible_timer.cancel()
            cls.infeasible_timer = None
        cls.infeasible = ""
        task = self.background.spawn_if_open(self.links.connect_to(grant["address"]), "connect to a leased worker",
                                             loop=self.links.loop)
        if task is None:  # the process is shutting down: the lease ends with its connection to the node
            cls.claims.pop(request_id, None)
            raylet.notify("return_lease", {"lease_id": grant["lease_id"]})
            return
        task.add_done_callback(partial(self._on_worker_connected, cls, grant, raylet, request_id))

    def _on_spillback_connected(self, cls: SchedulingClass, request_id: int, task: asyncio.Task[Connection]) -> None:
        cls.pending_requests.discard(request_id)
        self._request_class.pop(request_id, None)
        claim = cls.claims.pop(request_id, None)
        if task.cancelled() or task.exception() is not None:
            self._dispatch(cls)
            return
        if cls.strategy == "SPREAD":
            if claim is None or claim.state is not TaskStatus.PENDING_NODE_ASSIGNMENT:
                self._dispatch(cls)  # its task ended meanwhile: the others get requests of their own
                return
        elif not self._demand(cls):
            return
        # A new request id: node daemons answer a repeated id with their first answer (that is how a
        # resent request is told apart), so a request spilled back to a node that saw it before
        # would get the same spillback again, forever.
        self._request_lease(cls, task.result(), for_task=claim)

    def _on_worker_connected(self, cls: SchedulingClass, grant: LeaseReply, raylet: Connection, request_id: int,
                             task: asyncio.Task[Connection]) -> None:
        claim = cls.claims.pop(request_id, None)
        if task.cancelled():  # the process is shutting down (its background tasks were cancelled)
            raylet.notify("return_lease", {"lease_id": grant["lease_id"]})
            return
        if task.exception() is not None:
            logger.warning("could not reach leased worker %s: %s", grant["address"], task.exception())
            raylet.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
            self._dispatch(cls)
            return
        conn = task.result()
        lease = LeaseState(grant["lease_id"], grant["worker_id"], conn, grant.get("pid", 0), raylet, grant.get("node_id"))
        lease.gpu_ids = grant.get("gpu_ids") or []
        cls.leases.append(lease)
        conn.add_close_callback(lambda c: self._lease_lost(cls, lease))
        if claim is not None and claim.state is TaskStatus.PENDING_NODE_ASSIGNMENT and claim in cls.queue:
            # SPREAD: the lease was placed for this task (only its own lease pushes a claimed task;
            # claims are taken from the front of the queue, so the search is short).
            cls.queue.remove(claim)
            self._push(claim, lease)
        self._dispatch(cls)

    def _return_lease(self, cls: SchedulingClass, lease: LeaseState) -> None:
        lease.idle_timer = None
        if lease.in_flight or lease.dead or cls.queue:
            return
        lease.dead = True
        cls.leases.remove(lease)
        lease.raylet.notify("return_lease", {"lease_id": lease.lease_id})

    def _give_back(self, cls: SchedulingClass, lease: LeaseState) -> None:
        """Return a lease now (a SPREAD lease serves one task)."""
        if lease.idle_timer is not None:
            lease.idle_timer.cancel()
            lease.idle_timer = None
        lease.dead = True
        if lease in cls.leases:
            cls.leases.remove(lease)
        lease.raylet.notify("return_lease", {"lease_id": lease.lease_id})

    def release_idle_leases(self) -> None:
        """A node daemon has requests waiting: give back the idle leases nothing is waiting for.

        A class with tasks waiting (queued, or behind a running task on another of its
        leases: ``_steal`` moves those to the idle worker) keeps its idle lease. Giving it back
        would only let the class's own queued request take it again, possibly as another
        worker, one started after the tasks were submitted (and the CPU would sit idle between).
        """
        for cls in self.classes.values():
            if self._demand(cls):
                continue
            for lease in list(cls.leases):
                if lease.in_flight == 0:
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
            cls.infeasible_timer = self.links.loop.call_later(timeout, self._infeasible_expired, cls)

    def _infeasible_expired(self, cls: SchedulingClass) -> None:
        cls.infeasible_timer = None
        if not cls.infeasible:
            return
        error = TaskUnschedulableError(
            f"Gave up after {config().infeasible_timeout_s:g}s (EMBER_infeasible_timeout_s): {cls.infeasible}"
        )
        self._fail_queued(cls, error)

    # ================================================================ replies
    def _on_reply(self, entry: TaskEntry, lease: LeaseState, fut: asyncio.Future[Any]) -> None:
        lease.in_flight -= 1
        lease.stealing = False
        cls = self.classes[entry.sched_key]
        if cls.strategy == "SPREAD" and lease.in_flight == 0 and not lease.dead:
            self._give_back(cls, lease)  # one placement decision per task: never reuse a SPREAD lease
        manager = self.manager
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            if isinstance(exc, RemoteError):
                manager.refused(entry, exc)
            else:
                manager.worker_died(entry, WorkerDeath(lease.pid, lease.oom_detail, lease.node_death, exc,
                                                       lease.raylet.peername))
        else:
            reply: PushReply = fut.result()
            status = reply.get("s")
            entry.ran = reply.get("t")
            if status == "ok":
                manager.returned(entry, reply["r"])
            elif status == "err":
                manager.raised(entry, reply["e"])
            elif status == "requeue":
                manager.bounced(entry)
            elif status == "cancelled":
                manager.cancelled_at_worker(entry)
            elif status == "arg_lost":
                manager.arg_lost(entry, reply["oid"], reply["owner"])
            else:
                manager.bad_reply(entry, reply)
        self._dispatch(cls)

    def on_node_died(self, node_id: bytes, address: str, reason: str) -> None:
        """The control service declared a node dead: its leases are lost even if no socket noticed yet."""
        for cls in self.classes.values():
            for lease in list(cls.leases):
                if lease.raylet.peer_info.get("node_id") == node_id or (
                    lease.raylet is self.links.raylet and self.info.node_id == node_id
                ):
                    lease.node_death = (node_id, address, reason)
                    lease.conn.close(f"its node died ({reason})")

    def on_worker_oom_killed(self, worker_id: bytes, detail: str) -> None:
        for cls in self.classes.values():
            for lease in cls.leases:
                if lease.worker_id == worker_id:
                    lease.oom_detail = detail

    def _fail_queued(self, cls: SchedulingClass, error: BaseException) -> None:
        queue = cls.queue
        self.manager.fail_all((queue.popleft() for _ in range(len(queue))), error)

    def _fail_class(self, cls: SchedulingClass, exc: BaseException) -> None:
        error: BaseException = exc
        if isinstance(exc, RpcError) or not isinstance(exc, RayError):
            error = LocalRayletDiedError(
                f"This process lost its node daemon ({exc}), so the task cannot be scheduled. "
                f"The daemon's log is in {self.info.session_dir}/logs; restart the cluster (or ember.init())."
            )
        self._fail_queued(cls, error)

    # ================================================================ cancel
    def cancel(self, task_id: bytes, force: bool, recursive: bool = False) -> bool:
        """Cancel a task this process owns (see ``TaskManager.cancel``); False if it is not pending here."""
        return self.manager.cancel(task_id, force, recursive)

    def cancel_children(self, parent_id: bytes) -> None:
        """Cancel (recursively) every unfinished task that task ``parent_id`` submitted."""
        for task_id in self.manager.children_of(parent_id):
            self.manager.cancel(task_id, False, True)

    def rpc_infeasible(self, conn: Connection, p: Infeasible) -> None:
        self.on_infeasible(p.request_id, p.message)

    def rpc_worker_oom_killed(self, conn: Connection, p: WorkerOomKilled) -> None:
        self.on_worker_oom_killed(p.worker_id, p.detail)

    def rpc_release_idle_leases(self, conn: Connection, p: None) -> None:
        self.release_idle_leases()

    def num_pending(self) -> int:
        return len(self.manager.pending)
