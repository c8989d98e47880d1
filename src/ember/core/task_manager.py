"""The owner's bookkeeping of the tasks it submitted: a sans-I/O core.

``TaskManager`` decides, for every task this process submitted, what happens next:
which arguments to wait for, when the task may be queued for a worker, whether a
failed attempt is retried or failed (and with which error), what a cancel does, and
which finished tasks to keep as *lineage* (so a lost result can be made again). It
opens no socket, reads no clock, starts no timer: events come in as method calls
(``submit``, ``arg_ready``, ``pushed``, ``returned``, ``worker_died`` ...) and what must
be done goes out as calls on a ``TaskActions`` (resolve an argument, queue the task,
store its results or its error, free a dead attempt's copies, interrupt a running
task). ``TaskSubmitter`` is the I/O shell that performs them; the unit tests record them.

Invariants (``validate``):

* a pending task is not finished, is known under its own id, and has each dependency
  counted as submitted in the reference counter (it cannot be freed under it);
* a task waiting for arguments waits for at least one (else it would never be queued);
* a task at a worker has a lease; retries left are never below -1 (-1: unlimited);
* lineage is kept exactly while it may be needed: a finished task whose results live in
  an object store stays while one of its results is referenced, with its arguments held.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Protocol

from ember._private import serialization
from ember._private.ids import task_id_of
from ember.core.memory_store import INLINE, Entry
from ember.core.reference_counter import ReferenceCounter
from ember.core.task_state import TaskEntry, TaskStatus
from ember.exceptions import (
    NodeDiedError,
    ObjectLostError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OutOfMemoryError,
    RayError,
    TaskCancelledError,
    WorkerCrashedError,
)

ARG_VALUE = 0  # [0, inline]
ARG_REF = 1  # [1, object_id, owner]           resolved by the owner before pushing
ARG_PLASMA = 2  # [2, object_id, owner, [node_id, size, raylet_address]]  read from an object store


class InvariantViolation(AssertionError):
    """``validate`` found the task manager in a state it must never be in (a bug)."""


class TaskActions(Protocol):
    """What the task manager asks its shell to do; each call returns at once."""

    def resolve(self, entry: TaskEntry, index: int, object_id: bytes, owner: Any, recover: bool) -> None:
        """Find argument ``index``'s value or location, then call ``arg_ready`` (``recover``: re-make it first)."""

    def enqueue(self, entry: TaskEntry) -> None:
        """Queue the task for a worker lease and dispatch its scheduling class."""

    def requeue(self, entry: TaskEntry, front: bool) -> None:
        """Put the task back in its class's queue; the reply handler dispatches afterwards."""

    def requeue_later(self, entry: TaskEntry, delay_s: float) -> None:
        """Queue the task again after ``delay_s`` seconds (then call ``requeue_due``)."""

    def dequeue(self, entry: TaskEntry) -> None:
        """Take a queued task out of its class's queue (it was cancelled)."""

    def store_results(self, entry: TaskEntry, returns: list[Any]) -> None:
        """Record the values (or locations) the task returned."""

    def store_error(self, entry: TaskEntry, error: Entry, reason: str) -> None:
        """Record ``error`` as every return of the failed task."""

    def forget_copy(self, object_id: bytes) -> None:
        """Drop this process's entry of an object (it is being made again, or fetched again)."""

    def free_dead_attempt(self, entry: TaskEntry, node_address: Any) -> None:
        """An attempt died on the node at ``node_address``: free what it may have stored there."""

    def cancel_running(self, entry: TaskEntry, force: bool, recursive: bool) -> None:
        """Interrupt the task at its worker (``force``: kill the worker)."""


class WorkerDeath:
    """Why an attempt's worker is gone, as the shell knows it."""

    __slots__ = ("pid", "oom_detail", "node_death", "error", "node_address")

    def __init__(self, pid: int = 0, oom_detail: str = "", node_death: tuple[bytes, str, str] | None = None,
                 error: BaseException | None = None, node_address: Any = None) -> None:
        self.pid = pid
        #: Set when the memory monitor ended the worker.
        self.oom_detail = oom_detail
        #: (node id, address, reason) when the control service declared the node dead.
        self.node_death = node_death
        #: The connection's error, if any.
        self.error = error
        #: [host, port] of the node daemon the attempt ran under.
        self.node_address = node_address


def is_put_object(object_id: bytes) -> bool:
    return bool(struct.unpack(">I", object_id[16:20])[0] & 0x80000000)


def error_entry(error: BaseException) -> Entry:
    return (INLINE, serialization.serialize_error(error).to_inline())


class TaskManager:
    """Tasks this process submitted (``pending``) and finished ones kept for lineage."""

    def __init__(self, counter: ReferenceCounter, actions: TaskActions, oom_retry_backoff_s: float) -> None:
        self.counter = counter
        self.actions = actions
        self.oom_retry_backoff_s = oom_retry_backoff_s
        #: Submitted and not finished, by task id.
        self.pending: dict[bytes, TaskEntry] = {}
        #: Finished tasks whose results live in an object store, kept while a result is referenced.
        self.lineage: dict[bytes, TaskEntry] = {}

    # ================================================================ intake
    def submit(self, entry: TaskEntry) -> None:
        """A new task: wait for its ref arguments, or queue it at once."""
        self.pending[entry.spec["tid"]] = entry
        args = entry.spec["args"]
        refs = [(index, arg) for index, arg in enumerate(args) if arg[0] == ARG_REF]
        if not refs:
            self._enqueue(entry, "no argument to wait for")
            return
        # Count every dependency before resolving any: a ready ref calls arg_ready at once,
        # and only the last one may enqueue the task (else it is enqueued, and run, twice).
        entry.deps_pending += len(refs)
        resolve = self.actions.resolve
        for index, arg in refs:
            resolve(entry, index, arg[1], arg[2], False)

    def arg_ready(self, entry: TaskEntry, index: int, resolved: Entry) -> None:
        """Argument ``index`` is known: inline (maybe an error) or in an object store."""
        if entry.done or entry.state is not TaskStatus.PENDING_ARGS_AVAIL:
            return
        kind, data = resolved
        arg = entry.spec["args"][index]
        if kind == INLINE:
            if data[0] == serialization.FLAG_ERROR:
                # An argument failed: the task fails with the same error.
                self.fail(entry, resolved, f"argument {index} failed")
                return
            entry.spec["args"][index] = [ARG_VALUE, data]
        else:
            entry.spec["args"][index] = [ARG_PLASMA, arg[1], arg[2], data]
        entry.deps_pending -= 1
        if entry.deps_pending == 0:
            self._enqueue(entry, "every argument available")

    def _enqueue(self, entry: TaskEntry, reason: str) -> None:
        entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, reason)
        self.actions.enqueue(entry)

    # ================================================================ at a worker
    def pushed(self, entry: TaskEntry, lease: Any, pid: int) -> None:
        """The shell sent the task to a leased worker."""
        entry.transition(TaskStatus.SUBMITTED_TO_WORKER, f"pushed to worker pid {pid}")
        entry.lease = lease
        entry.ran = None
        entry.attempt += 1
        entry.pushes += 1
        entry.spec["attempt"] = entry.pushes

    def returned(self, entry: TaskEntry, returns: list[Any]) -> None:
        """The worker returned the task's values."""
        if entry.done:
            return  # a reply after the task was failed (e.g. cancelled): the first outcome stands
        entry.transition(TaskStatus.FINISHED, "returned")
        # A result in an object store can be lost: keep the lineage (and the arguments) to redo it,
        # while a result is referenced (all of them may have been dropped while the task ran).
        has_reference = self.counter.has_reference
        keep = any(ret[0] != 0 for ret in returns) and any(has_reference(rid) for rid in entry.return_ids)
        self._complete(entry, keep_lineage=keep)
        self.actions.store_results(entry, returns)

    def raised(self, entry: TaskEntry, error_inline: list[Any]) -> None:
        """The task raised; retried if ``retry_exceptions`` covers the error and retries are left."""
        if entry.done:
            return
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
                self._spend_retry(entry)
                self._requeue(entry, "raised; retry_exceptions allows a retry")
                return
        self.fail(entry, (INLINE, error_inline), "raised")

    def bounced(self, entry: TaskEntry) -> None:
        """A worker about to block handed the (not started) task back: first in line again."""
        if entry.done:
            return
        entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, "bounced by a blocked worker")
        entry.attempt -= 1
        self.actions.requeue(entry, True)

    def cancelled_at_worker(self, entry: TaskEntry) -> None:
        self.fail(entry, error_entry(TaskCancelledError(entry.spec["tid"].hex())), "cancelled while running")

    def bad_reply(self, entry: TaskEntry, reply: Any) -> None:
        self.fail(entry, error_entry(RayError(f"bad reply from worker: {reply!r}")), "bad reply")

    def refused(self, entry: TaskEntry, error: BaseException) -> None:
        """The worker answered the push with an error (it could not run the task at all)."""
        self.fail(entry, error_entry(RayError(f"the worker could not run {entry.name}: {error}")),
                  "the worker refused the task")

    def worker_died(self, entry: TaskEntry, death: WorkerDeath) -> None:
        """The attempt's worker (or its connection) is gone before it replied."""
        if entry.done:
            return
        # The dead attempt may have stored results in its node's store before it died: nobody would
        # ever read or free them (a retry's results are recorded where the retry ran).
        self.actions.free_dead_attempt(entry, death.node_address)
        if entry.cancelled:
            self.fail(entry, error_entry(TaskCancelledError(entry.spec["tid"].hex())), "cancelled; its worker ended")
            return
        detail = f"pid={death.pid}" if death.pid else "unknown pid"
        if entry.retries_left != 0:
            self._spend_retry(entry)
            if death.oom_detail:
                # Give the node time to recover memory before the task runs again.
                delay = self.oom_retry_backoff_s * (2 ** min(entry.attempt - 1, 6))
                entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, f"worker {detail} killed for memory; retry in {delay:.1f}s")
                self.actions.requeue_later(entry, delay)
                return
            self._requeue(entry, f"worker {detail} died; retrying")
            return
        self.fail(entry, error_entry(self._death_error(entry, death, detail)), f"worker {detail} died, no retries left")

    def requeue_due(self, entry: TaskEntry) -> None:
        """A delayed retry (``requeue_later``) is due."""
        if not entry.done:
            self.actions.enqueue(entry)

    @staticmethod
    def _death_error(entry: TaskEntry, death: WorkerDeath, detail: str) -> RayError:
        if death.oom_detail:
            return OutOfMemoryError(
                f"Task {entry.name}() was killed: {death.oom_detail}. It has no retries left (max_retries). "
                "Run fewer such tasks at once, or request memory= for it so the scheduler does not "
                "pack more of them onto a node than fit; the threshold is EMBER_memory_usage_threshold."
            )
        if death.node_death is not None:
            node_id, address, reason = death.node_death
            return NodeDiedError(
                f"The node {node_id.hex()[:12]} at {address} running {entry.name}() died ({reason}), "
                "and the task has no retries left (max_retries)."
            )
        return WorkerCrashedError(
            f"The worker running {entry.name}() ({detail}) died unexpectedly "
            f"({death.error or 'connection lost'}), and the task has no retries left "
            "(max_retries). Check the worker's log in the session's logs folder for the cause "
            "(for example an out-of-memory kill or a crash in native code)."
        )

    def arg_lost(self, entry: TaskEntry, object_id: bytes, owner: Any) -> None:
        """The worker could not read an argument: recover it, then run the task again."""
        if entry.done:
            return
        indexes = [i for i, a in enumerate(entry.spec["args"]) if a[0] == ARG_PLASMA and a[1] == object_id]
        if not indexes:
            self.fail(entry, error_entry(RayError(
                f"the worker reported argument {object_id.hex()} of {entry.name}() lost, but the task has no "
                "such stored argument")), "bad arg_lost reply")
            return
        entry.transition(TaskStatus.PENDING_ARGS_AVAIL, f"argument {object_id.hex()} lost; recovering it")
        entry.attempt -= 1
        for index in indexes:
            entry.spec["args"][index] = [ARG_REF, object_id, owner]
        entry.deps_pending += len(indexes)
        if self.counter.is_owned(object_id):
            error = self.reconstruct(object_id)
            if error is not None:
                self.fail(entry, error_entry(error), "a lost argument cannot be recovered")
                return
        else:
            self.actions.forget_copy(object_id)
        for index in indexes:
            self.actions.resolve(entry, index, object_id, owner, True)

    def _spend_retry(self, entry: TaskEntry) -> None:
        if entry.retries_left > 0:
            entry.retries_left -= 1

    def _requeue(self, entry: TaskEntry, reason: str) -> None:
        entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, reason)
        self.actions.requeue(entry, False)

    # ================================================================ failing and finishing
    def fail(self, entry: TaskEntry, error: Entry, reason: str) -> None:
        """Fail the task: ``error`` becomes the value of each of its returns."""
        if entry.done:
            return
        entry.transition(TaskStatus.FAILED, reason)
        self._complete(entry)
        self.actions.store_error(entry, error, reason)

    def fail_all(self, entries: Iterator[TaskEntry], error: BaseException) -> None:
        stored = error_entry(error)
        for entry in entries:
            self.fail(entry, stored, type(error).__name__)

    def _complete(self, entry: TaskEntry, keep_lineage: bool = False) -> None:
        """The task is done: its hold on its arguments passes to its lineage, or ends.

        A task re-run from lineage holds its arguments once, whether pending, kept or both.
        """
        task_id = entry.spec["tid"]
        self.pending.pop(task_id, None)
        if keep_lineage:
            self.lineage[task_id] = entry
            return
        self.lineage.pop(task_id, None)
        if entry.arg_ids:
            self.counter.remove_submitted(entry.arg_ids)

    # ================================================================ cancel
    def cancel(self, task_id: bytes, force: bool, recursive: bool = False) -> bool:
        """Cancel a task this process owns; False if it is not pending here.

        Waiting for arguments or queued: failed at once. At a worker: interrupted there (with
        ``force`` its worker is killed); its reply or its worker's death then fails it, never
        retried. ``get`` raises ``TaskCancelledError`` either way.
        """
        entry = self.pending.get(task_id)
        if entry is None or entry.done:
            return False
        entry.cancelled = True
        error = error_entry(TaskCancelledError(task_id.hex()))
        if entry.state is TaskStatus.PENDING_ARGS_AVAIL:
            self.fail(entry, error, "cancelled while waiting for arguments")
        elif entry.state is TaskStatus.PENDING_NODE_ASSIGNMENT:
            self.actions.dequeue(entry)
            self.fail(entry, error, "cancelled while queued")
        else:
            if force:
                entry.force_cancel = True
            self.actions.cancel_running(entry, force, recursive)
        return True

    def children_of(self, parent_id: bytes) -> list[bytes]:
        """The unfinished tasks that task ``parent_id`` submitted."""
        return [tid for tid, entry in self.pending.items() if entry.parent == parent_id and not entry.done]

    # ================================================================ lineage
    def object_freed(self, object_id: bytes) -> None:
        """An owned object was freed: drop its task's lineage once no result of it is referenced."""
        task_id = task_id_of(object_id)
        entry = self.lineage.get(task_id)
        if entry is None or not entry.done:
            return
        has_reference = self.counter.has_reference
        if not any(has_reference(rid) for rid in entry.return_ids):
            del self.lineage[task_id]
            if entry.arg_ids:
                self.counter.remove_submitted(entry.arg_ids)

    def reconstruct(self, object_id: bytes) -> BaseException | None:
        """Start re-running the task that made ``object_id``; an error if that is impossible."""
        if is_put_object(object_id):
            return ObjectLostError(
                object_id.hex(),
                f"Object {object_id.hex()} was created by put() and its only copy was lost (its node died or "
                "its file vanished); put values cannot be recomputed. Keep important data in task results "
                "so Ember can re-run the task, or put it again.",
            )
        entry = self.lineage.get(task_id_of(object_id))
        if entry is None:
            return ObjectReconstructionFailedLineageEvictedError(
                object_id.hex(),
                f"Object {object_id.hex()} was lost and the task that created it is no longer known to its owner.",
            )
        if not entry.done:
            return None  # already running again
        if entry.retries_left == 0:
            return ObjectReconstructionFailedMaxAttemptsExceededError(
                object_id.hex(),
                f"Object {object_id.hex()} was lost and re-running {entry.name}() to recover it is not allowed: "
                "the task has no retries left (max_retries).",
            )
        self._spend_retry(entry)
        for rid in entry.return_ids:
            self.actions.forget_copy(rid)
        entry.transition(TaskStatus.PENDING_ARGS_AVAIL, f"result {object_id.hex()} lost; re-running the task")
        entry.lease = None
        self.pending[entry.spec["tid"]] = entry
        self._enqueue(entry, "lineage reconstruction")
        return None

    # ================================================================ checks
    def validate(self) -> None:
        """Raise ``InvariantViolation`` if an invariant (module docstring) does not hold."""
        problems: list[str] = []
        counts = self.counter.snapshot()
        holders: dict[bytes, int] = {}
        for task_id, entry in self.pending.items():
            label = entry.label
            if entry.spec["tid"] != task_id:
                problems.append(f"{label} is filed under {task_id.hex()}")
            if entry.done:
                problems.append(f"{label} is {entry.state.name} but still pending")
            if entry.state is TaskStatus.PENDING_ARGS_AVAIL and entry.deps_pending <= 0:
                problems.append(f"{label} waits for arguments but counts {entry.deps_pending} missing")
            if entry.state is TaskStatus.SUBMITTED_TO_WORKER and entry.lease is None:
                problems.append(f"{label} is at a worker without a lease")
            if entry.deps_pending < 0:
                problems.append(f"{label} counts {entry.deps_pending} missing arguments")
            for oid in entry.arg_ids:
                holders[oid] = holders.get(oid, 0) + 1
        for task_id, entry in self.lineage.items():
            if entry.done:
                if entry.state is not TaskStatus.FINISHED:
                    problems.append(f"lineage of {entry.label} in state {entry.state.name}")
                if not any(self.counter.has_reference(rid) for rid in entry.return_ids):
                    problems.append(f"lineage of {entry.label} kept though no result is referenced")
                for oid in entry.arg_ids:
                    holders[oid] = holders.get(oid, 0) + 1
            elif task_id not in self.pending:
                problems.append(f"lineage of {entry.label} is re-running but not pending")
        for entry in [*self.pending.values(), *self.lineage.values()]:
            if entry.retries_left < -1:
                problems.append(f"{entry.label} has {entry.retries_left} retries left")
            if entry.attempt < 0 or entry.pushes < entry.attempt:
                problems.append(f"{entry.label}: attempt {entry.attempt}, pushes {entry.pushes}")
        for oid, needed in holders.items():
            held = counts.get(oid)
            if held is None or held[1] < needed:
                problems.append(f"argument {oid.hex()} is needed by {needed} task(s) but counted "
                                f"{0 if held is None else held[1]} time(s) as submitted")
        if problems:
            raise InvariantViolation("task manager: " + "; ".join(problems))
