"""Placement groups, sans I/O: events in, actions out, no sockets, no clocks.

States (Ray's names)::

    PENDING --placed--> CREATED --a node died--> RESCHEDULING --placed--> CREATED
       \\                  \\                          \\
        +------------------+--------------------------+--> REMOVED (final)

Placing is a two-phase commit, one *round* at a time per group: nodes are chosen for
every bundle still without one (``placement_policy``), each bundle is *prepared*
(reserved) on its node, and only when every preparation succeeded are they all
*committed*; a failed preparation cancels the prepared ones, and the group waits for
the next change of the cluster to try again. A node that dies during a round fails
its bundles at once (a late "ok" from it counts as a failure); bundles committed on
live nodes are kept and only the missing ones are placed again. A group removed
during a round has whatever the round reserved released when its answers arrive.
Each answer names its round, so a late answer for a finished round is recognised
(and an "ok" for it released).

``validate()`` checks the invariants (unit tests call it after every step).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from typing import Any, Union

from ember._private import resources as res
from ember._private.placement_policy import place
from ember._private.state_machine import History, TransitionTable
from ember.exceptions import InvariantViolation
from ember.gcs.actor_lifecycle import NodeView
from ember.protocol.gcs import PlacementGroupCreated, PlacementGroupRecord


class PgState(enum.Enum):
    PENDING = "PENDING"  # waiting for nodes with room for every bundle
    CREATED = "CREATED"  # every bundle committed
    RESCHEDULING = "RESCHEDULING"  # a node holding bundles died; placing them again
    REMOVED = "REMOVED"  # final


P = PgState
PG_TRANSITIONS: TransitionTable[PgState] = TransitionTable("placement group", {
    (P.PENDING, P.CREATED): "every bundle prepared and committed",
    (P.PENDING, P.REMOVED): "removed before it could be placed",
    (P.CREATED, P.RESCHEDULING): "a node holding some of its bundles died",
    (P.CREATED, P.REMOVED): "removed (or its job ended)",
    (P.RESCHEDULING, P.CREATED): "its lost bundles were placed again",
    (P.RESCHEDULING, P.REMOVED): "removed while being placed again",
})

WAITING_STATES = (PgState.PENDING, PgState.RESCHEDULING)


class Phase(enum.Enum):
    PREPARE = "PREPARE"
    COMMIT = "COMMIT"


# ---------------------------------------------------------------------------- actions
@dataclasses.dataclass(frozen=True)
class PrepareBundle:
    """Reserve bundle ``index`` on ``node_id``; answer with ``bundle_prepared``."""

    pg_id: bytes
    round: int
    index: int
    node_id: bytes
    resources: dict[str, float]


@dataclasses.dataclass(frozen=True)
class CommitBundle:
    """Commit a prepared bundle; answer with ``bundle_committed``."""

    pg_id: bytes
    round: int
    index: int
    node_id: bytes


@dataclasses.dataclass(frozen=True)
class CancelBundle:
    """Drop a prepared (uncommitted) reservation; no answer needed."""

    pg_id: bytes
    index: int
    node_id: bytes


@dataclasses.dataclass(frozen=True)
class RemoveBundle:
    """Remove a committed bundle (its node ends the tasks and actors using it); no answer needed."""

    pg_id: bytes
    index: int
    node_id: bytes


@dataclasses.dataclass(frozen=True)
class AccountBundle:
    """Until the node's next load report, count a bundle committed (``reserve``) or released."""

    node_id: bytes
    resources: dict[str, float]
    reserve: bool


@dataclasses.dataclass(frozen=True)
class KillGroupActors:
    """The group was removed: the actors placed in it die (not restarted)."""

    pg_id: bytes


@dataclasses.dataclass(frozen=True)
class Persist:
    pg_id: bytes


@dataclasses.dataclass(frozen=True)
class Wake:
    """The group is CREATED or REMOVED: answer ``wait_placement_group``."""

    pg_id: bytes


@dataclasses.dataclass(frozen=True)
class WarnUnplaceable:
    """No set of the current nodes could ever hold the group (said once per group)."""

    pg_id: bytes


Action = Union[PrepareBundle, CommitBundle, CancelBundle, RemoveBundle, AccountBundle, KillGroupActors,
               Persist, Wake, WarnUnplaceable]


@dataclasses.dataclass
class Round:
    """One two-phase commit of some bundles of a group."""

    number: int
    nodes: dict[int, bytes]  # bundle index -> node chosen
    phase: Phase = Phase.PREPARE
    answers: dict[int, bool] = dataclasses.field(default_factory=dict)

    def complete(self) -> bool:
        return len(self.answers) == len(self.nodes)


# ---------------------------------------------------------------------------- groups
class PgEntry:
    state: PgState

    def __init__(self, spec: dict[str, Any]) -> None:
        self.pg_id: bytes = spec["pg_id"]
        self.name: str = spec.get("name") or ""
        self.namespace: str = spec.get("namespace") or ""
        self.bundles: list[dict[str, float]] = spec["bundles"]
        self.strategy: str = spec["strategy"]
        self.job: bytes | None = spec.get("job")
        self.detached = spec.get("lifetime") == "detached"
        self.history = History()
        PG_TRANSITIONS.start(self, PgState.PENDING, "created")
        #: The node of every committed bundle (None: not placed).
        self.nodes: list[bytes | None] = [None] * len(self.bundles)
        self.round: Round | None = None
        self.warned_unplaceable = False

    @property
    def removed(self) -> bool:
        return self.state is PgState.REMOVED

    @property
    def label(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"placement group{name} {self.pg_id.hex()}"

    def transition(self, new: PgState, reason: str) -> None:
        PG_TRANSITIONS.move(self, new, reason)

    def public(self) -> PlacementGroupRecord:
        return {
            "placement_group_id": self.pg_id.hex(),
            "name": self.name,
            "bundles": {i: dict(b) for i, b in enumerate(self.bundles)},
            "bundles_to_node_id": {i: n.hex() for i, n in enumerate(self.nodes) if n is not None},
            "strategy": self.strategy,
            "state": self.state.value,
            "stats": {"scheduling_state": self.state.value},
            "creator_job_id": self.job.hex() if self.job else None,
            "is_detached": self.detached,
        }


class PlacementGroupLifecycle:
    """Every placement group of the cluster and its rounds of placement."""

    def __init__(self) -> None:
        self.groups: dict[bytes, PgEntry] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self._rounds = 0
        self._actions: list[Action] = []

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    @property
    def waiting(self) -> bool:
        """Whether some group waits for nodes (has bundles to place and no round in flight)."""
        return any(e.state in WAITING_STATES and e.round is None for e in self.groups.values())

    # ============================================================ requests
    def create(self, spec: dict[str, Any]) -> PlacementGroupCreated:
        if spec["pg_id"] in self.groups:
            return {"pg_id": spec["pg_id"]}  # a retried request
        entry = PgEntry(spec)
        if entry.name:
            key = (entry.namespace, entry.name)
            if key in self.named:
                raise ValueError(f"A placement group named {entry.name!r} already exists in this namespace.")
            self.named[key] = entry.pg_id
        self.groups[entry.pg_id] = entry
        self._actions.append(Persist(entry.pg_id))
        return {"pg_id": entry.pg_id}

    def restore(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            entry = PgEntry(record["spec"])
            PG_TRANSITIONS.start(entry, PgState(record["state"]), "restored from storage after a restart")
            self.groups[entry.pg_id] = entry
            if entry.removed:
                continue
            entry.nodes = list(record["nodes"])
            if entry.name:
                self.named[(entry.namespace, entry.name)] = entry.pg_id

    def remove(self, pg_id: bytes) -> bool:
        """Remove a group (its bundles are released, its actors die). False if unknown or removed."""
        entry = self.groups.get(pg_id)
        if entry is None or entry.removed:
            return False
        entry.transition(PgState.REMOVED, "removed")
        self._actions += [Persist(pg_id), Wake(pg_id), KillGroupActors(pg_id)]
        if self.named.get((entry.namespace, entry.name)) == pg_id:
            del self.named[(entry.namespace, entry.name)]
        for index, node_id in enumerate(entry.nodes):
            if node_id is not None:
                self._release(entry, index, node_id)
        # A round in flight releases what it reserved when its answers come.
        return True

    def job_finished(self, job_id: bytes) -> None:
        for entry in list(self.groups.values()):
            if entry.job == job_id and not entry.detached and not entry.removed:
                self.remove(entry.pg_id)

    def node_died(self, node_id: bytes) -> None:
        for entry in self.groups.values():
            if entry.removed:
                continue
            if node_id in entry.nodes:
                entry.nodes = [None if n == node_id else n for n in entry.nodes]
                if entry.state is PgState.CREATED:
                    entry.transition(PgState.RESCHEDULING, f"node {node_id.hex()[:12]} died")
                    self._actions.append(Persist(entry.pg_id))
            current = entry.round
            if current is not None:
                # Its bundles there fail now (a late "ok" from the dead node counts for nothing).
                for index, chosen in current.nodes.items():
                    if chosen == node_id and index not in current.answers:
                        current.answers[index] = False
                self._maybe_finish_round(entry)

    # ============================================================ placing
    def schedule(self, nodes: Sequence[NodeView]) -> None:
        """Start a round for every group waiting for nodes that the nodes' free room allows."""
        available = {n.node_id: res.to_fixed(n.available) for n in nodes}
        totals = {n.node_id: res.to_fixed(n.resources) for n in nodes}
        for entry in self.groups.values():
            if entry.state not in WAITING_STATES or entry.round is not None:
                continue
            if entry.strategy == "STRICT_PACK" and any(n is not None for n in entry.nodes):
                # The survivors' node may not have room for the rest: place the whole group again.
                for index, node_id in enumerate(entry.nodes):
                    if node_id is not None:
                        self._release(entry, index, node_id)
            missing = [i for i, n in enumerate(entry.nodes) if n is None]
            room = dict(available)
            if entry.strategy == "STRICT_SPREAD":
                for survivor in entry.nodes:
                    if survivor is not None:
                        room.pop(survivor, None)  # a surviving bundle's node takes no other
            fixed = [res.to_fixed(entry.bundles[i]) for i in missing]
            choice = place(fixed, entry.strategy, room)
            if choice is None:
                if not entry.warned_unplaceable and place(fixed, entry.strategy, totals) is None:
                    entry.warned_unplaceable = True
                    self._actions.append(WarnUnplaceable(entry.pg_id))
                continue
            self._rounds += 1
            entry.round = Round(self._rounds, dict(zip(missing, choice)))
            for index, node_id in entry.round.nodes.items():
                # Later groups of this pass see this round's reservations.
                res.subtract(available[node_id], res.to_fixed(entry.bundles[index]))
                self._actions.append(PrepareBundle(entry.pg_id, entry.round.number, index, node_id,
                                                   dict(entry.bundles[index])))

    def bundle_prepared(self, pg_id: bytes, round_number: int, index: int, ok: bool) -> None:
        self._answer(pg_id, round_number, index, ok, Phase.PREPARE)

    def bundle_committed(self, pg_id: bytes, round_number: int, index: int, ok: bool) -> None:
        self._answer(pg_id, round_number, index, ok, Phase.COMMIT)

    def _answer(self, pg_id: bytes, round_number: int, index: int, ok: bool, phase: Phase) -> None:
        entry = self.groups.get(pg_id)
        current = entry.round if entry is not None else None
        if (entry is None or current is None or current.number != round_number or current.phase is not phase
                or index not in current.nodes or index in current.answers):
            return  # late: the round ended, or the bundle's node died first
        current.answers[index] = ok
        self._maybe_finish_round(entry)

    def _maybe_finish_round(self, entry: PgEntry) -> None:
        current = entry.round
        if current is None or not current.complete():
            return
        succeeded = [i for i, ok in current.answers.items() if ok]
        if current.phase is Phase.PREPARE:
            if entry.removed or len(succeeded) < len(current.nodes):
                entry.round = None
                self._actions += [CancelBundle(entry.pg_id, i, current.nodes[i]) for i in succeeded]
                return
            current.phase, current.answers = Phase.COMMIT, {}
            self._actions += [CommitBundle(entry.pg_id, current.number, i, n) for i, n in current.nodes.items()]
            return
        entry.round = None
        if entry.removed:
            self._actions += [RemoveBundle(entry.pg_id, i, current.nodes[i]) for i in succeeded]
            return
        for index in succeeded:
            node_id = current.nodes[index]
            entry.nodes[index] = node_id
            self._actions.append(AccountBundle(node_id, dict(entry.bundles[index]), True))
        if all(n is not None for n in entry.nodes):
            placed = [n.hex()[:12] if n else None for n in entry.nodes]
            entry.transition(PgState.CREATED, f"bundles on nodes {placed}")
            self._actions.append(Wake(entry.pg_id))
        self._actions.append(Persist(entry.pg_id))

    def _release(self, entry: PgEntry, index: int, node_id: bytes) -> None:
        entry.nodes[index] = None
        self._actions.append(AccountBundle(node_id, dict(entry.bundles[index]), False))
        self._actions.append(RemoveBundle(entry.pg_id, index, node_id))

    # ============================================================ invariants
    def validate(self) -> None:
        problems: list[str] = []
        for pg_id, entry in self.groups.items():
            what = entry.label
            placed = [n for n in entry.nodes if n is not None]
            if len(entry.nodes) != len(entry.bundles):
                problems.append(f"{what} has {len(entry.nodes)} bundle slots for {len(entry.bundles)} bundles")
            if entry.removed and placed:
                problems.append(f"{what} is REMOVED but still holds bundles on {placed}")
            if entry.state is PgState.CREATED:
                if len(placed) != len(entry.bundles):
                    problems.append(f"{what} is CREATED with bundles unplaced")
                if entry.round is not None:
                    problems.append(f"{what} is CREATED with a round in flight")
                if entry.strategy == "STRICT_PACK" and len(set(placed)) > 1:
                    problems.append(f"{what} is STRICT_PACK across nodes {placed}")
                if entry.strategy == "STRICT_SPREAD" and len(set(placed)) != len(placed):
                    problems.append(f"{what} is STRICT_SPREAD with bundles sharing a node")
            elif entry.state in WAITING_STATES and placed and len(placed) == len(entry.bundles):
                problems.append(f"{what} is {entry.state.name} with every bundle placed")
            if entry.round is not None:
                for index in entry.round.nodes:
                    if entry.nodes[index] is not None:
                        problems.append(f"{what}: bundle {index} is committed and in a round at once")
                if not set(entry.round.answers) <= set(entry.round.nodes):
                    problems.append(f"{what}: answers for bundles outside its round")
            if entry.name and not entry.removed and self.named.get((entry.namespace, entry.name)) != pg_id:
                problems.append(f"{what} is live but its name maps elsewhere")
        for (namespace, name), pg_id in self.named.items():
            group = self.groups.get(pg_id)
            if group is None or group.removed or (group.namespace, group.name) != (namespace, name):
                problems.append(f"name {namespace}/{name} maps to {pg_id.hex()}, not a live group of that name")
        if problems:
            raise InvariantViolation("placement groups: " + "; ".join(problems))
