"""Actor lifecycles, owned by the control service: the async shell of ``actor_lifecycle``.

Every decision is made by :class:`~ember.gcs.actor_lifecycle.ActorLifecycle` (a plain
object: events in, actions out). This shell feeds it the events of the outside world
(RPCs, node joins and deaths, answers of node daemons and workers) and carries out the
actions it queues: lease requests and constructor pushes run as background tasks owned
by the control service, whose outcome goes back in as the next event; records are
written to storage; ``wait_actor`` long-polls are answered on every state change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from ember._private import resources as res
from ember._private.config import config
from ember.exceptions import ConnectionLost, ErrorCode, RemoteError
from ember.gcs import persistence as db
from ember.gcs.actor_lifecycle import (
    ACTOR_TRANSITIONS,
    Action,
    ActorEntry,
    ActorLifecycle,
    ActorState,
    CancelLeaseRequest,
    KillWorker,
    LeaseFailure,
    NodeView,
    Persist,
    PushCreation,
    RequestLease,
    ReturnLease,
    Wake,
    WarnUnplaceable,
)
from ember.protocol.gcs import ActorRecord, ActorWaitReply
from ember.protocol.raylet import LeaseReply
from ember.rpc import connect

if TYPE_CHECKING:
    from ember.gcs.server import GcsServer

__all__ = ["ACTOR_TRANSITIONS", "ActorEntry", "ActorManager", "ActorState"]

logger = logging.getLogger(__name__)

_UNSCHEDULABLE = (ErrorCode.TASK_UNSCHEDULABLE, ErrorCode.ACTOR_UNSCHEDULABLE)


class ActorManager:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.core = ActorLifecycle(request_nonce=os.urandom(4))
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        #: The task that places waiting actors whenever the cluster changes (while any wait).
        self._placer: asyncio.Task[None] | None = None

    @property
    def actors(self) -> dict[bytes, ActorEntry]:
        return self.core.actors

    @property
    def named(self) -> dict[tuple[str, str], bytes]:
        return self.core.named

    # ================================================================ events in
    def restore(self) -> None:
        """Rebuild the actor table after a control-service restart."""
        self.core.restore(db.unpack(data) for _, data in self.gcs.storage.items("actors"))
        if self.core.actors:
            logger.info("restored %d actors", len(self.core.actors))
        self._apply()

    def on_node_reconnected(self, node_id: bytes, gcs_leases: list[list[Any]]) -> list[bytes]:
        """A node came back with worker leases granted to a previous control service:
        returns those that no actor uses (to be ended)."""
        return self.core.leases_to_release(node_id, gcs_leases)

    def register(self, spec: dict[str, Any]) -> dict[str, Any]:
        reply = self.core.register(spec)
        self._apply()
        return reply

    def get_named(self, name: str, namespace: str) -> ActorRecord | None:
        entry = self.core.get_named(name, namespace)
        return entry.public() if entry is not None else None

    def on_worker_died(self, worker_id: bytes, detail: str) -> None:
        self.core.worker_died(worker_id, detail)
        self._apply()

    def on_node_died(self, node_id: bytes, reason: str) -> None:
        self.core.node_died(node_id, reason)
        self._apply()

    def on_job_finished(self, job_id: bytes) -> None:
        self.core.job_finished(job_id)
        self._apply()

    def kill(self, actor_id: bytes, no_restart: bool, cause: str = "it was killed with ember.kill()") -> bool:
        found = self.core.kill(actor_id, no_restart, cause)
        self._apply()
        return found

    # ================================================================ actions out
    def _apply(self) -> None:
        """Place waiting actors, then carry out every action the core queued."""
        if self.core.placing:
            self.core.place(self._node_views())
        for action in self.core.take_actions():
            self._do(action)
        if self.core.placing and (self._placer is None or self._placer.done()):
            self._placer = self.gcs.background.spawn_if_open(self._place_when_nodes_change(), "place waiting actors")

    def _do(self, action: Action) -> None:
        if isinstance(action, Persist):
            entry = self.core.actors[action.actor_id]
            self.gcs.storage.put("actors", entry.actor_id, db.pack(db.actor_record(entry)))
        elif isinstance(action, Wake):
            entry = self.core.actors[action.actor_id]
            if entry.dead:
                logger.info("actor %s is dead: %s", entry.actor_id.hex()[:12], entry.death_cause)
            for fut in self._waiters.pop(action.actor_id, ()):
                if not fut.done():
                    fut.set_result(None)
        elif isinstance(action, RequestLease):
            self.gcs.background.spawn_if_open(self._request_lease(action), f"lease for actor {action.actor_id.hex()[:12]}")
        elif isinstance(action, PushCreation):
            self.gcs.background.spawn_if_open(self._push_creation(action), f"create actor {action.actor_id.hex()[:12]}")
        elif isinstance(action, (CancelLeaseRequest, ReturnLease, KillWorker)):
            self._notify_node(action)
        elif isinstance(action, WarnUnplaceable):
            self._warn_unplaceable(self.core.actors[action.actor_id])

    def _warn_unplaceable(self, entry: ActorEntry) -> None:
        """No node can host the actor: the autoscaler adds one, or its driver is told it waits forever."""
        need = {k: float(v) for k, v in (entry.spec.get("place") or {}).items() if v}
        what = f"actor {entry.spec.get('class_name') or ''} {entry.actor_id.hex()[:12]}".replace("  ", " ")
        if self.gcs.autoscaler.can_launch_for(need):
            logger.info("%s needs %s: it waits for the autoscaler to add a node", what, need)
            return
        message = self.gcs.autoscaler.infeasible_message(what[:1].upper() + what[1:], res.describe(res.to_fixed(need)))
        logger.warning("%s", message)
        self.gcs.warn_job(entry.spec.get("job"), message)

    def _notify_node(self, action: CancelLeaseRequest | ReturnLease | KillWorker) -> None:
        node = self.gcs.nodes.get(action.node_id)
        if node is None or not node.alive or node.conn is None or node.conn.closed:
            return  # the node is gone, and its workers and requests with it
        if isinstance(action, CancelLeaseRequest):
            node.conn.notify("cancel_lease_request", {"request_id": action.request_id})
        elif isinstance(action, ReturnLease):
            node.conn.notify("return_lease", {"lease_id": action.lease_id, "kill": True})
        else:
            node.conn.notify("kill_worker", {"worker_id": action.worker_id})

    def _node_views(self) -> list[NodeView]:
        return [
            NodeView(node_id, n.info["resources"], n.available)
            for node_id, n in self.gcs.nodes.items() if n.alive and n.conn is not None and not n.draining
        ]

    async def _place_when_nodes_change(self) -> None:
        self._apply()  # nodes may have joined between this task's start and its first run
        while self.core.placing:
            await self.gcs.cluster_changed.wait(config().cluster_change_wait_s)
            self._apply()

    async def _request_lease(self, action: RequestLease) -> None:
        core, actor_id, request_id = self.core, action.actor_id, action.request_id
        node = self.gcs.nodes.get(action.node_id)
        try:
            if node is None or not node.alive or node.conn is None:
                raise ConnectionLost(f"node {action.node_id.hex()[:12]} is not connected")
            grant: LeaseReply = await node.conn.call("request_lease", action.request, timeout=None)
        except ConnectionLost:
            core.lease_failed(actor_id, request_id, LeaseFailure.NODE_LOST, "its node went away")
        except RemoteError as exc:
            if exc.code in _UNSCHEDULABLE:
                core.lease_failed(actor_id, request_id, LeaseFailure.UNSCHEDULABLE, exc.message)
            elif exc.code is ErrorCode.RUNTIME_ENV_SETUP_FAILED:
                core.lease_failed(actor_id, request_id, LeaseFailure.RUNTIME_ENV, exc.message)
            else:
                logger.error("asking for a lease for actor %s failed: %s", actor_id.hex()[:12], exc)
                core.lease_failed(actor_id, request_id, LeaseFailure.ERROR, str(exc))
        except Exception as exc:  # a bug here: the actor dies with it rather than waiting forever
            logger.exception("asking for a lease for actor %s failed", actor_id.hex()[:12])
            core.lease_failed(actor_id, request_id, LeaseFailure.ERROR, repr(exc))
        else:
            if grant.get("cancelled"):
                core.lease_cancelled(actor_id, request_id)
            elif grant.get("spillback"):
                target = self.gcs.nodes.get(grant["spillback"]["node_id"])
                view = None
                if target is not None and target.alive and target.conn is not None:
                    view = NodeView(target.info["node_id"], target.info["resources"], target.available)
                core.lease_spilled(actor_id, request_id, view)
            else:
                core.lease_granted(actor_id, request_id, grant)
        self._apply()

    async def _push_creation(self, action: PushCreation) -> None:
        core, actor_id, worker_id = self.core, action.actor_id, action.worker_id
        try:
            host, port = action.address[0], action.address[1]
            conn = await connect((host, port), self.gcs.token, info={"role": "gcs"},
                                 timeout=config().gcs_node_call_timeout_s)
            try:
                reply = await conn.call("create_actor", action.payload, timeout=None)
            finally:
                conn.close("creation done")
        except ConnectionLost:
            # The worker died while running __init__: its node daemon reports the death,
            # which restarts the actor or marks it dead.
            logger.info("actor %s lost its worker during creation", actor_id.hex()[:12])
        except Exception as exc:  # not the worker's death: the actor dies with the reason
            logger.exception("creating actor %s failed", actor_id.hex()[:12])
            core.creation_error(actor_id, worker_id, str(exc) or repr(exc))
        else:
            core.creation_replied(actor_id, worker_id, reply)
        self._apply()

    # ================================================================ waiting
    async def wait(self, actor_id: bytes, after_incarnation: int) -> ActorWaitReply:
        """Answer when the actor is ALIVE in a newer incarnation than ``after_incarnation``, or DEAD."""
        entry = self.core.actors.get(actor_id)
        if entry is None:
            return _never_created(actor_id)
        while not (entry.dead or (entry.state is ActorState.ALIVE and entry.incarnation > after_incarnation)):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(actor_id, []).append(fut)
            await fut
        node = self.gcs.nodes.get(entry.node_id) if entry.node_id is not None else None
        # Where the actor's node daemon listens: a caller frees there the results of calls the
        # actor may have stored before it died.
        return {**entry.public(), "node_address": list(node.info["address"]) if node is not None else None}


def _never_created(actor_id: bytes) -> ActorWaitReply:
    """``wait_actor``'s answer for an id this cluster never registered: DEAD, saying why."""
    return {
        "actor_id": actor_id, "state": "DEAD", "address": None, "incarnation": 0,
        "death_cause": "no such actor (it was never created in this cluster)", "creation_error": None,
        "error_type": "", "num_restarts": 0, "name": "", "namespace": "", "class_name": "", "pid": 0,
        "node_id": None, "job_id": None, "detached": False, "meta": None, "node_address": None,
    }
