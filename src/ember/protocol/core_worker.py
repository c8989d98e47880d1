"""A core worker's methods (drivers and workers, ``ember/core``) and their messages."""

from __future__ import annotations

from typing import Any

import msgspec

from ember.protocol.base import Message, Record
from ember.protocol.gcs import Publication, WorkerOomKilled
from ember.protocol.registry import Method, Service, register

#: A task's, an actor call's or an actor creation's spec, built by the submitter
#: (``core/worker.py``, ``api/actor.py``) and read by the executor (``core/task_executor.py``):
#: ``tid``, ``job``, ``fn`` or ``aid``/``m``, ``args``, ``kw``, ``nret``, ``rids``, ``owner``,
#: ``attempt``, ... It stays a map on the hot path: the submitter keeps and edits it (retries,
#: lineage) and the executor reads a few keys per call; see docs/architecture.md.
TaskSpec = Record


class GeneratorItem(Message):
    """An item of a streaming generator task, sent by its executor to the owner."""

    task_id: bytes = msgspec.field(name="tid")
    index: int = msgspec.field(name="i")
    #: The item as a return value (``[INLINE, data]`` or a stored object's ``[PLASMA, ...]``).
    ret: list[Any] = msgspec.field(name="r")


class Infeasible(Message):
    """No node can grant one of this process's lease requests yet (its node daemon says why)."""

    request_id: int
    message: str


class ClusterWarning(Message):
    """Something the control service wants a driver's user to see (an actor or a placement
    group no node, nor any node type an autoscaler can add, can ever host)."""

    message: str


class ObjectIds(Message):
    object_ids: list[bytes]


class ObjectId(Message):
    object_id: bytes


class CancelTask(Message):
    """The owner cancels a task it pushed here (``recursive``: and what that task submitted)."""

    task_id: bytes = msgspec.field(name="tid")
    recursive: bool = False


class CancelOwnedTask(Message):
    """Another process asks this owner to cancel one of its tasks."""

    task_id: bytes = msgspec.field(name="tid")
    force: bool = False
    recursive: bool = False


class TaskId(Message):
    task_id: bytes = msgspec.field(name="tid")


METHODS = (
    Method("push_task", TaskSpec, Record),
    Method("create_actor", TaskSpec, Record),
    Method("push_actor_task", TaskSpec, Record),
    Method("generator_item", GeneratorItem, Any),
    Method("steal_tasks", None, oneway=True),
    Method("cancel_task", CancelTask, oneway=True),
    Method("cancel_owned_task", CancelOwnedTask, oneway=True),
    Method("infeasible", Infeasible, oneway=True),
    Method("cluster_warning", ClusterWarning, oneway=True),
    Method("worker_oom_killed", WorkerOomKilled, oneway=True),
    Method("release_idle_leases", None, oneway=True),
    Method("pub", Publication, oneway=True),
    Method("memory_table", None, Record),
    Method("owns_objects", None, bool),
    Method("ping", None, str),
    Method("add_borrowers", ObjectIds, list[bytes]),
    Method("remove_borrowers", ObjectIds, oneway=True),
    Method("release_handoff", TaskId, oneway=True),
    #: The reply is the object's memory-store entry ``[kind, data]``.
    Method("get_object", ObjectId, tuple[int, Any]),
    #: None: the owner re-runs the task that made it; else the error why not (serialized).
    Method("recover_object", ObjectId, Any),
)

register(Service.CORE_WORKER, METHODS)

__all__ = ["CancelOwnedTask", "CancelTask", "GeneratorItem", "Infeasible", "ObjectId", "ObjectIds", "Publication",
           "TaskId", "TaskSpec", "WorkerOomKilled"]
