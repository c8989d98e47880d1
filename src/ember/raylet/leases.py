"""Worker leases: who holds which worker with which resources.

A lease request names the resources one task of a scheduling class needs.
It is granted when the node has the resources free and an idle worker; the
holder then pushes tasks straight to the worker and returns the lease when
its queue drains. A blocked worker (its task waits in ``get``) gives its
CPUs back until it unblocks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ember._private.resources import Resources
from ember.raylet.worker_pool import WorkerHandle
from ember.rpc import Connection


class LeaseRequest:
    __slots__ = ("request_id", "conn", "resources", "hold", "future", "warned_infeasible", "payload", "for_actor")

    def __init__(self, request_id: Any, conn: Connection, resources: Resources, future: asyncio.Future[Any], payload: dict[str, Any]) -> None:
        self.request_id = request_id
        self.conn = conn
        self.resources = resources
        self.hold = resources
        self.future = future
        self.warned_infeasible = False
        self.payload = payload
        #: An actor's lease: its worker is dedicated to the actor for the actor's life.
        self.for_actor = bool(payload.get("actor"))


class Lease:
    __slots__ = ("lease_id", "worker", "resources", "holder", "blocked", "retriable", "granted_at", "gpu_ids")

    def __init__(self, lease_id: bytes, worker: WorkerHandle, resources: Resources, holder: Connection) -> None:
        self.lease_id = lease_id
        self.worker = worker
        self.resources = resources
        self.holder = holder
        self.blocked = False
        self.retriable = True
        self.gpu_ids: list[int] = []
        self.granted_at = 0.0

    @property
    def cpu(self) -> Resources:
        return {"CPU": self.resources["CPU"]} if "CPU" in self.resources else {}
