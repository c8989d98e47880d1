"""This process's task events: every state a task or actor call passes through, batched.

The owner records what it sees (``PENDING_ARGS_AVAIL``, ``PENDING_NODE_ASSIGNMENT``,
``SUBMITTED_TO_WORKER``, ``FINISHED``, ``FAILED`` with the error's type and message);
the executing worker records ``RUNNING`` (with its worker id, node and pid) and the end
of each execution (for the timeline). A record is one tuple appended to a deque, on
any thread; the I/O loop sends what accumulated every ``task_events_report_period_s``
as one ``add_task_events`` notification to the control service, whose
``gcs/task_events.py`` merges owner and executor views. While the control service is
unreachable events wait here, up to ``task_events_buffer_size``; older ones beyond
that are dropped and the count is sent with the next batch.

Wire form of one event: ``[task_id, attempt, state, time_s, info]`` where ``info`` is
a dict or None; the first event of a task carries its description.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ember._private.config import config
from ember.core.task_context import TaskContext, task_context_var
from ember.core.task_state import TASK_TRANSITIONS, TaskEntry, TaskStatus
from ember.protocol.core_worker import ActorCallSpec, ActorCreationPush, CallSpec

if TYPE_CHECKING:
    from ember.core.links import ClusterLinks, ProcessInfo

logger = logging.getLogger(__name__)

#: Not a state: an execution ended (its start was RUNNING); gives the timeline its durations.
EXECUTION_END = "END"
NORMAL_TASK = "NORMAL_TASK"
ACTOR_TASK = "ACTOR_TASK"
ACTOR_CREATION_TASK = "ACTOR_CREATION_TASK"

#: Ray's ``ErrorType`` names for Ember's exceptions (the state API's ``error_type``).
_ERROR_TYPES = {
    "RayTaskError": "TASK_EXECUTION_EXCEPTION",
    "WorkerCrashedError": "WORKER_DIED",
    "TaskCancelledError": "TASK_CANCELLED",
    "OutOfMemoryError": "OUT_OF_MEMORY",
    "NodeDiedError": "NODE_DIED",
    "ActorDiedError": "ACTOR_DIED",
    "RayActorError": "ACTOR_DIED",
    "ActorUnavailableError": "ACTOR_UNAVAILABLE",
    "ObjectLostError": "OBJECT_LOST",
    "OwnerDiedError": "OWNER_DIED",
    "ObjectReconstructionFailedError": "OBJECT_UNRECONSTRUCTABLE",
    "TaskUnschedulableError": "TASK_UNSCHEDULABLE_ERROR",
    "ActorUnschedulableError": "ACTOR_UNSCHEDULABLE_ERROR",
    "RuntimeEnvSetupError": "RUNTIME_ENV_SETUP_FAILED",
    "LocalRayletDiedError": "LOCAL_RAYLET_DIED",
}


def error_type_of(error: BaseException) -> str:
    for cls in type(error).__mro__:
        if cls.__name__ in _ERROR_TYPES:
            return _ERROR_TYPES[cls.__name__]
    return "TASK_EXECUTION_EXCEPTION"


class TaskEventRecorder:
    def __init__(self, info: ProcessInfo, context: TaskContext, links: ClusterLinks) -> None:
        cfg = config()
        self._info = info
        self._context = context
        self._links = links
        self.enabled = cfg.task_events_enabled
        self._period = cfg.task_events_report_period_s
        self._events: deque[Any] = deque()
        self._limit = cfg.task_events_buffer_size
        self._dropped = 0
        self._pid = os.getpid()
        self._task_context = task_context_var
        self._stop_observing = TASK_TRANSITIONS.observe(self._on_task_move) if self.enabled else None

    def close(self) -> None:
        if self._stop_observing is not None:
            self._stop_observing()
            self._stop_observing = None

    # ------------------------------------------------------------------ recording
    def _add(self, event: Any) -> None:
        events = self._events
        events.append(event)
        if len(events) > self._limit:
            events.popleft()
            self._dropped += 1

    def _parent(self) -> bytes:
        ctx = self._task_context.get()
        return ctx[0] if ctx is not None else self._context.driver_task_id

    def _on_task_move(self, entry: object, old: TaskStatus | None, new: TaskStatus, reason: str) -> None:
        assert isinstance(entry, TaskEntry)
        spec = entry.spec
        if new is TaskStatus.FAILED:
            return  # recorded by owner_failed, with the error
        info = None if old is not None else {
            "name": entry.name, "job": spec["job"], "parent": self._parent(), "type": NORMAL_TASK, "res": spec.get("res"),
        }
        attempt = entry.attempt - 1 if entry.attempt else 0
        self._add((spec["tid"], attempt, new.value, time.time(), info))

    def owner_failed(self, task_id: bytes, attempt: int, error: Any, reason: str) -> None:
        """The owner stored ``error`` (a memory-store entry ``(kind, data)``) as a task's result.

        Failures are rare: the error is decoded here for its type (Ray's ``ErrorType`` name)
        and message.
        """
        if not self.enabled:
            return
        from ember._private import serialization

        etype, message = "TASK_EXECUTION_EXCEPTION", reason
        try:
            _flags, exc = serialization.deserialize_inline(error[1])
            if isinstance(exc, BaseException):
                etype, message = error_type_of(exc), str(exc)
        except Exception as decode_error:  # an exception class the owner cannot import
            message = f"{reason} (its error could not be decoded here: {decode_error})"
        self._add([task_id, max(attempt - 1, 0), "FAILED", time.time(), {"error_type": etype, "error": message[-4000:]}])

    def actor_constructed(self, task_id: bytes, spec: ActorCreationPush, error: BaseException | None) -> None:
        """The actor's constructor (its creation task) returned or raised, in its worker."""
        if self.enabled:
            info: dict[str, Any] = {"type": ACTOR_CREATION_TASK, "actor": spec["actor_id"]}
            if error is not None:
                info.update(error_type="TASK_EXECUTION_EXCEPTION", error=f"{type(error).__name__}: {error}")
            self._add([task_id, 0, "FAILED" if error is not None else "FINISHED", time.time(), info])

    def actor_call(self, spec: ActorCallSpec, state: str, info: dict[str, Any] | None = None) -> None:
        """An actor call's state as its caller sees it."""
        if not self.enabled:
            return
        if state == "PENDING_ARGS_AVAIL":
            info = {"name": spec["name"], "job": spec["job"], "parent": self._parent(), "type": ACTOR_TASK,
                    "actor": spec["aid"]}
        self._add([spec["tid"], 0, state, time.time(), info])

    def execution_started(self, spec: CallSpec, actor_id: bytes | None) -> None:
        if self.enabled:
            info = self._info
            self._add([spec["tid"], max(spec.get("attempt", 1) - 1, 0), "RUNNING", time.time(),
                       {"worker": info.worker_id, "node": info.node_id, "pid": self._pid,
                        "name": spec["name"], "job": spec["job"], "actor": actor_id}])

    def execution_ended(self, task_id: bytes) -> None:
        if self.enabled:
            self._add([task_id, -1, EXECUTION_END, time.time(), None])

    # ------------------------------------------------------------------ sending
    def take_batch(self) -> dict[str, Any] | None:
        events = self._events
        n = len(events)
        if not n and not self._dropped:
            return None
        batch = [events.popleft() for _ in range(n)]
        dropped, self._dropped = self._dropped, 0
        return {"events": batch, "dropped": dropped, "job": self._context.current_job_id}

    def flush(self) -> None:
        """Send what accumulated (on the I/O loop); kept for later if the control service is away."""
        gcs = self._links.gcs
        if gcs is None or gcs.closed:
            return
        batch = self.take_batch()
        if batch is not None:
            gcs.notify("add_task_events", batch)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            self.flush()
