"""Job statuses, their transitions, and the records the job API stores and returns.

A submitted job moves through ``JobStatus`` (Ray's values)::

    PENDING --supervisor started the entrypoint--> RUNNING --exit 0--> SUCCEEDED
       |                                              |--exit != 0 / supervisor died--> FAILED
       |--stopped / could not start------------------>+--stopped--> STOPPED
       +--> STOPPED | FAILED

SUCCEEDED, FAILED and STOPPED are final. Every change goes through
``check_transition``; the store applies it with a compare-and-set on the record, so
the supervisor and the job manager (two processes) never overwrite each other.

``JobInfo`` is the stored record (Ray's ``JobInfo`` fields, JSON in the control
service's KV); ``JobDetails`` is what the HTTP API returns for one job (Ray's fields:
the record plus ``type``, ``job_id``, ``submission_id`` and ``driver_info``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import secrets
import string
import time
from typing import Any

from ember._private.state_machine import TransitionTable


class JobStatus(str, enum.Enum):
    """The status of a submitted job (Ray's values)."""

    PENDING = "PENDING"  # waiting for its supervisor (resources, runtime env) to start the entrypoint
    RUNNING = "RUNNING"  # the entrypoint runs
    STOPPED = "STOPPED"  # final: stopped by a user
    SUCCEEDED = "SUCCEEDED"  # final: the entrypoint exited with 0
    FAILED = "FAILED"  # final: non-zero exit, or it could not start, or its supervisor died

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        """True for the final statuses (STOPPED, SUCCEEDED, FAILED)."""
        return self in _TERMINAL


_TERMINAL = {JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED}
S = JobStatus
TRANSITIONS: TransitionTable[JobStatus] = TransitionTable("job", {
    (S.PENDING, S.RUNNING): "its supervisor started the entrypoint",
    (S.PENDING, S.STOPPED): "stopped before it started",
    (S.PENDING, S.FAILED): "its supervisor could not be placed, set up or started",
    (S.RUNNING, S.SUCCEEDED): "the entrypoint exited with 0",
    (S.RUNNING, S.FAILED): "the entrypoint exited with another code, or its supervisor died",
    (S.RUNNING, S.STOPPED): "stopped: its processes were ended",
})


class IllegalJobTransition(RuntimeError):
    """A status change the table does not allow. Expected in races (the supervisor and the
    manager both try to end a job; the first one wins), so not an ``InvalidTransition`` bug."""


def check_transition(old: JobStatus, new: JobStatus) -> None:
    if not TRANSITIONS.allows(old, new):
        raise IllegalJobTransition(f"illegal job status change {old.value} -> {new.value}")


class JobType(str, enum.Enum):
    """How a job started (Ray's values)."""

    SUBMISSION = "SUBMISSION"  # through the job API
    DRIVER = "DRIVER"  # a driver script that called init() itself

    def __str__(self) -> str:
        return self.value


class JobErrorType(str, enum.Enum):
    """Why a job FAILED (Ray's values for the ones Ember produces)."""

    RUNTIME_ENV_SETUP_FAILURE = "RUNTIME_ENV_SETUP_FAILURE"
    JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE = "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE"
    JOB_SUPERVISOR_ACTOR_DIED = "JOB_SUPERVISOR_ACTOR_DIED"
    JOB_ENTRYPOINT_COMMAND_START_ERROR = "JOB_ENTRYPOINT_COMMAND_START_ERROR"
    JOB_ENTRYPOINT_COMMAND_ERROR = "JOB_ENTRYPOINT_COMMAND_ERROR"

    def __str__(self) -> str:
        return self.value


#: Default messages per status (Ray's wording, so tools matching on them keep working).
_DEFAULT_MESSAGES = {
    S.RUNNING: "Job is currently running.",
    S.STOPPED: "Job was intentionally stopped.",
    S.SUCCEEDED: "Job finished successfully.",
    S.FAILED: "Job failed.",
}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass
class JobInfo:
    """A submitted job's stored record (Ray's ``JobInfo`` fields; times are Unix ms)."""

    status: JobStatus
    entrypoint: str
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict[str, str] | None = None
    runtime_env: dict[str, Any] | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict[str, float] | None = None
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None

    def __post_init__(self) -> None:
        self.status = JobStatus(self.status)
        if self.message is None:
            self.message = self.default_message()

    def default_message(self) -> str:
        if self.status is not JobStatus.PENDING:
            return _DEFAULT_MESSAGES[self.status]
        message = "Job has not started yet."
        if self.requests_entrypoint_resources():
            message += " It may be waiting for resources (CPUs, GPUs, memory, custom resources) to become available."
        if self.runtime_env:
            message += " It may be waiting for the runtime environment to be set up."
        return message

    def requests_entrypoint_resources(self) -> bool:
        return bool(self.entrypoint_num_cpus or self.entrypoint_num_gpus or self.entrypoint_memory
                    or self.entrypoint_resources)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> JobInfo:
        return cls.from_dict(json.loads(data))

    def moved_to(self, status: JobStatus, **fields: Any) -> JobInfo:
        """A copy in ``status`` (checked against the transition table) with ``fields`` set."""
        check_transition(self.status, status)
        changed = dataclasses.replace(self, status=status, **fields)
        if "message" not in fields:
            changed.message = changed.default_message()
        if status.is_terminal() and changed.end_time is None:
            changed.end_time = now_ms()
        return changed


@dataclasses.dataclass
class DriverInfo:
    """The driver process a job ran (Ray's fields)."""

    id: str
    node_ip_address: str
    pid: str


@dataclasses.dataclass
class JobDetails(JobInfo):
    """One job as the HTTP API and the SDK return it (Ray's ``JobDetails`` fields): the record
    plus how the job started, its ids and its driver."""

    type: JobType = JobType.SUBMISSION
    job_id: str | None = None
    submission_id: str | None = None
    driver_info: DriverInfo | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.type = JobType(self.type)
        if isinstance(self.driver_info, dict):
            self.driver_info = DriverInfo(**self.driver_info)

    def to_json(self) -> dict[str, Any]:
        data = self.to_dict()
        data["type"] = self.type.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobDetails:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------ submit requests
_SUBMISSION_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def new_submission_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "embersubmit_" + "".join(secrets.choice(alphabet) for _ in range(16))


@dataclasses.dataclass
class JobSubmitRequest:
    """The body of ``POST /api/jobs/`` (Ray's fields); ``validate`` raises ``ValueError``/``TypeError``."""

    entrypoint: str
    submission_id: str | None = None
    job_id: str | None = None  # deprecated alias of submission_id (Ray keeps it)
    runtime_env: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict[str, float] | None = None

    @classmethod
    def from_json(cls, data: Any) -> JobSubmitRequest:
        if not isinstance(data, dict):
            raise TypeError("the request body must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        ignored = {"entrypoint_label_selector"}  # Ray's; Ember has no node labels yet
        unknown = set(data) - known - ignored
        if unknown:
            raise TypeError(f"unknown field(s) in the job request: {', '.join(sorted(unknown))}")
        if "entrypoint" not in data:
            raise TypeError("the job request has no 'entrypoint'")
        request = cls(**{k: v for k, v in data.items() if k in known})
        request.validate()
        return request

    def validate(self) -> None:
        if not isinstance(self.entrypoint, str):
            raise TypeError(f"entrypoint must be a string, got {type(self.entrypoint).__name__}")
        if not self.entrypoint.strip():
            raise ValueError("entrypoint is empty: give the shell command that starts the job")
        for name in ("submission_id", "job_id"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {type(value).__name__}")
            if not _SUBMISSION_ID_RE.match(value):
                raise ValueError(f"{name} {value!r} must be 1-128 letters, digits or '_.:-'")
        if self.runtime_env is not None:
            if not isinstance(self.runtime_env, dict) or not all(isinstance(k, str) for k in self.runtime_env):
                raise TypeError("runtime_env must be a dict with string keys")
        if self.metadata is not None:
            if not isinstance(self.metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()
            ):
                raise TypeError("metadata must be a dict of strings to strings")
        for name in ("entrypoint_num_cpus", "entrypoint_num_gpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise TypeError(f"{name} must be a number >= 0, got {value!r}")
        mem = self.entrypoint_memory
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int) or mem < 0):
            raise TypeError(f"entrypoint_memory must be an integer number of bytes >= 0, got {mem!r}")
        if self.entrypoint_resources is not None:
            res = self.entrypoint_resources
            if not isinstance(res, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in res.items()
            ):
                raise TypeError("entrypoint_resources must be a dict of resource names to numbers >= 0")
            reserved = {"CPU", "GPU", "memory"} & set(res)
            if reserved:
                raise ValueError(
                    f"entrypoint_resources cannot name {', '.join(sorted(reserved))}: use "
                    "entrypoint_num_cpus, entrypoint_num_gpus or entrypoint_memory"
                )
