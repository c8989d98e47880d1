"""A core worker's methods (drivers and workers, ``ember/core``) and their messages."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import msgspec

from ember.protocol.base import Message, Record
from ember.protocol.gcs import Publication, WorkerOomKilled
from ember.protocol.registry import Method, Service, register

# ----------------------------------------------------------------- task specs
# A spec is built by its submitter (``api/remote_function.py``, ``core/worker.py``; the control
# service for a creation) and read by the executor (``core/task_executor.py``,
# ``core/actor_runtime.py``). It stays a dict: the submitter keeps it and edits it in place
# (resolved arguments, ``attempt``, ``gpus``, ``seq``), the executor reads a few keys per call.
# As a ``TypedDict`` mypy checks every key access, and the receiving connection decodes the
# payload straight into the type (``Method.decode_raw``): a missing key or a value of the wrong
# type is a PROTOCOL_ERROR naming the key, before the executor sees it. Keys the type does not
# declare are dropped by the decoder (a TypedDict is not closed), so they never reach it.

#: Generator modes (``num_returns="streaming"`` / ``"dynamic"``).
GeneratorMode = Literal["streaming", "dynamic"]


# Python 3.10 has no ``NotRequired``: optional keys are declared in a ``total=False`` class
# over one holding the required ones.


class _CallKeys(TypedDict):
    """What every task and actor call carries."""

    tid: bytes
    job: bytes
    #: The function's or method's display name (``Class.method`` for a call).
    name: str
    #: ``[ARG_VALUE, inline]`` | ``[ARG_REF, object_id, owner]`` |
    #: ``[ARG_PLASMA, object_id, owner, [node_id, size, node_daemon_address]]``
    #: (``core/task_manager.py``); keyword arguments last, named by ``kw``.
    args: list[list[Any]]
    kw: list[str]
    nret: int
    #: The return object ids (``nret`` of them).
    rids: list[bytes]
    #: The owner's address ``[host, port, worker_id]`` (a list, as the core worker's own).
    owner: list[Any]


class CallSpec(_CallKeys, total=False):
    """A task or an actor call: the keys every one carries, and these optional ones."""

    gen: GeneratorMode
    #: Set by the submitter at each push: the lease's GPUs, the push number (1, 2, ...).
    gpus: list[int]
    attempt: int
    #: ``[placement_group_id, capture_child_tasks]`` when it runs in a placement group.
    pg_group: list[Any]


class TaskSpec(CallSpec):
    """A task pushed to a leased worker (``push_task``)."""

    fid: bytes
    #: The resources it asked for (before a placement group renamed them).
    res: dict[str, float]


class _ActorCallKeys(CallSpec):
    aid: bytes
    m: str


class ActorCallSpec(_ActorCallKeys, total=False):
    """An actor method call pushed to the actor's worker (``push_actor_task``)."""

    #: The concurrency group chosen at the call (``.options(concurrency_group=)``).
    cg: str
    #: Caller order, set at each push: the caller's worker id, this call's number, and the
    #: oldest of the caller's calls still unanswered (every earlier one is done).
    caller: bytes
    seq: int
    seq_base: int


class _CreationKeys(TypedDict):
    actor_id: bytes
    job: bytes
    fid: bytes
    class_name: str
    args: list[list[Any]]
    kw: list[str]
    owner: list[Any]
    name: str | None
    namespace: str | None
    detached: bool
    get_if_exists: bool
    max_restarts: int
    max_task_retries: int
    max_concurrency: int | None
    concurrency_groups: dict[str, int]
    method_groups: dict[str, str]
    is_async: bool
    place: dict[str, float]
    hold: dict[str, float]
    res: dict[str, float]
    meta: Record
    node_id: bytes | None
    strategy: Any
    pg: bytes | None
    incarnation: int
    gpus: list[int]


class ActorCreationPush(_CreationKeys, total=False):
    """An actor's constructor pushed by the control service to a leased worker
    (``create_actor``): the registered spec (``gcs.ActorCreationSpec.record()``) plus the
    incarnation it starts and the lease's GPUs."""

    pg_group: list[Any]
    renv: list[Any]


class _ReplyStatus(TypedDict):
    s: Literal["ok", "err", "cancelled", "requeue", "arg_lost", "exit"]


class PushReply(_ReplyStatus, total=False):
    """How a pushed task, call or constructor ended (``s``), with what goes with it."""

    #: ok (tasks and calls): one return per id, ``[0, inline, nested]`` | ``[1, [node_id, size,
    #: node_daemon_address], nested]`` (``ObjectAccess.encode_return``).
    r: list[list[Any]]
    #: err: the serialized error, inline form.
    e: list[Any]
    #: arg_lost: the argument whose stored copy is gone, and its owner (the submitter recovers it).
    oid: bytes
    owner: list[Any]
    #: When the execution started and ended (wall-clock seconds; with task events on): the
    #: owner reports them with the task, so the worker sends no event of its own.
    t: list[float]


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


class ReferenceRow(TypedDict):
    """One object (or actor handle) a process references, for ``ember memory``."""

    object_id: str
    size: int
    #: Ray's reference types: USED_BY_PENDING_TASK, CAPTURED_IN_OBJECT, PINNED_IN_MEMORY, ...
    reference_type: str
    owned: bool
    local: int
    submitted: int
    borrowers: int
    call_site: str


class MemoryTable(TypedDict):
    """``memory_table``: who this process is and every reference it holds."""

    pid: int
    worker_id: str
    node_id: str
    mode: str
    ip: str
    objects: list[ReferenceRow]


METHODS = (
    Method("push_task", TaskSpec, PushReply),
    Method("create_actor", ActorCreationPush, PushReply),
    Method("push_actor_task", ActorCallSpec, PushReply),
    Method("generator_item", GeneratorItem, Any),
    Method("steal_tasks", None, oneway=True),
    Method("cancel_task", CancelTask, oneway=True),
    Method("cancel_owned_task", CancelOwnedTask, oneway=True),
    Method("infeasible", Infeasible, oneway=True),
    Method("cluster_warning", ClusterWarning, oneway=True),
    Method("worker_oom_killed", WorkerOomKilled, oneway=True),
    Method("release_idle_leases", None, oneway=True),
    Method("pub", Publication, oneway=True),
    Method("memory_table", None, MemoryTable),
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

__all__ = ["ActorCallSpec", "ActorCreationPush", "CallSpec", "CancelOwnedTask", "CancelTask", "GeneratorItem",
           "GeneratorMode", "Infeasible", "MemoryTable", "ObjectId", "ObjectIds", "Publication", "PushReply",
           "ReferenceRow", "TaskId", "TaskSpec", "WorkerOomKilled"]
