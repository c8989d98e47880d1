"""The actor lifecycle, sans I/O: events in, actions out, no sockets, no clocks.

States keep Ray's names; transitions live in ``ACTOR_TRANSITIONS``::

    PENDING_CREATION --created--> ALIVE --worker died--> RESTARTING --created--> ALIVE
          |                         |                        |
          +----- creation failed / killed / out of restarts -+--> DEAD (final)

An actor that is not yet ALIVE (PENDING_CREATION or RESTARTING) waits in exactly one
queue of :class:`Stage`: PLACING (no node chosen yet: it waits for one that can host it),
LEASING (a worker lease asked of one node, no answer yet) or CREATING (its constructor
pushed to a leased worker, no reply yet). :class:`ActorLifecycle` takes the events that
move actors along (registration, node views to place on, lease answers, creation
replies, worker and node deaths, kills, a job's end) and queues :data:`Action` values
for its shell (``actor_manager.ActorManager``) to carry out: ask a node for a lease,
push a constructor, kill a worker, persist a record, wake the callers waiting on an
actor. Late answers are recognised and dropped: a lease answer names its request id,
a creation reply its worker, and each must still be the actor's current one.

``validate()`` checks the invariants (unit tests call it after every step).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from typing import Any, Union

from ember._private import resources as res
from ember._private.placement_policy import round_robin
from ember._private.state_machine import History, TransitionTable
from ember.exceptions import InvariantViolation
from ember.protocol.gcs import ActorRecord
from ember.protocol.raylet import LeaseReply


class ActorState(enum.Enum):
    DEPENDENCIES_UNREADY = "DEPENDENCIES_UNREADY"  # (unused: arguments are resolved by the actor's worker)
    PENDING_CREATION = "PENDING_CREATION"  # waiting for a worker, or running __init__
    ALIVE = "ALIVE"  # __init__ finished; callers may send calls to ``address``
    RESTARTING = "RESTARTING"  # its worker died; a new one is being created
    DEAD = "DEAD"  # final: ``death_cause`` says why


A = ActorState
ACTOR_TRANSITIONS: TransitionTable[ActorState] = TransitionTable("actor", {
    (A.PENDING_CREATION, A.ALIVE): "its constructor finished on a dedicated worker",
    (A.PENDING_CREATION, A.DEAD): "its constructor raised, it was killed, or its owner died",
    (A.PENDING_CREATION, A.RESTARTING): "its worker died during creation; restarts remain",
    (A.ALIVE, A.RESTARTING): "its worker or node died; restarts remain",
    (A.ALIVE, A.DEAD): "killed, out of restarts, or its owner/handles are gone",
    (A.RESTARTING, A.ALIVE): "re-created on a new worker",
    (A.RESTARTING, A.DEAD): "killed or failed while restarting",
    (A.RESTARTING, A.RESTARTING): "its new worker died too; restarts remain",
})

PENDING_STATES = (ActorState.PENDING_CREATION, ActorState.RESTARTING)


class Stage(enum.Enum):
    """Where a pending actor's creation stands (the queue it is in)."""

    PLACING = "PLACING"  # waiting for a node that can host it
    LEASING = "LEASING"  # a worker lease asked of ``lease_request``'s node
    CREATING = "CREATING"  # its constructor runs on ``worker_id``


class LeaseFailure(enum.Enum):
    """Why a lease request ended without a grant."""

    NODE_LOST = "NODE_LOST"  # the node went away: place the actor again
    UNSCHEDULABLE = "UNSCHEDULABLE"  # no node can ever host it (or past the node's limits)
    RUNTIME_ENV = "RUNTIME_ENV"  # its runtime_env could not be set up
    ERROR = "ERROR"  # anything else: a bug, the actor dies with the message


# ---------------------------------------------------------------------------- actions
@dataclasses.dataclass(frozen=True)
class RequestLease:
    """Ask ``node_id`` for a dedicated worker lease; answer with ``lease_granted``/``lease_spilled``/
    ``lease_cancelled``/``lease_failed`` naming ``request_id``. Never cancel the wait itself (a
    grant on its way would be lost with its resources): the core sends ``CancelLeaseRequest``."""

    actor_id: bytes
    node_id: bytes
    request_id: bytes
    request: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CancelLeaseRequest:
    node_id: bytes
    request_id: bytes


@dataclasses.dataclass(frozen=True)
class ReturnLease:
    """Give back a lease nobody will use (its worker is ended)."""

    node_id: bytes
    lease_id: bytes


@dataclasses.dataclass(frozen=True)
class PushCreation:
    """Run the constructor on the leased worker at ``address``; answer with ``creation_replied``,
    ``creation_lost`` (connection gone: the node reports the death) or ``creation_error``."""

    actor_id: bytes
    worker_id: bytes
    address: list[Any]
    payload: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class KillWorker:
    node_id: bytes
    worker_id: bytes


@dataclasses.dataclass(frozen=True)
class Persist:
    """Write the actor's record (``persistence.actor_record``) before answering anyone."""

    actor_id: bytes


@dataclasses.dataclass(frozen=True)
class Wake:
    """The actor changed state: answer the ``wait_actor`` long-polls on it."""

    actor_id: bytes


@dataclasses.dataclass(frozen=True)
class WarnUnplaceable:
    """No node of the cluster can host the actor (said once per actor); it waits for one."""

    actor_id: bytes


Action = Union[RequestLease, CancelLeaseRequest, ReturnLease, PushCreation, KillWorker, Persist, Wake,
               WarnUnplaceable]


@dataclasses.dataclass(frozen=True)
class NodeView:
    """What placement needs to know of a live node."""

    node_id: bytes
    resources: dict[str, float]
    available: dict[str, float]


# ---------------------------------------------------------------------------- actors
class ActorEntry:
    state: ActorState

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.actor_id: bytes = spec["actor_id"]
        self.history = History()
        ACTOR_TRANSITIONS.start(self, ActorState.PENDING_CREATION, "registered")
        self.stage: Stage | None = Stage.PLACING
        self.address: list[Any] | None = None
        #: The current worker (CREATING or ALIVE); after death, the last one.
        self.worker_id: bytes | None = None
        self.worker_address: list[Any] | None = None
        self.node_id: bytes | None = None
        self.lease_id: bytes | None = None
        self.pid = 0
        self.incarnation = 0
        self.num_restarts = 0
        self.death_cause = ""
        self.creation_error: list[Any] | None = None  # inline serialized RayTaskError
        self.error_type = ""
        #: While LEASING: the node asked and the request's id.
        self.lease_request: tuple[bytes, bytes] | None = None
        self.lease_seq = 0
        self.warned_unplaceable = False
        #: True while no live node could ever host it (demand an autoscaler may add a node for).
        self.awaiting_node = False

    @property
    def dead(self) -> bool:
        return self.state is ActorState.DEAD

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.spec.get("namespace") or "")

    @property
    def max_restarts(self) -> int:
        return int(self.spec.get("max_restarts", 0) or 0)

    @property
    def label(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"actor {self.spec.get('class_name', '')}{name} {self.actor_id.hex()}"

    def transition(self, new: ActorState, reason: str) -> None:
        ACTOR_TRANSITIONS.move(self, new, reason)

    def public(self) -> ActorRecord:
        return {
            "actor_id": self.actor_id,
            "state": self.state.value,
            "address": self.address,
            "incarnation": self.incarnation,
            "death_cause": self.death_cause,
            "creation_error": self.creation_error,
            "error_type": self.error_type,
            "num_restarts": self.num_restarts,
            "name": self.name,
            "namespace": self.namespace,
            "class_name": self.spec.get("class_name", ""),
            "pid": self.pid,
            "node_id": self.node_id,
            "job_id": self.spec.get("job"),
            "detached": bool(self.spec.get("detached")),
            "meta": self.spec.get("meta"),
        }


class ActorLifecycle:
    """Every actor of the cluster and where its creation stands (see the module docstring).

    ``request_nonce`` makes lease request ids unique across control-service restarts (a node
    answers a repeated id with its first answer).
    """

    def __init__(self, request_nonce: bytes = b"") -> None:
        self.actors: dict[bytes, ActorEntry] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        #: The current worker of every ALIVE or CREATING actor.
        self.by_worker: dict[bytes, bytes] = {}
        #: Pending actors by stage (dicts as ordered sets: placement goes first come, first served).
        self.queues: dict[Stage, dict[bytes, None]] = {stage: {} for stage in Stage}
        #: The node of the last SPREAD actor (round robin across the nodes that can host them).
        self._spread_last: bytes | None = None
        self._nonce = request_nonce
        self._actions: list[Action] = []

    def take_actions(self) -> list[Action]:
        """The actions queued since the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    @property
    def placing(self) -> bool:
        return bool(self.queues[Stage.PLACING])

    # ============================================================ registration
    def register(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A new actor (idempotent by actor id). Raises ValueError for a name already taken."""
        if spec["actor_id"] in self.actors:
            return {"actor_id": spec["actor_id"], "existing": False}  # a retried registration
        name = spec.get("name")
        if name:
            key = (spec.get("namespace") or "", name)
            existing_id = self.named.get(key)
            if existing_id is not None:
                existing = self.actors[existing_id]
                if spec.get("get_if_exists"):
                    return {"actor_id": existing_id, "existing": True, "meta": existing.spec.get("meta")}
                raise ValueError(
                    f"An actor named {name!r} already exists in namespace {key[0]!r}. Use "
                    "get_if_exists=True to reuse it, or pick another name."
                )
            self.named[key] = spec["actor_id"]
        entry = ActorEntry(spec)
        self.actors[entry.actor_id] = entry
        self._enqueue(entry, Stage.PLACING)
        self._actions.append(Persist(entry.actor_id))
        return {"actor_id": entry.actor_id, "existing": False}

    def restore(self, records: Iterable[dict[str, Any]]) -> None:
        """Rebuild the table from stored records after a control-service restart: actors whose
        creation was under way are placed again (their old leases are released on reconnection)."""
        for record in records:
            entry = ActorEntry(record["spec"])
            ACTOR_TRANSITIONS.start(entry, ActorState(record["state"]), "restored from storage after a restart")
            entry.address = record.get("address")
            entry.worker_id = record.get("worker_id")
            entry.node_id = record.get("node_id")
            entry.lease_id = record.get("lease_id")
            entry.pid = record.get("pid") or 0
            entry.incarnation = record.get("incarnation") or 0
            entry.num_restarts = record.get("num_restarts") or 0
            entry.death_cause = record.get("death_cause") or ""
            entry.creation_error = record.get("creation_error")
            entry.error_type = record.get("error_type") or ""
            entry.stage = None
            self.actors[entry.actor_id] = entry
            if entry.dead:
                continue
            if entry.name:
                self.named[(entry.namespace, entry.name)] = entry.actor_id
            if entry.state is ActorState.ALIVE and entry.worker_id is not None and entry.node_id is not None:
                self.by_worker[entry.worker_id] = entry.actor_id
            elif entry.state is ActorState.ALIVE:
                self._mark_dead(entry, "its stored record names no worker (a damaged record)")
            else:
                self._forget_worker(entry)
                self._enqueue(entry, Stage.PLACING)

    def leases_to_release(self, node_id: bytes, gcs_leases: Iterable[Sequence[Any]]) -> list[bytes]:
        """A node came back with worker leases granted to a previous control service: those
        no actor uses now (to be ended)."""
        in_use = {
            self.actors[actor_id].lease_id for actor_id in self.by_worker.values()
            if self.actors[actor_id].node_id == node_id
        }
        return [lease[0] for lease in gcs_leases if lease[0] not in in_use]

    def get_named(self, name: str, namespace: str) -> ActorEntry | None:
        actor_id = self.named.get((namespace, name))
        return self.actors[actor_id] if actor_id is not None else None

    # ============================================================ placement
    def place(self, nodes: Sequence[NodeView]) -> None:
        """Choose a node for every actor waiting for one, and ask it for a lease."""
        for actor_id in list(self.queues[Stage.PLACING]):
            entry = self.actors[actor_id]
            node_id = self._pick_node(entry, nodes)
            entry.awaiting_node = node_id is None
            if node_id is None:
                if not entry.warned_unplaceable:
                    entry.warned_unplaceable = True
                    self._actions.append(WarnUnplaceable(actor_id))
                continue
            # A SPREAD actor's node was chosen here: that node must host it (no second spreading).
            self._request_lease(entry, node_id, spilled=entry.spec.get("strategy") == "SPREAD")

    def _pick_node(self, entry: ActorEntry, nodes: Sequence[NodeView]) -> bytes | None:
        need = res.to_fixed(entry.spec.get("place") or {})
        preferred = entry.spec.get("node_id")
        candidates = sorted(nodes, key=lambda n: n.node_id != preferred)
        feasible = [n for n in candidates if res.fits(need, res.to_fixed(n.resources))]
        if not feasible:
            return None
        if entry.spec.get("strategy") == "SPREAD":
            # Spread actors here, where every node is known: a node daemon's view of the
            # cluster lags joins, so round robin there can miss a node that just joined.
            ready = [n for n in feasible if res.fits(need, res.to_fixed(n.available))]
            node_id = round_robin((n.node_id for n in ready or feasible), self._spread_last)
            self._spread_last = node_id
            return node_id
        return feasible[0].node_id

    def _request_lease(self, entry: ActorEntry, node_id: bytes, spilled: bool) -> None:
        entry.lease_seq += 1
        # Unique per request: node daemons answer a repeated request id with the same answer, so
        # going back to a node after a spillback must not reuse one.
        request_id = entry.actor_id + self._nonce + entry.lease_seq.to_bytes(4, "big")
        request: dict[str, Any] = {
            "resources": entry.spec.get("place") or {}, "hold": entry.spec.get("hold") or {},
            "request_id": request_id, "strategy": entry.spec.get("strategy"), "spilled": spilled,
            "actor": True,
        }
        if entry.spec.get("renv"):
            request["renv"] = entry.spec["renv"]
        entry.lease_request = (node_id, request_id)
        self._enqueue(entry, Stage.LEASING)
        self._actions.append(RequestLease(entry.actor_id, node_id, request_id, request))

    def _current_request(self, actor_id: bytes, request_id: bytes) -> ActorEntry | None:
        """The actor if ``request_id`` is its lease request in flight, else None (a late answer)."""
        entry = self.actors.get(actor_id)
        if entry is None or entry.stage is not Stage.LEASING or entry.lease_request is None:
            return None
        return entry if entry.lease_request[1] == request_id else None

    # ============================================================ lease answers
    def lease_granted(self, actor_id: bytes, request_id: bytes, grant: LeaseReply) -> None:
        entry = self._current_request(actor_id, request_id)
        if entry is None:
            # Killed (or moved on) while the request waited: the grant won the race with the
            # cancellation. Give it back, ending its worker.
            self._actions.append(ReturnLease(grant["node_id"], grant["lease_id"]))
            return
        entry.lease_request = None
        entry.worker_id = grant["worker_id"]
        entry.node_id = grant["node_id"]
        entry.lease_id = grant["lease_id"]
        entry.worker_address = list(grant["address"])
        entry.pid = grant.get("pid", 0)
        self.by_worker[grant["worker_id"]] = actor_id
        self._enqueue(entry, Stage.CREATING)
        payload = {**entry.spec, "incarnation": entry.incarnation + 1, "gpus": grant.get("gpu_ids") or []}
        self._actions.append(PushCreation(actor_id, grant["worker_id"], entry.worker_address, payload))

    def lease_spilled(self, actor_id: bytes, request_id: bytes, node: NodeView | None) -> None:
        """The node sent the request on to ``node`` (None if that node is not alive here)."""
        entry = self._current_request(actor_id, request_id)
        if entry is None:
            return
        entry.lease_request = None
        if node is None:
            self._enqueue(entry, Stage.PLACING)
        else:
            self._request_lease(entry, node.node_id, spilled=True)

    def lease_cancelled(self, actor_id: bytes, request_id: bytes) -> None:
        """The node dropped the request because we asked (the actor was killed)."""
        entry = self._current_request(actor_id, request_id)
        if entry is not None:  # not asked by us: try again
            entry.lease_request = None
            self._enqueue(entry, Stage.PLACING)

    def lease_failed(self, actor_id: bytes, request_id: bytes, failure: LeaseFailure, message: str) -> None:
        entry = self._current_request(actor_id, request_id)
        if entry is None:
            return
        entry.lease_request = None
        if failure is LeaseFailure.NODE_LOST:
            self._enqueue(entry, Stage.PLACING)
        elif failure is LeaseFailure.UNSCHEDULABLE:
            entry.error_type = "ActorUnschedulableError"
            self._mark_dead(entry, f"it cannot be scheduled: {message}")
        elif failure is LeaseFailure.RUNTIME_ENV:
            entry.error_type = "RuntimeEnvSetupError"
            self._mark_dead(entry, f"its runtime_env could not be set up. {message}")
        else:
            self._mark_dead(entry, f"the control service could not create it: {message}")

    # ============================================================ creation replies
    def _creating(self, actor_id: bytes, worker_id: bytes) -> ActorEntry | None:
        entry = self.actors.get(actor_id)
        if entry is None or entry.stage is not Stage.CREATING or entry.worker_id != worker_id:
            return None  # killed, or its worker died and it moved on: a late reply
        return entry

    def creation_replied(self, actor_id: bytes, worker_id: bytes, reply: dict[str, Any]) -> None:
        entry = self._creating(actor_id, worker_id)
        if entry is None:
            return
        if reply.get("s") == "ok":
            entry.address = entry.worker_address
            entry.incarnation += 1
            self._dequeue(entry)
            self._transition(entry, ActorState.ALIVE,
                             f"created on worker pid {entry.pid} (incarnation {entry.incarnation})")
        else:
            entry.creation_error = reply.get("e")
            self._mark_dead(entry, "its constructor (__init__) raised an exception", kill=True)

    def creation_error(self, actor_id: bytes, worker_id: bytes, message: str) -> None:
        """Pushing the constructor failed for another reason than the worker's death."""
        entry = self._creating(actor_id, worker_id)
        if entry is not None:
            self._mark_dead(entry, f"the control service could not create it: {message}", kill=True)

    # ============================================================ deaths
    def worker_died(self, worker_id: bytes, detail: str) -> None:
        actor_id = self.by_worker.get(worker_id)
        if actor_id is not None:
            self._worker_lost(self.actors[actor_id], detail)
        # Actors owned by the dead worker die with it.
        for entry in list(self.actors.values()):
            owner = entry.spec.get("owner")
            if owner and owner[2] == worker_id and not entry.spec.get("detached") and not entry.dead:
                self.kill(entry.actor_id, True, "its owner (a worker process) died")

    def node_died(self, node_id: bytes, reason: str) -> None:
        for actor_id in list(self.by_worker.values()):
            entry = self.actors[actor_id]
            if entry.node_id == node_id:
                self._worker_lost(entry, f"its node {node_id.hex()[:12]} died ({reason})")
        # Requests waiting on that node will not be answered: place those actors again (a
        # late answer for the old request is dropped, a late grant returned).
        for actor_id in list(self.queues[Stage.LEASING]):
            entry = self.actors[actor_id]
            if entry.lease_request is not None and entry.lease_request[0] == node_id:
                entry.lease_request = None
                self._enqueue(entry, Stage.PLACING)

    def _worker_lost(self, entry: ActorEntry, detail: str) -> None:
        max_restarts = entry.max_restarts
        if max_restarts == -1 or entry.num_restarts < max_restarts:
            pid = entry.pid
            self._forget_worker(entry)
            entry.num_restarts += 1
            self._enqueue(entry, Stage.PLACING)
            self._transition(entry, ActorState.RESTARTING, f"restart {entry.num_restarts}: {detail} (pid {pid})")
        else:
            extra = f" and it has used all {max_restarts} restarts (max_restarts)" if max_restarts else ""
            self._mark_dead(entry, f"its worker process (pid {entry.pid}) died: {detail}{extra}")

    def job_finished(self, job_id: bytes) -> None:
        for entry in list(self.actors.values()):
            if entry.spec.get("job") == job_id and not entry.spec.get("detached") and not entry.dead:
                self.kill(entry.actor_id, True, "its owner (the driver of its job) exited")

    def kill(self, actor_id: bytes, no_restart: bool, cause: str = "it was killed with ember.kill()") -> bool:
        """Kill an actor (``no_restart=False``: end its worker only, restarts apply). False if unknown."""
        entry = self.actors.get(actor_id)
        if entry is None:
            return False
        if entry.dead:
            return True
        if no_restart:
            self._mark_dead(entry, cause, kill=True)
        elif entry.worker_id is not None and entry.node_id is not None and entry.worker_id in self.by_worker:
            self._actions.append(KillWorker(entry.node_id, entry.worker_id))
        return True

    def _mark_dead(self, entry: ActorEntry, cause: str, kill: bool = False) -> None:
        entry.death_cause = cause
        entry.address = None
        if entry.stage is Stage.LEASING and entry.lease_request is not None:
            self._actions.append(CancelLeaseRequest(*entry.lease_request))
        entry.lease_request = None
        has_worker = entry.worker_id is not None and self.by_worker.get(entry.worker_id) == entry.actor_id
        if has_worker and entry.worker_id is not None:
            del self.by_worker[entry.worker_id]
            if kill and entry.node_id is not None:
                self._actions.append(KillWorker(entry.node_id, entry.worker_id))
        if entry.name and self.named.get((entry.namespace, entry.name)) == entry.actor_id:
            del self.named[(entry.namespace, entry.name)]
        self._dequeue(entry)
        self._transition(entry, ActorState.DEAD, cause)

    def _forget_worker(self, entry: ActorEntry) -> None:
        if entry.worker_id is not None and self.by_worker.get(entry.worker_id) == entry.actor_id:
            del self.by_worker[entry.worker_id]
        entry.address = None
        entry.worker_id = entry.worker_address = entry.node_id = entry.lease_id = None
        entry.pid = 0

    # ============================================================ bookkeeping
    def _transition(self, entry: ActorEntry, new: ActorState, reason: str) -> None:
        entry.transition(new, reason)
        self._actions.append(Persist(entry.actor_id))
        self._actions.append(Wake(entry.actor_id))

    def _enqueue(self, entry: ActorEntry, stage: Stage) -> None:
        self._dequeue(entry)
        entry.stage = stage
        self.queues[stage][entry.actor_id] = None

    def _dequeue(self, entry: ActorEntry) -> None:
        if entry.stage is not None:
            self.queues[entry.stage].pop(entry.actor_id, None)
            entry.stage = None

    def validate(self) -> None:
        """Raise InvariantViolation if the table is inconsistent."""
        problems: list[str] = []
        for stage, queue in self.queues.items():
            for actor_id in queue:
                entry = self.actors.get(actor_id)
                if entry is None or entry.stage is not stage:
                    problems.append(f"{actor_id.hex()} is queued in {stage.name} but its stage is "
                                    f"{entry.stage if entry is not None else 'unknown'}")
        for actor_id, entry in self.actors.items():
            what = entry.label
            pending = entry.state in PENDING_STATES
            if pending != (entry.stage is not None):
                problems.append(f"{what} is {entry.state.name} in stage {entry.stage}")
            if entry.stage is not None and actor_id not in self.queues[entry.stage]:
                problems.append(f"{what} is in stage {entry.stage.name} but not in its queue")
            has_worker = entry.worker_id is not None and self.by_worker.get(entry.worker_id) == actor_id
            if entry.state is ActorState.ALIVE or entry.stage is Stage.CREATING:
                if not has_worker or entry.node_id is None or entry.lease_id is None:
                    problems.append(f"{what} ({entry.state.name}, {entry.stage}) has no current worker and node")
            elif has_worker:
                problems.append(f"{what} ({entry.state.name}, {entry.stage}) still holds worker {entry.worker_id!r}")
            if entry.state is ActorState.ALIVE and entry.address is None:
                problems.append(f"{what} is ALIVE without an address")
            if (entry.stage is Stage.LEASING) != (entry.lease_request is not None):
                problems.append(f"{what} in stage {entry.stage} has lease request {entry.lease_request!r}")
            if entry.max_restarts != -1 and entry.num_restarts > entry.max_restarts:
                problems.append(f"{what} restarted {entry.num_restarts} times, max_restarts={entry.max_restarts}")
            if entry.dead and (not entry.death_cause or entry.address is not None):
                problems.append(f"{what} is DEAD without a cause, or with an address")
            if entry.name and not entry.dead and self.named.get((entry.namespace, entry.name)) != actor_id:
                problems.append(f"{what} is live but its name maps to {self.named.get((entry.namespace, entry.name))!r}")
        for worker_id, actor_id in self.by_worker.items():
            entry = self.actors.get(actor_id)
            if entry is None or entry.worker_id != worker_id:
                problems.append(f"worker {worker_id.hex()} maps to {actor_id.hex()}, whose worker differs")
        for (namespace, name), actor_id in self.named.items():
            entry = self.actors.get(actor_id)
            if entry is None or entry.dead or (entry.namespace, entry.name) != (namespace, name):
                problems.append(f"name {namespace}/{name} maps to {actor_id.hex()}, not a live actor of that name")
        if problems:
            raise InvariantViolation("actor lifecycle: " + "; ".join(problems))
