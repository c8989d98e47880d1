"""The state API's result types: Ray's ``ray.util.state.common`` dataclasses, same field names.

Fields marked "detail" are filled only with ``detail=True`` (None otherwise), as in Ray.
Each row also reads like a dict (``task["state"]``), as Ray's did before dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

DEFAULT_LIMIT = 100
DEFAULT_RPC_TIMEOUT = 30

S = TypeVar("S", bound="StateSchema")


class StateSchema:
    """Common behaviour of the result rows."""

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    def asdict(self) -> dict[str, Any]:
        row: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
        return row

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


@dataclass
class TaskState(StateSchema):
    task_id: str
    attempt_number: int = 0
    name: str = ""
    state: str = ""
    job_id: str = ""
    actor_id: str | None = None
    type: str = "NORMAL_TASK"
    func_or_class_name: str = ""
    parent_task_id: str | None = None
    node_id: str | None = None
    worker_id: str | None = None
    worker_pid: int | None = None
    error_type: str | None = None
    # detail
    language: str | None = None
    required_resources: dict[str, float] | None = None
    runtime_env_info: dict[str, Any] | None = None
    placement_group_id: str | None = None
    events: list[dict[str, Any]] | None = None
    profiling_data: dict[str, Any] | None = None
    creation_time_ms: float | None = None
    start_time_ms: float | None = None
    end_time_ms: float | None = None
    task_log_info: dict[str, Any] | None = None
    error_message: str | None = None
    is_debugger_paused: bool | None = None
    call_site: str | None = None
    label_selector: dict[str, str] | None = None


@dataclass
class ActorState(StateSchema):
    actor_id: str
    class_name: str = ""
    state: str = ""
    job_id: str = ""
    name: str | None = None
    node_id: str | None = None
    pid: int | None = None
    ray_namespace: str | None = None
    # detail
    serialized_runtime_env: str | None = None
    required_resources: dict[str, float] | None = None
    death_cause: dict[str, Any] | None = None
    is_detached: bool | None = None
    placement_group_id: str | None = None
    repr_name: str | None = None
    num_restarts: int | None = None
    num_restarts_due_to_lineage_reconstruction: int | None = None
    num_restarts_due_to_node_preemption: int | None = None
    call_site: str | None = None
    label_selector: dict[str, str] | None = None


@dataclass
class NodeState(StateSchema):
    node_id: str
    node_ip: str = ""
    is_head_node: bool = False
    state: str = ""
    state_message: str | None = None
    node_name: str = ""
    resources_total: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # detail
    start_time_ms: float | None = None
    end_time_ms: float | None = None


@dataclass
class PlacementGroupState(StateSchema):
    placement_group_id: str
    name: str = ""
    creator_job_id: str | None = None
    state: str = ""
    # detail
    bundles: list[dict[str, Any]] | None = None
    is_detached: bool | None = None
    stats: dict[str, Any] | None = None
    topology_strategy: str | None = None


@dataclass
class WorkerState(StateSchema):
    worker_id: str
    is_alive: bool = True
    worker_type: str = "WORKER"
    exit_type: str | None = None
    node_id: str = ""
    ip: str = ""
    pid: int = 0
    # detail
    exit_detail: str | None = None
    worker_launch_time_ms: float | None = None
    worker_launched_time_ms: float | None = None
    start_time_ms: float | None = None
    end_time_ms: float | None = None


@dataclass
class ObjectState(StateSchema):
    object_id: str
    object_size: int = 0
    task_status: str = ""
    attempt_number: int = 0
    reference_type: str = ""
    call_site: str = ""
    type: str = ""
    pid: int = 0
    ip: str = ""


@dataclass
class JobState(StateSchema):
    """Ray's ``JobState`` (``JobDetails``'s fields) for drivers and submitted jobs."""

    job_id: str | None = None
    submission_id: str | None = None
    type: str = "DRIVER"
    status: str = ""
    entrypoint: str = ""
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict[str, str] | None = None
    runtime_env: dict[str, Any] | None = None
    driver_info: dict[str, Any] | None = None
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None


#: The resource names of the API and CLI, and their result types.
RESOURCES: dict[str, type[StateSchema]] = {
    "tasks": TaskState,
    "actors": ActorState,
    "nodes": NodeState,
    "placement_groups": PlacementGroupState,
    "workers": WorkerState,
    "objects": ObjectState,
    "jobs": JobState,
}

#: The id field of each resource (``get_*`` and ``ember get``).
ID_FIELDS = {
    "tasks": "task_id", "actors": "actor_id", "nodes": "node_id", "placement_groups": "placement_group_id",
    "workers": "worker_id", "objects": "object_id", "jobs": "job_id",
}
