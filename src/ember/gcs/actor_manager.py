"""Actor lifecycles, owned by the control service.

States keep Ray's names; transitions live in ``ACTOR_TRANSITIONS``::

    PENDING_CREATION --created--> ALIVE --worker died--> RESTARTING --created--> ALIVE
          |                         |                        |
          +----- creation failed / killed / out of restarts -+--> DEAD (final)

The manager asks a node daemon for a dedicated worker lease, pushes the
creation task to the worker, and records the address callers use. Callers
learn about state changes by long-polling ``wait_actor`` with the last
incarnation they saw. A node daemon reports every worker death, with the
exit code, which drives restarts.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Any

from ember._private.config import config
from ember._private.state_machine import History, TransitionTable
from ember.exceptions import ConnectionLost, ErrorCode, RemoteError
from ember.gcs import persistence as db
from ember.rpc import Connection, connect

if TYPE_CHECKING:
    from ember.gcs.server import GcsServer

logger = logging.getLogger(__name__)


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


class ActorEntry:
    state: ActorState
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.actor_id: bytes = spec["actor_id"]
        self.history = History()
        ACTOR_TRANSITIONS.start(self, ActorState.PENDING_CREATION, "registered")
        self.address: list[Any] | None = None
        self.worker_id: bytes | None = None
        self.node_id: bytes | None = None
        self.lease_id: bytes | None = None
        self.pid = 0
        self.incarnation = 0
        self.num_restarts = 0
        self.death_cause = ""
        self.creation_error: list[Any] | None = None  # inline serialized RayTaskError
        self.error_type = ""
        self.waiters: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None
        #: While creation waits for a worker lease: the node asked and the request's id. Such a
        #: wait is never cancelled (a grant on its way would be lost, with its CPUs): a kill asks
        #: the node to cancel the request, and a grant that won the race is returned.
        self.lease_request: tuple[Any, bytes] | None = None

    @property
    def dead(self) -> bool:
        return self.state is ActorState.DEAD

    @property
    def name(self) -> str:
        return self.spec.get("name") or ""

    @property
    def namespace(self) -> str:
        return self.spec.get("namespace") or ""

    @property
    def label(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"actor {self.spec.get('class_name', '')}{name} {self.actor_id.hex()}"

    def transition(self, new: ActorState, reason: str) -> None:
        ACTOR_TRANSITIONS.move(self, new, reason)
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def public(self) -> dict[str, Any]:
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


class ActorManager:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.actors: dict[bytes, ActorEntry] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self.by_worker: dict[bytes, bytes] = {}
        #: SPREAD actors placed per node (round robin across the nodes that can host them).
        self._spread_picks: dict[bytes, int] = {}

    # ================================================================ registration
    def _persist(self, entry: ActorEntry) -> None:
        self.gcs.storage.put("actors", entry.actor_id, db.pack(db.actor_record(entry)))

    def restore(self) -> None:
        """Rebuild the actor table after a control-service restart."""
        for _, data in self.gcs.storage.items("actors"):
            record = db.unpack(data)
            entry = ActorEntry(record["spec"])
            ACTOR_TRANSITIONS.start(entry, ActorState(record["state"]), "restored from storage after a restart")
            for field in ("address", "worker_id", "node_id", "lease_id", "pid", "incarnation",
                          "num_restarts", "death_cause", "creation_error", "error_type"):
                setattr(entry, field, record.get(field))
            entry.pid = entry.pid or 0
            entry.error_type = entry.error_type or ""
            entry.death_cause = entry.death_cause or ""
            self.actors[entry.actor_id] = entry
            if entry.state is ActorState.DEAD:
                continue
            if entry.name:
                self.named[(entry.namespace, entry.name)] = entry.actor_id
            if entry.state is ActorState.ALIVE and entry.worker_id is not None:
                self.by_worker[entry.worker_id] = entry.actor_id
            else:
                # Its creation was under way: start it again once nodes are back.
                entry.task = self.gcs.background.spawn(self._create(entry), f"create actor {entry.actor_id.hex()[:12]}")
        if self.actors:
            logger.info("restored %d actors", len(self.actors))

    def on_node_reconnected(self, node_id: bytes, gcs_leases: list[list[Any]]) -> list[bytes]:
        """A node came back with worker leases granted to a previous control service:
        returns those that no live actor uses (to be ended)."""
        in_use = {e.lease_id for e in self.actors.values() if e.state is ActorState.ALIVE and e.node_id == node_id}
        return [lease_id for lease_id, _worker_id in gcs_leases if lease_id not in in_use]

    def register(self, spec: dict[str, Any]) -> dict[str, Any]:
        if spec["actor_id"] in self.actors:
            return {"actor_id": spec["actor_id"], "existing": False}  # a retried registration
        name = spec.get("name")
        if name:
            key = (spec.get("namespace") or "", name)
            existing_id = self.named.get(key)
            if existing_id is not None:
                existing = self.actors[existing_id]
                if existing.state is not ActorState.DEAD:
                    if spec.get("get_if_exists"):
                        return {"actor_id": existing_id, "existing": True, "meta": existing.spec.get("meta")}
                    raise ValueError(
                        f"An actor named {name!r} already exists in namespace {key[0]!r}. Use "
                        "get_if_exists=True to reuse it, or pick another name."
                    )
            self.named[key] = spec["actor_id"]
        entry = ActorEntry(spec)
        self.actors[entry.actor_id] = entry
        self._persist(entry)
        entry.task = self.gcs.background.spawn(self._create(entry), f"create actor {entry.actor_id.hex()[:12]}")
        return {"actor_id": entry.actor_id, "existing": False}

    def get_named(self, name: str, namespace: str) -> dict[str, Any] | None:
        actor_id = self.named.get((namespace, name))
        if actor_id is None:
            return None
        entry = self.actors[actor_id]
        if entry.state is ActorState.DEAD:
            return None
        return entry.public()

    # ================================================================ creation
    def _pick_node(self, entry: ActorEntry) -> Any:
        from ember._private import resources as res

        need = res.to_fixed(entry.spec.get("place") or {})
        preferred = entry.spec.get("node_id")
        candidates = [n for n in self.gcs.nodes.values() if n.alive and n.conn is not None]
        candidates.sort(key=lambda n: n.info["node_id"] != preferred)
        feasible = [n for n in candidates if res.fits(need, res.to_fixed(n.info["resources"]))]
        if not feasible:
            return None
        if entry.spec.get("strategy") == "SPREAD":
            # Spread actors here, where every node is known: a node daemon's view of the
            # cluster lags joins, so round robin there can miss a node that just joined.
            ready = [n for n in feasible if res.fits(need, res.to_fixed(n.available))]
            picks = self._spread_picks
            choice = min(ready or feasible, key=lambda n: (picks.get(n.info["node_id"], 0), n.info["node_id"]))
            picks[choice.info["node_id"]] = picks.get(choice.info["node_id"], 0) + 1
            return choice
        return feasible[0]

    async def _create(self, entry: ActorEntry) -> None:
        try:
            await self._create_once(entry)
        except asyncio.CancelledError:
            raise
        except ConnectionLost:
            # The worker died while running __init__: its node daemon reports the death,
            # which restarts the actor or marks it dead (on_worker_died).
            logger.info("actor %s lost its worker during creation", entry.actor_id.hex()[:12])
        except Exception as exc:
            logger.exception("creating actor %s failed", entry.actor_id.hex()[:12])
            self._mark_dead(entry, f"the control service could not create it: {exc}")

    async def _create_once(self, entry: ActorEntry) -> None:
        # Unique per creation attempt: node daemons answer a repeated request id with the same grant.
        base_id = entry.actor_id + entry.num_restarts.to_bytes(4, "big") + entry.incarnation.to_bytes(4, "big")
        request: dict[str, Any] = {
            "resources": entry.spec.get("place") or {}, "hold": entry.spec.get("hold") or {},
            "request_id": base_id,
            "strategy": entry.spec.get("strategy"), "spilled": False, "actor": True,
        }
        if entry.spec.get("renv"):
            request["renv"] = entry.spec["renv"]
        node = None
        warned = False
        tries = 0
        while True:
            if entry.state is ActorState.DEAD:
                return
            # Each request a new id (a node answers a repeated id with its first answer, so going
            # back to a node after a spillback would get the same spillback again, forever).
            request["request_id"] = base_id + tries.to_bytes(4, "big")
            tries += 1
            if node is None or not node.alive:
                node = self._pick_node(entry)
                # A SPREAD actor's node was chosen here: that node must host it (no second spreading).
                request["spilled"] = node is not None and entry.spec.get("strategy") == "SPREAD"
            if node is None:
                if not warned:
                    warned = True
                    logger.warning(
                        "actor %s (%s) needs %s, which no node in the cluster has; it waits for one to join",
                        entry.actor_id.hex()[:12], entry.spec.get("class_name"), entry.spec.get("place"),
                    )
                await self.gcs.cluster_changed.wait(config().cluster_change_wait_s)
                continue
            try:
                entry.lease_request = (node, request["request_id"])
                grant = await node.conn.call("request_lease", request, timeout=None)
            except ConnectionLost:
                node = None  # that node died: pick another
                request["spilled"] = False
                continue
            except RemoteError as exc:
                if exc.code in (ErrorCode.TASK_UNSCHEDULABLE, ErrorCode.ACTOR_UNSCHEDULABLE):
                    entry.error_type = "ActorUnschedulableError"
                    self._mark_dead(entry, f"it cannot be scheduled: {exc.message}")
                    return
                if exc.code is ErrorCode.RUNTIME_ENV_SETUP_FAILED:
                    entry.error_type = "RuntimeEnvSetupError"
                    self._mark_dead(entry, f"its runtime_env could not be set up. {exc.message}")
                    return
                raise
            finally:
                entry.lease_request = None
            if grant.get("cancelled"):
                return  # killed while waiting (see _mark_dead)
            if grant.get("spillback"):
                node = self.gcs.nodes.get(grant["spillback"]["node_id"])
                request["spilled"] = True
                continue
            break
        if entry.dead:  # killed while waiting
            node.conn.notify("return_lease", {"lease_id": grant["lease_id"], "kill": True})
            return
        entry.worker_id = grant["worker_id"]
        entry.node_id = grant["node_id"]
        entry.lease_id = grant["lease_id"]
        entry.pid = grant.get("pid", 0)
        self.by_worker[entry.worker_id] = entry.actor_id
        conn: Connection = await connect(grant["address"], self.gcs.token, info={"role": "gcs"},
                                         timeout=config().gcs_node_call_timeout_s)
        try:
            reply = await conn.call(
                "create_actor", {**entry.spec, "incarnation": entry.incarnation + 1, "gpus": grant.get("gpu_ids") or []},
                timeout=None,
            )
        finally:
            conn.close("creation done")
        if entry.dead:  # killed while its constructor ran
            return
        if reply.get("s") == "ok":
            entry.address = grant["address"]
            entry.incarnation += 1
            entry.transition(ActorState.ALIVE, f"created on worker pid {entry.pid} (incarnation {entry.incarnation})")
            self._persist(entry)
        else:
            entry.creation_error = reply.get("e")
            self._mark_dead(entry, "its constructor (__init__) raised an exception", kill=True)

    # ================================================================ death
    def on_worker_died(self, worker_id: bytes, detail: str) -> None:
        actor_id = self.by_worker.pop(worker_id, None)
        if actor_id is not None:
            entry = self.actors.get(actor_id)
            if entry is not None and entry.worker_id == worker_id and entry.state is not ActorState.DEAD:
                self._worker_lost(entry, detail)
        # Actors owned by the dead worker die with it.
        for entry in list(self.actors.values()):
            owner = entry.spec.get("owner")
            if owner and owner[2] == worker_id and not entry.spec.get("detached") and entry.state is not ActorState.DEAD:
                self.kill(entry.actor_id, True, "its owner (a worker process) died")

    def on_node_died(self, node_id: bytes, reason: str) -> None:
        for entry in list(self.actors.values()):
            if entry.node_id == node_id and entry.state is not ActorState.DEAD:
                if entry.worker_id is not None:
                    self.by_worker.pop(entry.worker_id, None)
                self._worker_lost(entry, f"its node {node_id.hex()[:12]} died ({reason})")

    def _worker_lost(self, entry: ActorEntry, detail: str) -> None:
        max_restarts = entry.spec.get("max_restarts", 0)
        entry.address = None
        if max_restarts == -1 or entry.num_restarts < max_restarts:
            entry.num_restarts += 1
            entry.transition(ActorState.RESTARTING, f"restart {entry.num_restarts}: {detail}")
            self._persist(entry)
            logger.info("restarting actor %s (%s)", entry.actor_id.hex()[:12], detail)
            entry.task = self.gcs.background.spawn(self._create(entry), f"create actor {entry.actor_id.hex()[:12]}")
        else:
            extra = f" and it has used all {max_restarts} restarts (max_restarts)" if max_restarts else ""
            self._mark_dead(entry, f"its worker process (pid {entry.pid}) died: {detail}{extra}")

    def on_job_finished(self, job_id: bytes) -> None:
        for entry in list(self.actors.values()):
            if entry.spec.get("job") == job_id and not entry.spec.get("detached") and entry.state is not ActorState.DEAD:
                self.kill(entry.actor_id, True, "its owner (the driver of its job) exited")

    def kill(self, actor_id: bytes, no_restart: bool, cause: str = "it was killed with ember.kill()") -> bool:
        entry = self.actors.get(actor_id)
        if entry is None:
            return False
        if entry.state is ActorState.DEAD:
            return True
        if no_restart:
            self._mark_dead(entry, cause, kill=True)
        else:
            self._kill_worker(entry)
        return True

    def _kill_worker(self, entry: ActorEntry) -> None:
        if entry.worker_id is None:
            return
        node = self.gcs.nodes.get(entry.node_id) if entry.node_id else None
        if node is not None and node.alive and node.conn is not None:
            node.conn.notify("kill_worker", {"worker_id": entry.worker_id})

    def _mark_dead(self, entry: ActorEntry, cause: str, kill: bool = False) -> None:
        if entry.state is ActorState.DEAD:
            return
        entry.death_cause = cause
        entry.address = None
        entry.transition(ActorState.DEAD, cause)
        self._persist(entry)
        if entry.name:
            key = (entry.namespace, entry.name)
            if self.named.get(key) == entry.actor_id:
                del self.named[key]
        if kill:
            self._kill_worker(entry)
        if entry.task is not None and not entry.task.done() and entry.task is not asyncio.current_task():
            if entry.lease_request is not None:
                node, request_id = entry.lease_request
                if node.conn is not None and not node.conn.closed:
                    node.conn.notify("cancel_lease_request", {"request_id": request_id})
            else:
                entry.task.cancel()
        logger.info("actor %s is dead: %s", entry.actor_id.hex()[:12], cause)

    # ================================================================ waiting
    async def wait(self, actor_id: bytes, after_incarnation: int) -> dict[str, Any]:
        """Answer when the actor is ALIVE in a newer incarnation than ``after_incarnation``, or DEAD."""
        entry = self.actors.get(actor_id)
        if entry is None:
            return {"state": "DEAD", "death_cause": "no such actor (it was never created in this cluster)"}
        while not (
            entry.state is ActorState.DEAD
            or (entry.state is ActorState.ALIVE and entry.incarnation > after_incarnation)
        ):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry.waiters.append(fut)
            await fut
        info = entry.public()
        node = self.gcs.nodes.get(entry.node_id) if entry.node_id is not None else None
        # Where the actor's node daemon listens: a caller frees there the results of calls the
        # actor may have stored before it died.
        info["node_address"] = list(node.info["address"]) if node is not None else None
        return info
