"""Placement groups, owned by the control service: the async shell of ``pg_lifecycle``.

:class:`~ember.gcs.pg_lifecycle.PlacementGroupLifecycle` decides (two-phase placement,
rounds, failures); this shell feeds it requests, node deaths and the node daemons'
answers, and carries out its actions: bundle calls to node daemons as background
tasks owned by the control service, records written to storage, ``wait_placement_group``
long-polls answered. A committed bundle appears on its node as renamed resources
(``CPU_group_<i>_<pg>``, ``CPU_group_<pg>``, ``bundle_group_...``) that tasks and actors
scheduled into the group request instead of the plain ones.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ember._private import resources as res
from ember._private.config import config
from ember.exceptions import ConnectionLost, RpcError
from ember.gcs import persistence as db
from ember.gcs.actor_lifecycle import NodeView
from ember.gcs.pg_lifecycle import (
    PG_TRANSITIONS,
    AccountBundle,
    Action,
    CancelBundle,
    CommitBundle,
    KillGroupActors,
    Persist,
    PgEntry,
    PgState,
    PlacementGroupLifecycle,
    PrepareBundle,
    RemoveBundle,
    Wake,
    WarnUnplaceable,
)
from ember.protocol.gcs import PlacementGroupCreated, PlacementGroupRecord

if TYPE_CHECKING:
    from ember.gcs.server import GcsServer

__all__ = ["PG_TRANSITIONS", "PgEntry", "PgState", "PlacementGroupManager"]

logger = logging.getLogger(__name__)


class PlacementGroupManager:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.core = PlacementGroupLifecycle()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        #: The task that places waiting groups whenever the cluster changes (while any wait).
        self._scheduler: asyncio.Task[None] | None = None

    @property
    def groups(self) -> dict[bytes, PgEntry]:
        return self.core.groups

    @property
    def named(self) -> dict[tuple[str, str], bytes]:
        return self.core.named

    # ================================================================ events in
    def restore(self) -> None:
        self.core.restore(db.unpack(data) for _, data in self.gcs.storage.items("pgs"))
        self._apply()

    def create(self, spec: dict[str, Any]) -> PlacementGroupCreated:
        reply = self.core.create(spec)
        self._apply()
        return reply

    async def remove(self, pg_id: bytes) -> bool:
        # As in Ray, removal is asynchronous: the nodes give the resources back in the background.
        removed = self.core.remove(pg_id)
        self._apply()
        return removed

    def on_node_died(self, node_id: bytes) -> None:
        self.core.node_died(node_id)
        self._apply()

    def on_job_finished(self, job_id: bytes) -> None:
        self.core.job_finished(job_id)
        self._apply()

    def get_by_name(self, name: str, namespace: str) -> PlacementGroupRecord | None:
        pg_id = self.core.named.get((namespace, name))
        return self.core.groups[pg_id].public() if pg_id is not None else None

    def table(self) -> dict[str, PlacementGroupRecord]:
        return {entry.pg_id.hex(): entry.public() for entry in self.core.groups.values()}

    async def wait_ready(self, pg_id: bytes) -> str:
        """Answer once the group is CREATED (or REMOVED); returns the state."""
        entry = self.core.groups.get(pg_id)
        if entry is None:
            return "REMOVED"
        while entry.state not in (PgState.CREATED, PgState.REMOVED):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(pg_id, []).append(fut)
            await fut
        return str(entry.state.value)

    # ================================================================ actions out
    def _apply(self) -> None:
        if self.core.waiting:
            self.core.schedule(self._node_views())
        for action in self.core.take_actions():
            self._do(action)
        if self.core.waiting and (self._scheduler is None or self._scheduler.done()):
            self._scheduler = self.gcs.background.spawn_if_open(self._schedule_when_nodes_change(),
                                                                "place waiting groups")

    def _do(self, action: Action) -> None:
        if isinstance(action, Persist):
            entry = self.core.groups[action.pg_id]
            self.gcs.storage.put("pgs", entry.pg_id, db.pack(db.pg_record(entry)))
        elif isinstance(action, Wake):
            if self.core.groups[action.pg_id].state is PgState.CREATED:
                logger.info("placement group %s created", action.pg_id.hex()[:12])
            for fut in self._waiters.pop(action.pg_id, ()):
                if not fut.done():
                    fut.set_result(None)
        elif isinstance(action, (PrepareBundle, CommitBundle)):
            self.gcs.background.spawn_if_open(self._two_phase_call(action), "placement group bundle")
        elif isinstance(action, (CancelBundle, RemoveBundle)):
            method = "cancel_bundle" if isinstance(action, CancelBundle) else "remove_bundle"
            self.gcs.background.spawn_if_open(
                self._release_call(method, action.node_id, {"pg_id": action.pg_id, "index": action.index}),
                method)
        elif isinstance(action, AccountBundle):
            view = self.gcs.nodes.get(action.node_id)
            if view is not None:
                for name, amount in action.resources.items():
                    left = view.available.get(name, 0.0) + (-amount if action.reserve else amount)
                    view.available[name] = max(0.0, left)
        elif isinstance(action, KillGroupActors):
            for actor in list(self.gcs.actor_manager.actors.values()):
                if actor.spec.get("pg") == action.pg_id:
                    self.gcs.actor_manager.kill(actor.actor_id, True, "its placement group was removed")
        elif isinstance(action, WarnUnplaceable):
            self._warn_unplaceable(self.core.groups[action.pg_id])

    def _warn_unplaceable(self, entry: PgEntry) -> None:
        """The group fits no set of current nodes: the autoscaler adds nodes, or its driver is told it
        waits forever."""
        missing = [entry.bundles[i] for i, node in enumerate(entry.nodes) if node is None]
        totals = {n.node_id: res.to_fixed(n.resources) for n in self._node_views()}
        what = f"{entry.label} ({entry.strategy})"
        if self.gcs.autoscaler.can_launch_for_group(missing, entry.strategy, totals):
            logger.info("%s waits for the autoscaler to add nodes", what)
            return
        bundles = ", ".join(res.describe(res.to_fixed(b)) for b in missing)
        message = self.gcs.autoscaler.infeasible_message(what[:1].upper() + what[1:], f"its bundles [{bundles}] together")
        logger.warning("%s", message)
        self.gcs.warn_job(entry.job, message)

    def _node_views(self) -> list[NodeView]:
        return [
            NodeView(node_id, n.info["resources"], n.available)
            for node_id, n in self.gcs.nodes.items() if n.alive and n.conn is not None and not n.draining
        ]

    async def _schedule_when_nodes_change(self) -> None:
        self._apply()  # nodes may have changed between this task's start and its first run
        while self.core.waiting:
            await self.gcs.cluster_changed.wait(config().cluster_change_wait_s)
            self._apply()

    async def _two_phase_call(self, action: PrepareBundle | CommitBundle) -> None:
        payload: dict[str, Any] = {"pg_id": action.pg_id, "index": action.index}
        if isinstance(action, PrepareBundle):
            payload["resources"] = action.resources
        method = "prepare_bundle" if isinstance(action, PrepareBundle) else "commit_bundle"
        try:
            await self._node_call(action.node_id, method, payload)
            ok = True
        except (RpcError, asyncio.TimeoutError) as exc:  # the node refused (no room now) or went away
            logger.info("%s of group %s bundle %d on node %s failed: %s", method, action.pg_id.hex()[:12],
                        action.index, action.node_id.hex()[:12], exc)
            ok = False
        except Exception:  # a bug: the round fails (and is tried again) rather than hanging
            logger.exception("%s of group %s bundle %d failed", method, action.pg_id.hex()[:12], action.index)
            ok = False
        if isinstance(action, PrepareBundle):
            self.core.bundle_prepared(action.pg_id, action.round, action.index, ok)
        else:
            self.core.bundle_committed(action.pg_id, action.round, action.index, ok)
        self._apply()

    async def _release_call(self, method: str, node_id: bytes, payload: dict[str, Any]) -> None:
        try:
            await self._node_call(node_id, method, payload)
        except (RpcError, asyncio.TimeoutError) as exc:  # a dead node's reservations went with it
            logger.info("%s on node %s failed: %s", method, node_id.hex()[:12], exc)

    async def _node_call(self, node_id: bytes, method: str, payload: dict[str, Any]) -> Any:
        node = self.gcs.nodes.get(node_id)
        if node is None or not node.alive or node.conn is None:
            raise ConnectionLost(f"node {node_id.hex()[:12]} is not connected")
        return await node.conn.call(method, payload, timeout=config().gcs_node_call_timeout_s)
