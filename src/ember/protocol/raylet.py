"""The node daemon's methods (``ember/raylet``) and their messages."""

from __future__ import annotations

from typing import Any, TypedDict

from ember.protocol.base import HostPort, Message, Record, WorkerAddress
from ember.protocol.gcs import Publication
from ember.protocol.registry import Method, Service, register

# ------------------------------------------------------------------ leases


class RequestLease(Message):
    """A worker lease for a task's (or an actor's) resources (``core/task_submitter.py``,
    ``gcs/actor_manager.py``). A repeated ``request_id`` gets the first answer."""

    request_id: int | bytes
    resources: dict[str, float] = {}
    #: What the lease holds while it runs, if not ``resources`` (an actor: its ``hold``).
    hold: dict[str, float] | None = None
    #: A scheduling strategy: None, "DEFAULT", "SPREAD", or a map (node affinity, placement group).
    strategy: Any = None
    #: The node holding most of the task's large arguments (a locality hint).
    prefer: bytes | None = None
    #: Already sent here by another node's policy: grant or queue, do not spill again.
    spilled: bool = False
    #: Whether the holder retries the task if the worker is killed (memory monitor policy).
    retriable: bool = True
    #: ``[env key, runtime env]`` the worker needs.
    renv: tuple[str, Record] | None = None
    #: An actor's lease: its worker is dedicated to the actor for the actor's life.
    actor: bool = False


class RuntimeEnvRequest(Message, array_like=True):
    """``[env key, runtime env]``: build it ahead of its first lease."""

    key: str
    env: Record


class LeaseRequestId(Message):
    request_id: int | bytes


class ReturnLease(Message):
    lease_id: bytes
    #: Kill the worker instead of putting it back in the pool.
    kill: bool = False


# ----------------------------------------------------------------- objects


class CreateObject(Message):
    object_id: bytes
    size: int
    owner: bytes
    #: Where the owner listens, when it is on another node: watched, so its objects are freed when it dies.
    owner_address: WorkerAddress | None = None


class CreateObjectReply(Message):
    #: A recycled file is at the object's path (write over it).
    reuse: bool
    #: The object did not fit in memory: it lives in this file on disk.
    path: str | None = None


class ObjectId(Message):
    object_id: bytes


class ObjectIds(Message):
    object_ids: list[bytes]


class PullObject(Message):
    object_id: bytes
    #: The node daemon that holds a copy (``[host, port, ...]``).
    address: list[Any]
    size: int
    owner: bytes | None = None


class ReadObjectChunk(Message):
    object_id: bytes
    offset: int
    length: int


class CopyMade(Message):
    object_id: bytes
    address: list[Any] | None = None


# ----------------------------------------------------------------- workers


class RegisterWorker(Message):
    worker_id: bytes
    address: WorkerAddress


class RegisterClient(Message):
    """A driver (or another core worker not started by this node) joining the node."""

    client_id: bytes
    pid: int | None = None
    address: WorkerAddress | None = None


class ClientInfo(Message):
    node_id: bytes
    raylet_address: HostPort
    store_dir: str
    session_dir: str
    gcs_address: str
    node_ip: str
    resources: dict[str, float]


class WorkerId(Message):
    worker_id: bytes


class MetricsBatch(Message):
    """A process's metric records and task counts (``core/metrics_recorder.py``)."""

    worker_id: bytes
    #: ``[kind, name, description, tag_keys, boundaries]`` of each metric recorded.
    defs: list[tuple[str, str, str, list[str], list[float]]] = []
    #: ``[name, tags, value]``.
    points: list[tuple[str, list[Any], Any]] | None = None
    #: ``ray_tasks`` rows ``[name, state, is_retry, source, job id, count]``; None: unchanged.
    tasks: list[list[Any]] | None = None


# ----------------------------------------------------------------- bundles


class Bundle(Message):
    pg_id: bytes
    index: int


class PrepareBundle(Message):
    pg_id: bytes
    index: int
    resources: dict[str, float]


# -------------------------------------------------------------------- logs


class ListLogs(Message):
    glob: str | None = None


class ReadLog(Message):
    name: str
    offset: int = 0
    max_bytes: int = 1 << 20


# -------------------------------------------------------------------- replies
# Replies are built as dicts by the node daemon and read as dicts by their callers; as
# ``TypedDict``s both sides' key accesses are checked by mypy (``total=False``: a key some
# answers leave out).


class Spillback(TypedDict):
    """Where to ask instead: that node's id and its daemon's ``[host, port]``."""

    node_id: bytes
    address: list[Any]


class LeaseReply(TypedDict, total=False):
    """``request_lease``'s answer: a grant (``lease_id`` ... ``gpu_ids``), ``spillback`` (ask that
    node), or ``cancelled`` (the request was withdrawn)."""

    lease_id: bytes
    worker_id: bytes
    #: The leased worker's ``[host, port, worker_id]``.
    address: list[Any]
    node_id: bytes
    pid: int
    gpu_ids: list[int]
    spillback: Spillback
    cancelled: bool


class WorkerRow(TypedDict):
    worker_id: bytes
    pid: int
    state: str
    rss: int | None
    #: Its stdout and stderr files' names under the session's ``logs/``.
    log_files: list[str]


class ProcessRow(TypedDict):
    name: str
    pid: int
    rss: int | None


class NodeIdentity(TypedDict):
    """Who and where the node daemon is (``ClientInfo``'s fields)."""

    node_id: bytes
    raylet_address: HostPort
    store_dir: str
    session_dir: str
    gcs_address: str
    node_ip: str
    resources: dict[str, float]


class NodeInfo(NodeIdentity):
    """``get_info``: the node daemon as a whole (the dashboard, ``ember status``, tests)."""

    available: dict[str, float]
    #: ``ObjectStore.stats()``: used, capacity, objects, spilled, fallback ... (bytes and counts).
    store: dict[str, int]
    workers: list[WorkerRow]
    processes: list[ProcessRow]
    #: ``_private.processes.host_memory()``: total and available bytes.
    host_memory: dict[str, int]


class LogChunk(TypedDict):
    """``read_log``: ``data`` read from ``offset`` of a file now ``size`` bytes long."""

    data: bytes
    offset: int
    size: int


METHODS = (
    Method("request_lease", RequestLease, LeaseReply),
    Method("prepare_runtime_env", RuntimeEnvRequest, oneway=True),
    Method("cancel_lease_request", LeaseRequestId, oneway=True),
    Method("return_lease", ReturnLease, oneway=True),
    Method("notify_blocked", None, oneway=True),
    Method("notify_unblocked", None, oneway=True),
    Method("create_object", CreateObject, CreateObjectReply),
    Method("seal_object", ObjectId, oneway=True),
    Method("restore_object", ObjectId, bool),
    Method("prepare_transfer", ObjectId, bool),
    Method("free_objects", ObjectIds, oneway=True),
    Method("pull_object", PullObject, bool),
    Method("read_object_chunk", ReadObjectChunk, bytes),
    Method("copy_made", CopyMade, oneway=True),
    Method("store_stats", None, dict[str, int]),
    Method("report_metrics", MetricsBatch, oneway=True),
    Method("refresh_view", None, oneway=True),
    Method("pub", Publication, oneway=True),
    Method("register_worker", RegisterWorker, ClientInfo),
    Method("register_client", RegisterClient, ClientInfo),
    Method("prepare_bundle", PrepareBundle, bool),
    Method("cancel_bundle", Bundle, bool),
    Method("commit_bundle", Bundle, bool),
    Method("remove_bundle", Bundle, bool),
    Method("kill_worker", WorkerId, bool),
    Method("get_info", None, NodeInfo),
    Method("task_counts", None, list[list[Any]]),
    Method("list_clients", None, list[WorkerAddress]),
    Method("list_logs", ListLogs | None, list[tuple[str, int]]),
    Method("read_log", ReadLog, LogChunk),
    Method("set_launchable", list[dict[str, float]] | None, oneway=True),
    Method("ping", None, str),
)

register(Service.RAYLET, METHODS)
