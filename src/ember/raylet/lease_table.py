"""The lease table and resource accounting of one node, as a plain object.

Events go in as method calls (a request arrives, a lease is returned, a worker
dies, a holder leaves, a bundle is reserved or removed ...); what must happen
outside comes back as *actions* (answer this request, start workers for that
env, kill that worker, report the node's resources). No sockets, no clocks,
no processes: ``lease_service.py`` is the async shell that feeds it and carries
out its actions, and the unit tests drive it directly, calling
:meth:`LeaseTable.validate` after every step.

Invariants (``validate``):

* per resource: ``available + held by leases + reserved by bundles = total +
  overcommit``, with ``available >= 0`` and ``overcommit >= 0``. A blocked lease
  holds no CPU; a lease that unblocks when its CPU was taken meanwhile
  overcommits the node (as in Ray) and the debt is paid back first when
  resources are released;
* every lease has a live worker that is LEASED under that lease id, and no
  worker serves two leases;
* every queued request is QUEUED and queued once; nothing else is QUEUED;
* bundle reservations are either prepared or committed, never both; GPU
  devices are shared out exactly (free + leased share = one device each).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ember._private import ids
from ember._private import resources as res
from ember.exceptions import ActorUnschedulableError, InvariantViolation, RuntimeEnvSetupError
from ember.raylet import worker_limits
from ember.raylet.bundles import BundleManager, uses_group
from ember.raylet.gpus import GpuAllocator
from ember.raylet.leases import REQUEST_TRANSITIONS, Holder, Lease, LeaseRequest, RequestState
from ember.raylet.worker_pool import WorkerHandle, WorkerState

# ---------------------------------------------------------------------------- what the table needs


class WorkerSlots(Protocol):
    """The worker pool's bookkeeping as the table uses it (pure: no processes are started here)."""

    def pop_idle(self, env_key: str = "") -> WorkerHandle | None: ...

    def num_dedicated(self) -> int: ...

    def lease_worker(self, worker: WorkerHandle, lease_id: bytes, dedicated: bool) -> None: ...

    def return_worker(self, worker: WorkerHandle) -> None: ...

    def leased_workers(self) -> Iterable[WorkerHandle]: ...

    def validate(self) -> None: ...


class Environments(Protocol):
    """Runtime envs as the table sees them: built (ready) or failed."""

    def take_failures(self) -> dict[str, str]: ...

    def ready(self, env_key: str, env: dict[str, Any] | None) -> bool: ...


class DefaultEnvironmentOnly:
    """No runtime envs: every request runs in the default env."""

    def take_failures(self) -> dict[str, str]:
        return {}

    def ready(self, env_key: str, env: dict[str, Any] | None) -> bool:
        return True


# ---------------------------------------------------------------------------- actions


@dataclass(slots=True)
class Grant:
    """Answer the request with its lease."""
    request: LeaseRequest
    lease: Lease


@dataclass(slots=True)
class Reject:
    """Answer the request with this error (it can never be served here)."""
    request: LeaseRequest
    error: Exception


@dataclass(slots=True)
class Cancelled:
    """The holder cancelled its request: answer ``{"cancelled": True}``."""
    request: LeaseRequest


@dataclass(slots=True)
class Abandoned:
    """Nobody waits for the answer any more (the holder left): drop the reply."""
    request: LeaseRequest


@dataclass(slots=True)
class SpillBack:
    """Answer the request with another node to ask."""
    request: LeaseRequest
    node_id: bytes
    address: list[Any]


@dataclass(slots=True)
class NeedWorkers:
    """These requests found no idle worker of their env: start some (within the node's limits)."""
    env_key: str
    requests: list[LeaseRequest] = field(default_factory=list)


@dataclass(slots=True)
class KillWorker:
    """The worker's lease ended under it (holder gone, group removed, returned with kill): end it."""
    worker: WorkerHandle
    reason: str


@dataclass(slots=True)
class ReleaseIdleLeases:
    """Requests wait for resources: ask these holders to return the leases they do not use."""
    holders: list[Holder]


@dataclass(slots=True)
class ResourcesChanged:
    """What is available changed: report the node's load soon."""


Action = Grant | Reject | Cancelled | Abandoned | SpillBack | NeedWorkers | KillWorker | ReleaseIdleLeases | ResourcesChanged

RESOURCES_CHANGED = ResourcesChanged()


def expected(exc: Exception) -> Exception:
    """Mark an error as an answer, not a bug (the RPC layer does not log it)."""
    exc.expected = True  # type: ignore[attr-defined]  # a flag the RPC layer reads with getattr
    return exc


# ---------------------------------------------------------------------------- the table


class LeaseTable:
    def __init__(
        self,
        node_id: bytes,
        total: res.Resources,
        workers: WorkerSlots,
        *,
        node_label: str = "",
        max_actor_workers: int = 0,
        new_lease_id: Callable[[], bytes] = ids.random_unique_id,
    ) -> None:
        self.node_id = node_id
        #: How errors name this node ("<id> (<ip>)").
        self.node_label = node_label or node_id.hex()[:12]
        self.total: res.Resources = dict(total)
        self.available: res.Resources = dict(total)
        #: Resources taken beyond what was free (a lease unblocking after its CPU was lent out).
        self.overcommit: res.Resources = {}
        self.workers = workers
        self.max_actor_workers = max_actor_workers
        self.gpus = GpuAllocator(self.total.get("GPU", 0))
        #: Placement-group bundles: they move resources between ``available`` and reservations.
        self.bundles = BundleManager(self.total, self.available)
        self.queue: deque[LeaseRequest] = deque()
        self.leases: dict[bytes, Lease] = {}
        self._new_lease_id = new_lease_id

    # ------------------------------------------------------------ accounting helpers
    def _take(self, amounts: res.Resources) -> None:
        available, overcommit = self.available, self.overcommit
        for name, amount in amounts.items():
            free = available.get(name, 0)
            if free >= amount:
                available[name] = free - amount
            else:
                available[name] = 0
                overcommit[name] = overcommit.get(name, 0) + amount - free

    def _give(self, amounts: res.Resources) -> None:
        available, overcommit = self.available, self.overcommit
        for name, amount in amounts.items():
            debt = overcommit.get(name, 0)
            if debt:
                paid = min(debt, amount)
                amount -= paid
                if debt - paid:
                    overcommit[name] = debt - paid
                else:
                    del overcommit[name]
            available[name] = available.get(name, 0) + amount

    def num_blocked(self) -> int:
        return sum(1 for lease in self.leases.values() if lease.blocked)

    def committed_available(self) -> res.Resources:
        """What is free here once the requests already queued here are granted.

        A request decided local waits for a worker before its resources are taken;
        without this, a burst of requests all see an idle node and all stay here.
        """
        free = dict(self.available)
        for req in self.queue:
            if res.fits(req.resources, self.total):
                res.subtract(free, req.hold)
        return {k: max(v, 0) for k, v in free.items()}

    def lease_of(self, worker: WorkerHandle) -> Lease | None:
        return self.leases.get(worker.lease_id) if worker.lease_id is not None else None

    # ------------------------------------------------------------ requests
    def submit(self, req: LeaseRequest) -> None:
        """Queue a request decided to run here (granted by the next :meth:`schedule`)."""
        REQUEST_TRANSITIONS.start(req, RequestState.QUEUED, "decided to run here")
        self.queue.append(req)

    def schedule(self, envs: Environments) -> list[Action]:
        """Grant every queued request that fits, in arrival order."""
        if not self.queue:
            return []
        actions: list[Action] = []
        waiting_for_worker: dict[str, list[LeaseRequest]] = {}
        still_queued: deque[LeaseRequest] = deque()
        blocked_on_resources = False
        failures = envs.take_failures()
        queue = self.queue
        while queue:
            req = queue.popleft()
            env_key = req.env_key
            if env_key:
                if env_key in failures:
                    actions.append(self._reject(req, expected(RuntimeEnvSetupError(
                        f"Failed to set up runtime environment on node {self.node_id.hex()[:12]}: {failures[env_key]}"))))
                    continue
                if not envs.ready(env_key, req.env):
                    still_queued.append(req)  # its env is being built on this node
                    continue
            if not res.fits(req.resources, self.total):
                still_queued.append(req)  # warned after the next cluster view, unless another node takes it
                continue
            if not res.fits(req.resources, self.available):
                blocked_on_resources = True
                still_queued.append(req)
                continue
            if req.for_actor and 0 < self.max_actor_workers <= self.workers.num_dedicated():
                reason = worker_limits.max_actors_reason(self.workers.num_dedicated(), self.max_actor_workers)
                actions.append(self._reject(req, self.actor_refusal(reason)))
                continue
            worker = self.workers.pop_idle(env_key)
            if worker is None:
                waiting_for_worker.setdefault(env_key, []).append(req)
                still_queued.append(req)
                continue
            actions.append(self._grant(req, worker))
        self.queue = still_queued
        for env_key, waiting in waiting_for_worker.items():
            actions.append(NeedWorkers(env_key, waiting))
        if blocked_on_resources and self.leases:
            holders = {id(lease.holder): lease.holder for lease in self.leases.values()}
            actions.append(ReleaseIdleLeases(list(holders.values())))
        return actions

    def _grant(self, req: LeaseRequest, worker: WorkerHandle) -> Grant:
        lease_id = self._new_lease_id()
        self.workers.lease_worker(worker, lease_id, req.for_actor)
        self._take(req.hold)
        lease = Lease(lease_id, worker, req.hold, req.holder, retriable=req.retriable,
                      gpu_ids=self.gpus.allocate(req.hold.get("GPU", 0)))
        self.leases[lease_id] = lease
        REQUEST_TRANSITIONS.move(req, RequestState.GRANTED, f"lease {lease_id.hex()[:12]}")
        return Grant(req, lease)

    def actor_refusal(self, reason: str) -> Exception:
        return expected(ActorUnschedulableError(
            f"Node {self.node_label} cannot start another actor process: {reason}"))

    def _reject(self, req: LeaseRequest, error: Exception) -> Reject:
        REQUEST_TRANSITIONS.move(req, RequestState.REJECTED, str(error)[:200])
        return Reject(req, error)

    def reject(self, req: LeaseRequest, error: Exception) -> list[Action]:
        """Fail a queued request that this node cannot serve (e.g. no room for another actor)."""
        if req.state is not RequestState.QUEUED:
            return []
        self.queue.remove(req)
        return [self._reject(req, error)]

    def cancel(self, holder: Holder, request_id: Any) -> list[Action]:
        """The holder withdraws a request (a granted one is returned as a lease instead)."""
        actions: list[Action] = []
        for req in [r for r in self.queue if r.holder is holder and r.request_id == request_id]:
            self.queue.remove(req)
            REQUEST_TRANSITIONS.move(req, RequestState.CANCELLED, "cancelled by its holder")
            actions.append(Cancelled(req))
        return actions

    def spill_back(self, req: LeaseRequest, node_id: bytes, address: list[Any]) -> list[Action]:
        """Send a queued request to another node that can run it now."""
        if req.state is not RequestState.QUEUED:
            return []
        self.queue.remove(req)
        REQUEST_TRANSITIONS.move(req, RequestState.SPILLED, f"to node {node_id.hex()[:12]}")
        return [SpillBack(req, node_id, address)]

    # ------------------------------------------------------------ leases
    def _end(self, lease: Lease) -> bool:
        """Forget a lease and give its resources back; False if it had already ended."""
        if self.leases.pop(lease.lease_id, None) is None:
            return False
        self.gpus.release(lease.gpu_ids, lease.resources.get("GPU", 0))
        self._give(lease.held())
        if lease.worker.lease_id == lease.lease_id:
            lease.worker.lease_id = None
        return True

    def _end_and_kill(self, lease: Lease, reason: str) -> list[Action]:
        return [KillWorker(lease.worker, reason)] if self._end(lease) else []

    def return_lease(self, lease_id: bytes, holder: Holder, kill: bool = False) -> list[Action]:
        """The holder is done with a lease: its worker goes back to the idle pool (or ends if ``kill``).

        A lease that is unknown (already ended: its worker died before the reply arrived) or
        held by someone else is ignored.
        """
        lease = self.leases.get(lease_id)
        if lease is None or lease.holder is not holder:
            return []
        worker = lease.worker
        self._end(lease)
        if kill:
            return [KillWorker(worker, ""), RESOURCES_CHANGED]
        if worker.state is WorkerState.LEASED:
            self.workers.return_worker(worker)
        return [RESOURCES_CHANGED]

    def worker_died(self, worker: WorkerHandle) -> list[Action]:
        """A worker's process or connection ended: its lease (if any) ends with it."""
        lease = self.lease_of(worker)
        if lease is None or not self._end(lease):
            return []
        return [RESOURCES_CHANGED]

    def holder_gone(self, holder: Holder) -> list[Action]:
        """A holder disconnected: its requests are dropped, its leases end and their workers
        are killed (it may have left tasks running on them)."""
        actions: list[Action] = []
        for req in [r for r in self.queue if r.holder is holder]:
            self.queue.remove(req)
            REQUEST_TRANSITIONS.move(req, RequestState.ABANDONED, "its holder disconnected")
            actions.append(Abandoned(req))
        for lease in [lease for lease in self.leases.values() if lease.holder is holder]:
            actions += self._end_and_kill(lease, "the process holding its lease disconnected")
        if any(isinstance(a, KillWorker) for a in actions):
            actions.append(RESOURCES_CHANGED)
        return actions

    def rebind_holder(self, old: Holder, new: Holder, release: set[bytes]) -> list[Action]:
        """Leases held by a holder that reconnected as ``new``: those in ``release`` end, the
        others move to the new holder (the control service restarted)."""
        actions: list[Action] = []
        for lease in [lease for lease in self.leases.values() if lease.holder is old]:
            if lease.lease_id in release:
                actions += self._end_and_kill(lease, "the restarted control service released its lease")
            else:
                lease.holder = new
        return actions

    def set_blocked(self, worker: WorkerHandle, blocked: bool) -> list[Action]:
        """The worker's task waits in ``get`` (its CPU is lent out) or resumes (taken back)."""
        lease = self.lease_of(worker)
        if lease is None or lease.blocked == blocked:
            return []
        lease.blocked = blocked
        if blocked:
            self._give(lease.cpu)
        else:
            self._take(lease.cpu)
        return [RESOURCES_CHANGED]

    # ------------------------------------------------------------ placement-group bundles
    def prepare_bundle(self, pg_id: bytes, index: int, amounts: dict[str, Any]) -> None:
        """Reserve a bundle's resources (raises ValueError if they are not free)."""
        self.bundles.prepare(pg_id, index, amounts)

    def cancel_bundle(self, pg_id: bytes, index: int) -> None:
        self.bundles.cancel(pg_id, index)

    def commit_bundle(self, pg_id: bytes, index: int) -> list[Action]:
        self.bundles.commit(pg_id, index)
        return [RESOURCES_CHANGED]

    def remove_bundle(self, pg_id: bytes, index: int) -> list[Action]:
        """Remove a bundle: the tasks and actors running in its group end with it."""
        actions: list[Action] = []
        for lease in [lease for lease in self.leases.values() if uses_group(lease.resources, pg_id)]:
            actions += self._end_and_kill(lease, "its placement group was removed")
        self.bundles.remove(pg_id, index)
        actions.append(RESOURCES_CHANGED)
        return actions

    # ------------------------------------------------------------ invariants
    def validate(self) -> None:
        """Check every invariant (see the module docstring); raise ``InvariantViolation``."""
        problems: list[str] = []
        held: res.Resources = {}
        for lease in self.leases.values():
            res.add(held, lease.held())
        reserved: res.Resources = {}
        for amounts in [*self.bundles.prepared.values(), *self.bundles.committed.values()]:
            res.add(reserved, amounts)
        names = set(self.total) | set(self.available) | set(held) | set(reserved) | set(self.overcommit)
        for name in sorted(names):
            have = self.available.get(name, 0)
            debt = self.overcommit.get(name, 0)
            if have < 0 or debt < 0:
                problems.append(f"{name}: available {have} / overcommit {debt} is negative")
            if have + held.get(name, 0) + reserved.get(name, 0) != self.total.get(name, 0) + debt:
                problems.append(f"{name}: available {have} + leased {held.get(name, 0)} + reserved "
                                f"{reserved.get(name, 0)} != total {self.total.get(name, 0)} + overcommit {debt}")
        seen_workers: set[bytes] = set()
        for lease_id, lease in self.leases.items():
            worker = lease.worker
            if lease.lease_id != lease_id:
                problems.append(f"lease {lease_id.hex()[:12]} is filed under another id")
            if worker.state is not WorkerState.LEASED or worker.lease_id != lease_id:
                problems.append(f"lease {lease_id.hex()[:12]} has {worker.label} in state "
                                f"{worker.state.name} serving lease {worker.lease_id!r}")
            if worker.worker_id in seen_workers:
                problems.append(f"{worker.label} serves two leases")
            seen_workers.add(worker.worker_id)
        for worker in self.workers.leased_workers():
            if worker.lease_id is not None and worker.lease_id not in self.leases:
                problems.append(f"{worker.label} is LEASED under lease {worker.lease_id.hex()[:12]}, which the table does not have")
        queued_ids = [id(req) for req in self.queue]
        if len(set(queued_ids)) != len(queued_ids):
            problems.append("a request is queued twice")
        problems += [f"{req.label} is queued in state {req.state.name}" for req in self.queue
                     if req.state is not RequestState.QUEUED]
        both = set(self.bundles.prepared) & set(self.bundles.committed)
        if both:
            problems.append(f"bundles both prepared and committed: {sorted(both)}")
        problems += self._gpu_problems()
        self.workers.validate()
        if problems:
            raise InvariantViolation("lease table of node " + self.node_label + ": " + "; ".join(problems))

    def _gpu_problems(self) -> list[str]:
        used: dict[int, int] = {}
        for lease in self.leases.values():
            amount = lease.resources.get("GPU", 0)
            for index in lease.gpu_ids:
                used[index] = used.get(index, 0) + min(amount, res.UNIT)
        return [f"GPU {index}: free {left} + leased {used.get(index, 0)} != one device"
                for index, left in self.gpus.free.items() if left + used.get(index, 0) != res.UNIT]
