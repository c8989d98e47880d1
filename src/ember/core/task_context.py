"""What is running in this thread or coroutine: task id, job, name, placement group.

Context variables, so that an async actor's concurrent calls and a threaded
actor's threads each see their own task. ``TaskContext`` answers the questions
the rest of the runtime asks ("which task submits this?", "which job?") and
mints the ids of ``put`` values.
"""

from __future__ import annotations

import contextvars
from typing import Any

from ember._private import ids
from ember.protocol.core_worker import CallSpec

#: (task id, job id, task name) of the task running in this thread / coroutine.
task_context_var: contextvars.ContextVar[tuple[bytes, bytes, str] | None] = contextvars.ContextVar(
    "ember_task_context", default=None
)
#: [placement group id, capture children] of the running task, or None.
task_placement_group_var: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "ember_task_placement_group", default=None
)


class TaskContext:
    """The job and task this process works for right now."""

    def __init__(self) -> None:
        #: This process's job (a driver's own; a worker runs tasks of any job).
        self.job_id = b"\0\0\0\0"
        #: The driver's own task id: the parent of what the driver submits.
        self.driver_task_id = b""
        #: [placement group id, capture children] of the actor this worker hosts, or None.
        self.actor_placement_group: list[Any] | None = None

    def enter(self, spec: CallSpec) -> None:
        task_context_var.set((spec["tid"], spec["job"], spec["name"]))
        task_placement_group_var.set(spec.get("pg_group"))

    def leave(self) -> tuple[bytes, bytes, str] | None:
        """Forget the running task; returns what it was (task id, job id, name)."""
        ctx = task_context_var.get()
        task_context_var.set(None)
        task_placement_group_var.set(None)
        return ctx

    @property
    def current_task_id(self) -> bytes | None:
        ctx = task_context_var.get()
        return ctx[0] if ctx else None

    @property
    def current_job_id(self) -> bytes:
        ctx = task_context_var.get()
        return ctx[1] if ctx else self.job_id

    @property
    def current_task_name(self) -> str | None:
        ctx = task_context_var.get()
        return ctx[2] if ctx else None

    @property
    def current_placement_group(self) -> bytes | None:
        """The group the running task or this actor runs in, if any."""
        group = task_placement_group_var.get() or self.actor_placement_group
        return group[0] if group else None

    @property
    def captured_placement_group(self) -> bytes | None:
        """The group the running task or this actor puts its children in
        (``placement_group_capture_child_tasks=True``), if any."""
        group = task_placement_group_var.get() or self.actor_placement_group
        return group[0] if group and group[1] else None

    def parent_task_id(self) -> bytes:
        """The task that creates new objects now: the running task, else the driver."""
        return self.current_task_id or self.driver_task_id or ids.new_task_id(self.current_job_id)

    def new_put_id(self) -> bytes:
        return ids.put_object_id(self.parent_task_id())
