"""Worker leases: who holds which worker with which resources.

A lease request names the resources one task of a scheduling class needs.
It is granted when the node has the resources free and an idle worker; the
holder then pushes tasks straight to the worker and returns the lease when
its queue drains. A blocked worker (its task waits in ``get``) gives its
CPUs back until it unblocks.

State machine of a request (transitions in ``REQUEST_TRANSITIONS``)::

    QUEUED --> GRANTED | SPILLED | CANCELLED | ABANDONED | REJECTED

These are plain data: the lease table (``lease_table.py``) moves them, the
lease service (``lease_service.py``) answers their holders.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from ember._private.resources import Resources
from ember._private.state_machine import History, TransitionTable
from ember.protocol.raylet import RequestLease
from ember.raylet.worker_pool import WorkerHandle


class Holder(Protocol):
    """Who asked for a lease (a core worker's connection): the table only compares it by identity."""

    def notify(self, method: str, payload: Any) -> None: ...


class RequestState(enum.Enum):
    QUEUED = "QUEUED"  # waiting here for resources, a worker or its runtime env
    GRANTED = "GRANTED"  # a lease was made for it
    SPILLED = "SPILLED"  # sent back to run on another node
    CANCELLED = "CANCELLED"  # its holder withdrew it
    ABANDONED = "ABANDONED"  # its holder left (or stopped waiting for the reply)
    REJECTED = "REJECTED"  # it can never be served here (actor limits, broken runtime env)


R = RequestState
REQUEST_TRANSITIONS: TransitionTable[RequestState] = TransitionTable("lease request", {
    (R.QUEUED, R.GRANTED): "resources and an idle worker were free",
    (R.QUEUED, R.SPILLED): "another node can run it now",
    (R.QUEUED, R.CANCELLED): "its holder cancelled it",
    (R.QUEUED, R.ABANDONED): "its holder disconnected or stopped waiting",
    (R.QUEUED, R.REJECTED): "it cannot be served on this node",
})


class LeaseRequest:
    __slots__ = ("request_id", "holder", "resources", "hold", "payload", "for_actor", "env_key", "env",
                 "retriable", "warned_infeasible", "state", "history")

    state: RequestState

    def __init__(self, request_id: Any, holder: Holder, resources: Resources, payload: RequestLease,
                 hold: Resources | None = None) -> None:
        self.request_id = request_id
        self.holder = holder
        #: What the request needs free to be granted.
        self.resources = resources
        #: What the lease holds once granted (an actor is placed with 1 CPU and holds 0).
        self.hold = resources if hold is None else hold
        self.payload = payload
        #: An actor's lease: its worker is dedicated to the actor for the actor's life.
        self.for_actor = payload.actor
        renv = payload.renv
        #: The runtime env its worker must run in ("" and None: the default one).
        self.env_key: str = renv[0] if renv else ""
        self.env: dict[str, Any] | None = renv[1] if renv else None
        self.retriable = payload.retriable
        self.warned_infeasible = False
        self.history = History()

    @property
    def label(self) -> str:
        return f"lease request {self.request_id!r}"


class Lease:
    __slots__ = ("lease_id", "worker", "resources", "holder", "blocked", "retriable", "granted_at", "gpu_ids")

    def __init__(self, lease_id: bytes, worker: WorkerHandle, resources: Resources, holder: Holder,
                 retriable: bool = True, granted_at: float = 0.0, gpu_ids: list[int] | None = None) -> None:
        self.lease_id = lease_id
        self.worker = worker
        self.resources = resources
        self.holder = holder
        #: Its task waits in ``get``: its CPU is given back until it unblocks.
        self.blocked = False
        self.retriable = retriable
        self.gpu_ids: list[int] = gpu_ids or []
        self.granted_at = granted_at

    @property
    def cpu(self) -> Resources:
        return {"CPU": self.resources["CPU"]} if "CPU" in self.resources else {}

    def held(self) -> Resources:
        """What this lease takes from the node now (a blocked lease has given its CPU back)."""
        if self.blocked and "CPU" in self.resources:
            return {k: v for k, v in self.resources.items() if k != "CPU"}
        return self.resources
