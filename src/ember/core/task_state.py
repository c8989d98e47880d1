"""The life of a task as its owner sees it.

States keep Ray's public names (the state API shows them). Legal moves::

    PENDING_ARGS_AVAIL -> PENDING_NODE_ASSIGNMENT -> SUBMITTED_TO_WORKER -> FINISHED
            |                     |      ^                  |   |
            +---------------------+------+-- (retry) -------+   +-> FAILED
"""

from __future__ import annotations

import enum
from typing import Any

from ember._private.state_machine import History, TransitionTable
from ember.protocol.core_worker import TaskSpec


class TaskStatus(enum.Enum):
    PENDING_ARGS_AVAIL = "PENDING_ARGS_AVAIL"  # waiting for argument values
    PENDING_NODE_ASSIGNMENT = "PENDING_NODE_ASSIGNMENT"  # queued for a worker lease
    SUBMITTED_TO_WORKER = "SUBMITTED_TO_WORKER"  # pushed to a leased worker
    FINISHED = "FINISHED"  # returned values (terminal)
    FAILED = "FAILED"  # stored an error as its result (terminal)


S = TaskStatus
TASK_TRANSITIONS: TransitionTable[TaskStatus] = TransitionTable("task", {
    (S.PENDING_ARGS_AVAIL, S.PENDING_NODE_ASSIGNMENT): "every argument is available; wait for a worker lease",
    (S.PENDING_ARGS_AVAIL, S.FAILED): "an argument failed, or the task was cancelled before it ran",
    (S.PENDING_NODE_ASSIGNMENT, S.SUBMITTED_TO_WORKER): "pushed to a leased worker",
    (S.PENDING_NODE_ASSIGNMENT, S.FAILED): "unschedulable, or cancelled while queued",
    (S.SUBMITTED_TO_WORKER, S.FINISHED): "the worker returned its values",
    (S.SUBMITTED_TO_WORKER, S.FAILED): "the task raised, its worker died for good, or it was cancelled",
    (S.SUBMITTED_TO_WORKER, S.PENDING_NODE_ASSIGNMENT): "retried, or bounced by a blocked worker",
    (S.SUBMITTED_TO_WORKER, S.PENDING_ARGS_AVAIL): "an argument was lost and is being recovered",
    (S.FINISHED, S.PENDING_ARGS_AVAIL): "a result was lost: lineage reconstruction",
})


class TaskEntry:
    """What the owner keeps about one task until it finishes."""

    state: TaskStatus

    __slots__ = (
        "spec", "name", "return_ids", "retries_left", "retry_exceptions", "arg_ids",
        "deps_pending", "state", "history", "lease", "cancelled", "force_cancel", "sched_key",
        "resources", "attempt", "strategy", "pushes", "renv", "parent", "ran",
    )

    def __init__(self, spec: TaskSpec, name: str, return_ids: list[bytes], retries: int,
                 retry_exceptions: Any, arg_ids: list[bytes], sched_key: Any, resources: dict[str, float]) -> None:
        self.spec = spec
        self.name = name
        self.return_ids = return_ids
        self.retries_left = retries
        self.retry_exceptions = retry_exceptions
        self.arg_ids = arg_ids
        self.deps_pending = 0
        self.history = History()
        self.state = TaskStatus.PENDING_ARGS_AVAIL
        self.lease: Any = None
        self.cancelled = False
        self.force_cancel = False
        self.sched_key = sched_key
        self.resources = resources
        self.attempt = 0
        #: Every push of this task, including bounces and retries: lets a worker tell a resent
        #: copy of the same push (to be deduplicated) from a new attempt.
        self.pushes = 0
        self.strategy: Any = None
        #: [key, wire env] of the task's runtime env, None for the default env.
        self.renv: list[Any] | None = None
        #: The task that submitted this one (None: the driver); ``cancel(recursive=True)`` of it reaches this.
        self.parent: bytes | None = None
        #: The latest execution's ``[start, end]`` as its reply said (task events).
        self.ran: list[float] | None = None
        TASK_TRANSITIONS.start(self, TaskStatus.PENDING_ARGS_AVAIL, "submitted")

    @property
    def label(self) -> str:
        return f"task {self.name} {self.spec['tid'].hex()}"

    def transition(self, new: TaskStatus, reason: str) -> None:
        TASK_TRANSITIONS.move(self, new, reason)

    @property
    def done(self) -> bool:
        return self.state in (TaskStatus.FINISHED, TaskStatus.FAILED)
