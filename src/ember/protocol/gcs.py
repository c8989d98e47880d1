"""The control service's methods (``ember/gcs/server.py``) and their messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import msgspec

from ember.exceptions import ProtocolError
from ember.protocol.base import HostPort, Message, Record, WorkerAddress
from ember.protocol.registry import Method, Service, register

# ---------------------------------------------------------------- pub/sub


class Subscribe(Message):
    channels: list[str]
    #: A reconnecting driver: the last log record it printed (``[gcs instance, seq]``) or None;
    #: absent when the caller wants no replay.
    logs_after: tuple[str | None, int] | None | msgspec.UnsetType = msgspec.UNSET


class Publication(Message, array_like=True):
    """``[channel, data]``: a message of a pub/sub channel (``logs``, ``nodes``, ``jobs``)."""

    channel: str
    data: Any


# ------------------------------------------------------------------ nodes


class RegisterNode(Message):
    node_id: bytes
    address: HostPort
    resources: dict[str, float]
    store_capacity: int = 0
    store_dir: str = ""
    transfer_port: int = 0
    hostname: str = ""
    is_head: bool = False
    pid: int = 0
    metrics_export_port: int = 0
    #: A node rejoining a restarted control service: the cluster it belonged to ...
    cluster_id: str | None = None
    #: ... and the leases the control service held on it (``[lease_id, actor_id]``).
    gcs_leases: list[list[Any]] = []

    def node_record(self) -> dict[str, Any]:
        """What the node table keeps (and persists) of this registration."""
        record = msgspec.structs.asdict(self)
        del record["cluster_id"], record["gcs_leases"]
        record["address"] = list(self.address)  # as stored records read it back
        return record


class RegisterNodeReply(Message):
    cluster_id: str
    release_leases: list[Any]


class NodeId(Message):
    node_id: bytes


class LoadReport(Message):
    """A node's heartbeat: what it has free (and in total) and its object store's use."""

    node_id: bytes
    available: dict[str, float]
    total: dict[str, float] | None = None
    store_used: int = 0
    store_objects: int = 0
    store_spilled: int = 0
    store_fallback: int = 0
    store_fallback_objects: int = 0
    num_workers: int = 0
    #: For an autoscaler: ``[[shape, count], ...]`` of the requests queued there ...
    demand: list[tuple[dict[str, float], int]] = []
    #: ... and for how long the node has had no work.
    idle_s: float = 0.0


#: ``[node_id, [host, port], total resources, available resources]`` per live node.
NodeAddressRow = tuple[bytes, HostPort, dict[str, float], dict[str, float]]

# ------------------------------------------------------------------- jobs


class RegisterJob(Message):
    namespace: str | None = None
    pid: int | None = None
    address: WorkerAddress | None = None
    entrypoint: str = ""
    submission_id: str | None = None


class RegisterJobReply(Message):
    job_id: bytes
    namespace: str
    cluster_id: str


class JobId(Message):
    job_id: bytes


class ClusterIdReply(Message):
    cluster_id: str


# ----------------------------------------------------------------- actors


class ActorCreationSpec(Message):
    """What a driver or worker asks the control service to create (``api/actor.py``)."""

    actor_id: bytes
    job: bytes
    fid: bytes
    class_name: str
    args: list[Any]
    kw: list[str]
    owner: WorkerAddress
    name: str | None = None
    namespace: str | None = None
    detached: bool = False
    get_if_exists: bool = False
    max_restarts: int = 0
    max_task_retries: int = 0
    max_concurrency: int | None = None
    concurrency_groups: dict[str, int] = {}
    method_groups: dict[str, str] = {}
    is_async: bool = False
    #: Resources to place the actor (``place``) and to hold while it lives (``hold``);
    #: ``res`` as requested (before a placement group renames them).
    place: dict[str, float] = {}
    hold: dict[str, float] = {}
    res: dict[str, float] = {}
    meta: Record = {}
    node_id: bytes | None = None
    strategy: Any = None
    pg: bytes | None = None
    pg_group: list[Any] | None = None
    renv: list[Any] | None = None

    def record(self) -> dict[str, Any]:
        """The spec as the actor manager keeps and persists it (absent options left out)."""
        record = msgspec.structs.asdict(self)
        for optional in ("pg_group", "renv"):
            if record[optional] is None:
                del record[optional]
        return record


class RegisterActorReply(Message):
    actor_id: bytes
    existing: bool
    meta: Record | None = None


class NamedLookup(Message):
    """A named actor or placement group in a namespace."""

    name: str
    namespace: str | None = None


class WaitActor(Message):
    actor_id: bytes
    #: Answer once the actor is past this incarnation (0: as soon as it is alive or dead).
    after: int = 0


class KillActor(Message):
    actor_id: bytes
    no_restart: bool = True
    cause: str | None = None


class WorkerDied(Message):
    worker_id: bytes
    node_id: bytes | None = None
    pid: int | None = None
    detail: str = ""


class WorkerOomKilled(Message):
    worker_id: bytes
    detail: str


class Infeasible(Message):
    """A node daemon cannot grant a lease request anywhere (sent to whoever asked)."""

    request_id: int | bytes
    message: str


class ListNamedActors(Message):
    all_namespaces: bool = False
    namespace: str | None = None


class NamedActorRow(Message):
    name: str
    namespace: str


# ------------------------------------------------------- placement groups


class CreatePlacementGroup(Message):
    pg_id: bytes
    bundles: list[dict[str, float]]
    strategy: str
    name: str | None = None
    namespace: str | None = None
    lifetime: str | None = None
    job: bytes | None = None


class PlacementGroupId(Message):
    pg_id: bytes


# --------------------------------------------------------------------- KV


class KvPut(Message):
    key: bytes
    value: bytes
    ns: str = ""
    overwrite: bool = True
    #: Compare-and-set: write only if the current value is this (None: only if absent).
    expect: bytes | None | msgspec.UnsetType = msgspec.UNSET


class KvKey(Message):
    key: bytes
    ns: str = ""


class KvPrefix(Message):
    ns: str = ""
    prefix: bytes = b""


# ------------------------------------------------------------ task events


#: A task state on the wire: its index here (``TaskRow.states``).
TASK_STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING", "FINISHED", "FAILED")
#: A task's kind on the wire: its index here (``TaskRow.kind``).
TASK_KINDS = ("NORMAL_TASK", "ACTOR_TASK", "ACTOR_CREATION_TASK")
StateCode = Annotated[int, msgspec.Meta(ge=0, lt=len(TASK_STATES))]
KindCode = Annotated[int, msgspec.Meta(ge=0, lt=len(TASK_KINDS))]


class TaskRow(msgspec.Struct, array_like=True, gc=False, omit_defaults=True):
    """What a task's owner knows of it, one row per task (sent again only if it changed).

    ``states[i]`` (an index into ``TASK_STATES``) was entered at ``times[i]`` (seconds),
    oldest first; the last is the task's state as its owner sees it. A row replaces the
    task's previous one: it carries every step the owner still remembers. ``start`` and
    ``end`` are the latest execution's, as its worker's reply told the owner, and
    ``worker``/``node``/``pid`` where it ran (known from the lease once the task was
    pushed). ``gc=False``: the control service keeps many of these and none can be part
    of a cycle.
    """

    task_id: bytes
    attempt: int
    name: str
    job: bytes
    parent: bytes | None
    kind: KindCode
    actor: bytes | None
    resources: dict[str, float] | None
    states: tuple[StateCode, ...]
    times: tuple[float, ...]
    error_type: str | None = None
    error: str | None = None
    start: float | None = None
    end: float | None = None
    worker: bytes | None = None
    node: bytes | None = None
    pid: int | None = None


class RunRow(msgspec.Struct, array_like=True, gc=False):
    """An execution still running in the reporting worker after a batch period (the batch says
    which worker): started at ``start``. An execution's end reaches the control service in its
    owner's ``TaskRow`` (the reply carries it), so short ones send no ``RunRow``."""

    task_id: bytes
    attempt: int
    start: float
    name: str
    job: bytes
    actor: bytes | None


class EndedRows(msgspec.Struct, array_like=True, gc=False):
    """The rows of tasks of one job that ended (``count`` of them, ``rows``: the msgpack encoding of
    ``list[TaskRow]``). The control service keeps them as received and decodes them only when
    asked about tasks (``ended_rows``): nearly every row it ever gets is one of these, and most are
    dropped by retention without ever being read."""

    job: bytes
    count: int
    rows: bytes


class TaskEventBatch(Message):
    """What one process saw of tasks since its last batch (``core/task_events.py``): rows of the
    tasks it owns, and of the executions it ran (``worker``/``node``/``pid``: where they ran).

    ``tasks`` and ``runs`` are the msgpack encodings of ``list[TaskRow]`` and ``list[RunRow]``
    (``encode_rows``; read them with ``task_rows`` and ``run_rows``): rows of live tasks (and of
    ended ones whose owner forgot their oldest steps), which the control service decodes as they
    come, straight into their types. ``ended`` holds the rows of tasks that ended, by job, which
    it keeps encoded. Within a batch, ``tasks`` come before ``ended``: a task that ended since
    its live row was sent is in ``ended``."""

    tasks: bytes = b""
    runs: bytes = b""
    ended: list[EndedRows] = []
    worker: bytes | None = None
    node: bytes | None = None
    pid: int | None = None
    dropped: int = 0
    job: bytes | None = None


encode_rows = msgspec.msgpack.Encoder().encode
_decode_task_rows = msgspec.msgpack.Decoder(list[TaskRow]).decode
_decode_run_rows = msgspec.msgpack.Decoder(list[RunRow]).decode


class _TaskId(msgspec.Struct, array_like=True, gc=False):
    """A ``TaskRow``'s first field alone (decoding skips the others without building them)."""

    task_id: bytes


_decode_task_ids = msgspec.msgpack.Decoder(list[_TaskId]).decode


def _rows(decode: Callable[[bytes], list[Any]], data: bytes, what: str) -> list[Any]:
    """``decode(data)`` (``[]`` for no bytes); ``ProtocolError`` naming ``what`` if malformed."""
    try:
        return decode(data) if data else []
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ProtocolError(f"bad add_task_events {what}: {exc}") from None


def task_rows(batch: TaskEventBatch) -> list[TaskRow]:
    """The batch's task rows; ``ProtocolError`` if they are not ``TaskRow`` arrays."""
    return _rows(_decode_task_rows, batch.tasks, "task rows")


def run_rows(batch: TaskEventBatch) -> list[RunRow]:
    """The batch's execution rows; ``ProtocolError`` if they are not ``RunRow`` arrays."""
    return _rows(_decode_run_rows, batch.runs, "run rows")


def ended_rows(chunk: EndedRows) -> list[TaskRow]:
    """The rows of an ``EndedRows``; ``ProtocolError`` if they are not ``TaskRow`` arrays."""
    return _rows(_decode_task_rows, chunk.rows, "ended rows")


def ended_task_ids(chunk: EndedRows) -> list[bytes]:
    """The task ids of an ``EndedRows``' rows, in order (about a fifth of the cost of ``ended_rows``)."""
    return [row.task_id for row in _rows(_decode_task_ids, chunk.rows, "ended rows")]


class ListTasks(Message):
    filters: list[tuple[str, str, Any]] = []
    limit: int = 100
    detail: bool = False


class TaskExecutions(Message):
    since: float | None = None
    job_id: bytes | None = None


#: ``[task_id, name, job_id, node_id, worker_id, pid, start_s, end_s, state]``
ExecutionRow = tuple[bytes, str, bytes, Any, Any, Any, float | None, float | None, str]


# ------------------------------------------------------------ autoscaling


class ClusterDemand(Message):
    #: Wait (up to this many seconds) until a node reports new queued demand.
    wait_s: float | None = None


class DrainNode(Message):
    node_id: bytes
    #: True: stop sending work there (refused while it has work); False: resume.
    drain: bool = True


class RequestResources(Message):
    bundles: list[dict[str, float]]


class AutoscalerReport(Message):
    status: Record | None = None
    #: The node shapes the autoscaler can add (None: it has none, or is gone).
    launchable: list[dict[str, float]] | None = None


class ClusterInfo(Message):
    cluster_id: str
    session_dir: str
    pid: int
    dashboard_url: str | None


# ----------------------------------------------------------------- replies
# The control service builds these as dicts and its callers read them as dicts (the state API,
# the dashboard, the CLI, the autoscaler, ``ember.nodes()``); as ``TypedDict``s both sides' key
# accesses are checked by mypy and the wire stays the maps the callers have always read.


class NodeRecord(TypedDict):
    """A node as ``ember.nodes()`` lists it: Ray's keys (``get_nodes``)."""

    NodeID: str
    Alive: bool
    NodeManagerAddress: str
    NodeManagerPort: int
    ObjectManagerPort: int
    NodeManagerHostname: str
    Resources: dict[str, float]
    AvailableResources: dict[str, float]
    ObjectStoreCapacity: int
    ObjectStoreUsed: int
    ObjectStoreObjects: int
    ObjectStoreSpilled: int
    ObjectStoreFallback: int
    ObjectStoreFallbackObjects: int
    ObjectStoreDir: str
    IsHead: bool
    MetricsExportPort: int
    DeathReason: str
    alive: bool


class DemandNode(NodeRecord):
    """A live node in ``get_cluster_demand``: seconds it has had no work."""

    IdleSeconds: float


class JobRecord(TypedDict):
    """A job (``get_jobs``), as stored."""

    job_id: bytes
    namespace: str
    driver_pid: int | None
    driver_address: list[Any] | None
    start_time: float
    end_time: float | None
    #: RUNNING, then SUCCEEDED when its driver disconnects.
    status: str
    entrypoint: str
    submission_id: str | None


class ActorRecord(TypedDict):
    """An actor's public state (``list_actors``, ``get_named_actor``)."""

    actor_id: bytes
    #: ``ActorState``: DEPENDENCIES_UNREADY ... ALIVE, RESTARTING, DEAD.
    state: str
    #: Its worker's ``[host, port, worker_id]`` while ALIVE.
    address: list[Any] | None
    incarnation: int
    death_cause: str
    #: The constructor's error (inline serialized) if ``__init__`` raised.
    creation_error: list[Any] | None
    error_type: str
    num_restarts: int
    name: str
    namespace: str
    class_name: str
    pid: int
    node_id: bytes | None
    job_id: bytes | None
    detached: bool
    meta: Record | None


class ActorWaitReply(ActorRecord):
    """``wait_actor``: the actor once it is ALIVE in a newer incarnation, or DEAD; plus where its
    node daemon listens (a caller frees there what a dead incarnation stored)."""

    node_address: list[Any] | None


class PlacementGroupCreated(TypedDict):
    pg_id: bytes


class PlacementGroupStats(TypedDict):
    scheduling_state: str


class PlacementGroupRecord(TypedDict):
    """A placement group as Ray's ``placement_group_table()`` shows it."""

    placement_group_id: str
    name: str
    bundles: dict[int, dict[str, float]]
    bundles_to_node_id: dict[int, str]
    strategy: str
    state: str
    stats: PlacementGroupStats
    creator_job_id: str | None
    is_detached: bool


class TaskListing(TypedDict):
    """``list_tasks``: the matching task records (newest first) and how many there were."""

    result: list[Record]
    total: int
    num_after_truncation: int
    num_filtered: int
    #: Events the workers dropped (buffers full) and records kept.
    dropped: int
    stored: int


class TaskSummaryRow(TypedDict):
    func_or_class_name: str
    type: str
    state_counts: dict[str, int]


class TaskSummary(TypedDict):
    """``summarize_tasks``: Ray's ``TaskSummaries`` (counts by function and state)."""

    summary: dict[str, TaskSummaryRow]
    total_tasks: int
    total_actor_tasks: int
    total_actor_scheduled: int
    summary_by: str
    dropped: int


class PendingGroup(TypedDict):
    pg_id: str
    strategy: str
    #: The bundles not placed yet.
    bundles: list[dict[str, float]]
    name: str


class ClusterDemandReply(TypedDict):
    """``get_cluster_demand``: what the autoscaler decides from."""

    nodes: list[DemandNode]
    #: ``[shape, count]`` of queued lease requests and of actors waiting for a node.
    tasks: list[list[Any]]
    actors: list[list[Any]]
    placement_groups: list[PendingGroup]
    #: ``request_resources()`` bundles.
    requested: list[dict[str, float]]
    time: float


#: ``get_autoscaler_status``: the autoscaler's last status document (its own schema,
#: ``autoscaler/status.py``, opaque to the control service) with ``reported_at`` added; None
#: before any autoscaler reported.
AutoscalerStatus = Record


METHODS = (
    Method("subscribe", Subscribe, bool),
    Method("publish", Publication, oneway=True),
    Method("register_node", RegisterNode, RegisterNodeReply),
    Method("unregister_node", NodeId, None),
    Method("report", LoadReport, list[NodeAddressRow]),
    Method("get_nodes", None, list[NodeRecord]),
    Method("get_node_addresses", None, list[NodeAddressRow]),
    Method("register_job", RegisterJob, RegisterJobReply),
    Method("reattach_job", JobId, ClusterIdReply),
    Method("get_jobs", None, list[JobRecord]),
    Method("register_actor", ActorCreationSpec, RegisterActorReply),
    Method("get_named_actor", NamedLookup, ActorRecord | None),
    Method("wait_actor", WaitActor, ActorWaitReply),
    Method("kill_actor", KillActor, bool),
    Method("worker_died", WorkerDied, oneway=True),
    Method("worker_oom_killed", WorkerOomKilled, oneway=True),
    Method("create_placement_group", CreatePlacementGroup, PlacementGroupCreated),
    Method("remove_placement_group", PlacementGroupId, bool),
    Method("wait_placement_group", PlacementGroupId, str),
    Method("placement_group_table", None, dict[str, PlacementGroupRecord]),
    Method("get_placement_group", NamedLookup, PlacementGroupRecord | None),
    Method("infeasible", Infeasible, oneway=True),
    Method("list_actors", None, list[ActorRecord]),
    Method("list_named_actors", ListNamedActors, list[NamedActorRow]),
    Method("kv_put", KvPut, bool),
    Method("kv_get", KvKey, bytes | None),
    Method("kv_del", KvKey, bool),
    Method("kv_keys", KvPrefix, list[bytes]),
    Method("kv_items", KvPrefix, list[tuple[bytes, bytes]]),
    Method("add_task_events", TaskEventBatch, oneway=True),
    Method("list_tasks", ListTasks, TaskListing),
    Method("summarize_tasks", None, TaskSummary),
    Method("task_counts_by_state", None, dict[str, int]),
    Method("task_executions", TaskExecutions, list[ExecutionRow]),
    Method("get_cluster_demand", ClusterDemand | None, ClusterDemandReply),
    Method("request_resources", RequestResources, None),
    Method("drain_node", DrainNode, bool),
    Method("autoscaler_report", AutoscalerReport, None),
    Method("get_autoscaler_status", None, AutoscalerStatus | None),
    Method("cluster_info", None, ClusterInfo),
    Method("ping", None, str),
)

register(Service.GCS, METHODS)
