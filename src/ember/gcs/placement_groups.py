"""Placement groups, owned by the control service.

States (Ray's names)::

    PENDING --placed--> CREATED --a node died--> RESCHEDULING --placed--> CREATED
       \\                  \\                          \\
        +------------------+--------------------------+--> REMOVED (final)

Placement is atomic: nodes are chosen for every bundle (``placement_policy``),
every bundle is *prepared* (reserved) on its node, and only when all
reservations succeed are they *committed*; any failure cancels every
reservation made, and the group is tried again shortly. A committed bundle
appears on its node as renamed resources (``CPU_group_<i>_<pg>``,
``CPU_group_<pg>``, ``bundle_group_...``) that tasks and actors scheduled into
the group request instead of the plain ones.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, Any

from ember._private import resources as res
from ember._private.config import config
from ember._private.placement_policy import place
from ember._private.state_machine import History, TransitionTable
from ember.exceptions import ConnectionLost, RemoteError
from ember.gcs import persistence as db

if TYPE_CHECKING:
    from ember.gcs.server import GcsServer

logger = logging.getLogger(__name__)


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
        self.waiters: list[asyncio.Future[None]] = []
        self.nodes: list[bytes | None] = [None] * len(self.bundles)
        self.task: asyncio.Task[None] | None = None
        self.created_at = time.time()

    @property
    def removed(self) -> bool:
        return self.state is PgState.REMOVED

    @property
    def label(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"placement group{name} {self.pg_id.hex()}"

    def transition(self, new: PgState, reason: str) -> None:
        PG_TRANSITIONS.move(self, new, reason)

    def public(self) -> dict[str, Any]:
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


class PlacementGroupManager:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.groups: dict[bytes, PgEntry] = {}
        self.named: dict[tuple[str, str], bytes] = {}

    # ================================================================ API
    def _persist(self, entry: PgEntry) -> None:
        self.gcs.storage.put("pgs", entry.pg_id, db.pack(db.pg_record(entry)))

    def restore(self) -> None:
        for _, data in self.gcs.storage.items("pgs"):
            record = db.unpack(data)
            entry = PgEntry(record["spec"])
            PG_TRANSITIONS.start(entry, PgState(record["state"]), "restored from storage after a restart")
            entry.nodes = list(record["nodes"])
            self.groups[entry.pg_id] = entry
            if entry.state is PgState.REMOVED:
                continue
            if entry.name:
                self.named[(entry.namespace, entry.name)] = entry.pg_id
            if entry.state is not PgState.CREATED:
                entry.task = self.gcs.background.spawn(self._schedule(entry), f"place group {entry.pg_id.hex()[:12]}")

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        if spec["pg_id"] in self.groups:
            return {"pg_id": spec["pg_id"]}  # a retried request
        entry = PgEntry(spec)
        if entry.name:
            key = (entry.namespace, entry.name)
            existing = self.named.get(key)
            if existing is not None and self.groups[existing].state is not PgState.REMOVED:
                raise ValueError(f"A placement group named {entry.name!r} already exists in this namespace.")
            self.named[key] = entry.pg_id
        self.groups[entry.pg_id] = entry
        self._persist(entry)
        entry.task = self.gcs.background.spawn(self._schedule(entry), f"place group {entry.pg_id.hex()[:12]}")
        return {"pg_id": entry.pg_id}

    def _wake(self, entry: PgEntry) -> None:
        waiters, entry.waiters = entry.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_ready(self, pg_id: bytes) -> str:
        """Answer once the group is CREATED (or REMOVED); returns the state."""
        entry = self.groups.get(pg_id)
        if entry is None:
            return "REMOVED"
        while entry.state not in (PgState.CREATED, PgState.REMOVED):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry.waiters.append(fut)
            await fut
        return str(entry.state.value)

    async def remove(self, pg_id: bytes) -> bool:
        entry = self.groups.get(pg_id)
        if entry is None or entry.state is PgState.REMOVED:
            return False
        entry.transition(PgState.REMOVED, "removed")
        self._persist(entry)
        self._wake(entry)
        for i, node in enumerate(entry.nodes):
            view = self.gcs.nodes.get(node) if node is not None else None
            if view is not None:
                for name, amount in entry.bundles[i].items():
                    view.available[name] = view.available.get(name, 0.0) + amount
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        # Actors placed in the group end with it (not restarted).
        for actor in list(self.gcs.actor_manager.actors.values()):
            strategy = actor.spec.get("pg")
            if strategy == pg_id:
                self.gcs.actor_manager.kill(actor.actor_id, True, "its placement group was removed")
        if entry.name and self.named.get((entry.namespace, entry.name)) == pg_id:
            del self.named[(entry.namespace, entry.name)]
        # The nodes give the resources back in the background (as in Ray, removal is asynchronous).
        placed = [(i, node) for i, node in enumerate(entry.nodes) if node is not None]
        if placed:
            self.gcs.background.spawn(self._remove_bundles(pg_id, placed), "remove bundles")
        return True

    async def _remove_bundles(self, pg_id: bytes, placed: list[tuple[int, bytes]]) -> None:
        await asyncio.gather(*(
            self._node_call(node, "remove_bundle", {"pg_id": pg_id, "index": i}) for i, node in placed
        ), return_exceptions=True)

    def get_by_name(self, name: str, namespace: str) -> dict[str, Any] | None:
        pg_id = self.named.get((namespace, name))
        if pg_id is None:
            return None
        return self.groups[pg_id].public()

    def table(self) -> dict[str, dict[str, Any]]:
        return {entry.pg_id.hex(): entry.public() for entry in self.groups.values()}

    # ================================================================ placing
    async def _schedule(self, entry: PgEntry) -> None:
        try:
            await self._schedule_until_placed(entry)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("placing placement group %s failed; trying again", entry.pg_id.hex()[:12])
            await asyncio.sleep(config().placement_retry_delay_s)
            if entry.state in (PgState.PENDING, PgState.RESCHEDULING):
                entry.task = self.gcs.background.spawn(self._schedule(entry), f"place group {entry.pg_id.hex()[:12]}")

    async def _schedule_until_placed(self, entry: PgEntry) -> None:
        warned = False
        while entry.state in (PgState.PENDING, PgState.RESCHEDULING):
            missing = [i for i, n in enumerate(entry.nodes) if n is None]
            if entry.strategy == "STRICT_PACK" and len(missing) != len(entry.nodes):
                await self._release(entry, [i for i, n in enumerate(entry.nodes) if n is not None])
                missing = list(range(len(entry.nodes)))
            alive = {nid: n for nid, n in self.gcs.nodes.items() if n.alive and n.conn is not None}
            avail = {nid: res.to_fixed(n.available) for nid, n in alive.items()}
            if entry.strategy == "STRICT_SPREAD":
                for node in entry.nodes:
                    if node is not None:
                        avail.pop(node, None)  # a surviving bundle's node cannot take another
            fixed = [res.to_fixed(entry.bundles[i]) for i in missing]
            choice = place(fixed, entry.strategy, avail)
            if choice is None:
                if not warned and place(fixed, entry.strategy, {nid: res.to_fixed(n.info["resources"]) for nid, n in alive.items()}) is None:
                    warned = True
                    shapes = "; ".join(res.describe(res.to_fixed(n.info["resources"])) for n in alive.values())
                    logger.warning(
                        "placement group %s (%s, bundles %s) cannot be placed on the current nodes (%s); "
                        "it waits for nodes to join", entry.pg_id.hex()[:12], entry.strategy, entry.bundles, shapes,
                    )
                await self.gcs.cluster_changed.wait(config().cluster_change_wait_s)
                continue
            if await self._reserve(entry, missing, choice):
                entry.transition(PgState.CREATED, f"bundles on nodes {[n.hex()[:12] if n else None for n in entry.nodes]}")
                self._persist(entry)
                self._wake(entry)
                logger.info("placement group %s created", entry.pg_id.hex()[:12])
                return
            await asyncio.sleep(0.02)

    async def _reserve(self, entry: PgEntry, indexes: list[int], nodes: list[bytes]) -> bool:
        """Prepare every bundle, then commit all; on any failure cancel what was prepared."""
        prepared: list[tuple[int, bytes]] = []
        ok = True
        results = await asyncio.gather(*(
            self._node_call(node, "prepare_bundle", {"pg_id": entry.pg_id, "index": i, "resources": entry.bundles[i]})
            for i, node in zip(indexes, nodes)
        ), return_exceptions=True)
        for i, node, result in zip(indexes, nodes, results):
            if isinstance(result, BaseException):
                ok = False
            else:
                prepared.append((i, node))
        if not ok or entry.state is PgState.REMOVED:
            await asyncio.gather(*(
                self._node_call(node, "cancel_bundle", {"pg_id": entry.pg_id, "index": i}) for i, node in prepared
            ), return_exceptions=True)
            return False
        results = await asyncio.gather(*(
            self._node_call(node, "commit_bundle", {"pg_id": entry.pg_id, "index": i}) for i, node in prepared
        ), return_exceptions=True)
        if entry.removed:
            # Removed while we committed: undo what was committed.
            committed = [(i, node) for (i, node), r in zip(prepared, results) if not isinstance(r, BaseException)]
            if committed:
                await self._remove_bundles(entry.pg_id, committed)
            return False
        for (i, node), result in zip(prepared, results):
            if not isinstance(result, BaseException):
                entry.nodes[i] = node
                # Until the node's next report, account for the reservation here.
                view = self.gcs.nodes.get(node)
                if view is not None:
                    for name, amount in entry.bundles[i].items():
                        view.available[name] = max(0.0, view.available.get(name, 0.0) - amount)
        return all(not isinstance(r, BaseException) for r in results)

    async def _release(self, entry: PgEntry, indexes: list[int]) -> None:
        await asyncio.gather(*(
            self._node_call(entry.nodes[i], "remove_bundle", {"pg_id": entry.pg_id, "index": i})  # type: ignore[arg-type]
            for i in indexes
        ), return_exceptions=True)
        for i in indexes:
            entry.nodes[i] = None

    async def _node_call(self, node_id: bytes, method: str, payload: dict[str, Any]) -> Any:
        node = self.gcs.nodes.get(node_id)
        if node is None or not node.alive or node.conn is None:
            raise ConnectionLost(f"node {node_id.hex()[:12]} is not connected")
        try:
            return await node.conn.call(method, payload, timeout=config().gcs_node_call_timeout_s)
        except RemoteError:
            raise

    # ================================================================ failures
    def on_node_died(self, node_id: bytes) -> None:
        for entry in self.groups.values():
            if entry.state is PgState.REMOVED or node_id not in entry.nodes:
                continue
            entry.nodes = [None if n == node_id else n for n in entry.nodes]
            if entry.state is PgState.CREATED:
                entry.transition(PgState.RESCHEDULING, f"node {node_id.hex()[:12]} died")
                self._persist(entry)
                logger.info("placement group %s lost bundles on node %s; placing them again",
                            entry.pg_id.hex()[:12], node_id.hex()[:12])
                entry.task = self.gcs.background.spawn(self._schedule(entry), f"place group {entry.pg_id.hex()[:12]}")

    def on_job_finished(self, job_id: bytes) -> None:
        for entry in list(self.groups.values()):
            if entry.job == job_id and not entry.detached and entry.state is not PgState.REMOVED:
                self.gcs.background.spawn(self.remove(entry.pg_id), "remove group")
