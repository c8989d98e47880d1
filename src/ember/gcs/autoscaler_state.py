"""What the control service keeps for an autoscaler: the cluster's demand, requests, status.

* **Demand** (``cluster_demand``): the lease requests queued at every node daemon (each
  load report carries its node's ``[shape, count]`` list and idle time), the actors no live
  node could host, the placement groups waiting to be placed (bundles and strategy), and
  the standing ``request_resources`` bundles.
* **Requests** (``request_resources``): Ray's ``autoscaler.sdk.request_resources``: bundles
  the cluster should be able to hold at once, until the next call replaces them; stored,
  so a restarted control service keeps them.
* **Status** (``report`` / ``status``): the autoscaler's last report (node types, nodes
  launching, failures, events), for ``ember status`` and the HTTP server. Its node types'
  shapes go to every node daemon (``set_launchable``), so a request that an autoscaler
  can add a node for is not reported infeasible, and one no node type fits is.
* **Supervision** (``autoscaler_supervisor.py``): an autoscaler that dies is restarted;
  its deaths and restarts are events of this status, and its shapes stay meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ember._private import resources as res
from ember._private.config import config
from ember._private.placement_policy import place
from ember._private.waiting import wait_event
from ember.gcs.autoscaler_supervisor import AutoscalerSupervisor
from ember.protocol.gcs import ClusterDemandReply, DemandNode, PendingGroup
from ember.rpc import Connection

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ember.gcs.server import GcsServer, NodeEntry

_NS = "kv:autoscaler"
_REQUESTED = b"requested_resources"


def check_bundles(bundles: Any) -> list[dict[str, float]]:
    """``request_resources`` bundles: a list of ``{resource: non-negative number}``."""
    if not isinstance(bundles, list):
        raise ValueError(f"bundles must be a list of resource dicts, got {type(bundles).__name__}")
    out = []
    for bundle in bundles:
        if not isinstance(bundle, dict) or not all(isinstance(k, str) for k in bundle):
            raise ValueError(f"each bundle must be a dict of resource name to amount, got {bundle!r}")
        for name, amount in bundle.items():
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                raise ValueError(f"resource {name!r} in bundle {bundle!r} must be a non-negative number")
        out.append({k: float(v) for k, v in bundle.items() if v})
    return out


class AutoscalerState:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        stored = gcs.storage.get(_NS, _REQUESTED)
        self.requested: list[dict[str, float]] = json.loads(stored) if stored else []
        self.requested_at = 0.0
        #: The autoscaler's last report (None: no autoscaler has reported).
        self.last_report: dict[str, Any] | None = None
        self.reported_at = 0.0
        #: Shapes of the node types the autoscaler can launch (None: no autoscaler).
        self.launchable: list[dict[str, float]] | None = None
        #: Set when a node reports queued demand it did not report before.
        self.demand_changed = asyncio.Event()
        self.supervisor = AutoscalerSupervisor(gcs.session_dir, gcs.background, self.add_event, self._withdraw_shapes)

    # ------------------------------------------------------------ node reports
    def on_load_report(self, entry: NodeEntry, demand: list[list[Any]], idle_s: float) -> None:
        """A node's load report: ``[[shape, count], ...]`` queued there, seconds without work."""
        if demand and demand != entry.demand:
            self.demand_changed.set()  # wakes an autoscaler waiting in wait_for_demand
        entry.demand = demand
        entry.idle_s = idle_s

    async def wait_for_demand(self, wait_s: float) -> None:
        """Until a node reports new queued demand, or ``wait_s`` seconds (the autoscaler's period)."""
        await wait_event(self.demand_changed, wait_s)
        self.demand_changed.clear()

    def on_node_registered(self, conn: Connection) -> None:
        if self.launchable is not None:
            conn.notify("set_launchable", self.launchable)

    # ------------------------------------------------------------------- demand
    def cluster_demand(self) -> ClusterDemandReply:
        nodes: list[DemandNode] = []
        tasks: dict[str, list[Any]] = {}
        for entry in self.gcs.nodes.values():
            if not entry.alive:
                continue
            nodes.append({**entry.to_public(), "IdleSeconds": entry.idle_s})
            for shape, count in entry.demand:
                _count(tasks, shape, count)
        actors: dict[str, list[Any]] = {}
        for actor in self.gcs.actor_manager.actors.values():
            if actor.awaiting_node and actor.state.name in ("PENDING_CREATION", "RESTARTING"):
                _count(actors, {k: float(v) for k, v in (actor.spec.get("place") or {}).items() if v}, 1)
        groups: list[PendingGroup] = []
        for pg in self.gcs.pg_manager.groups.values():
            if pg.state.name in ("PENDING", "RESCHEDULING"):
                missing = [pg.bundles[i] for i, node in enumerate(pg.nodes) if node is None]
                groups.append({"pg_id": pg.pg_id.hex(), "strategy": pg.strategy, "bundles": missing,
                               "name": pg.name})
        return {
            "nodes": nodes, "tasks": list(tasks.values()), "actors": list(actors.values()),
            "placement_groups": groups, "requested": list(self.requested), "time": time.time(),
        }

    def request_resources(self, bundles: Any) -> None:
        self.requested = check_bundles(bundles)
        self.requested_at = time.time()
        self.gcs.storage.put(_NS, _REQUESTED, json.dumps(self.requested).encode())

    # ------------------------------------------------------------- feasibility
    def can_launch_for(self, shape: dict[str, float]) -> bool:
        """True when the autoscaler can add a node that fits ``shape``."""
        need = res.to_fixed(shape)
        return self.launchable is not None and any(res.fits(need, res.to_fixed(s)) for s in self.launchable)

    def can_launch_for_group(self, bundles: list[dict[str, float]], strategy: str,
                             totals: dict[bytes, res.Resources]) -> bool:
        """True when the group fits on the nodes' ``totals`` plus new nodes of the autoscaler's types
        (as many of each as the group has bundles: enough for any strategy)."""
        if self.launchable is None:
            return False
        nodes = dict(totals)
        for i, shape in enumerate(self.launchable):
            for k in range(len(bundles)):
                nodes[b"launchable-%d-%d" % (i, k)] = res.to_fixed(shape)
        return place([res.to_fixed(b) for b in bundles], strategy, nodes) is not None

    def infeasible_message(self, what: str, need: str) -> str:
        """Why ``what`` (needing ``need``) waits forever, and what to do (as node daemons word it for tasks)."""
        shapes = "; ".join(sorted(res.describe(res.to_fixed(_plain(e.info["resources"])))
                                  for e in self.gcs.nodes.values() if e.alive)) or "no nodes"
        scaler = "" if self.launchable is None else (
            " nor any node type the autoscaler can add ("
            + ("; ".join(sorted(res.describe(res.to_fixed(s)) for s in self.launchable)) or "none") + ")")
        return (f"{what} cannot be scheduled. No node in this cluster{scaler} can ever satisfy {need}. "
                f"The nodes have: {shapes}. It will wait until a node that can run it joins. "
                "Lower the request (num_cpus=, num_gpus=, resources=, bundles), or add a node with enough resources.")

    # -------------------------------------------------------------------- status
    def report(self, payload: dict[str, Any]) -> None:
        """The autoscaler's status; ``launchable`` (its node types' shapes) goes to every node."""
        if not isinstance(payload, dict):
            raise ValueError("an autoscaler report is a dict")
        status = payload.get("status")
        if status is not None and not isinstance(status, dict):
            raise ValueError("an autoscaler report's status is a dict")
        self.last_report = status
        self.reported_at = time.time()
        if status is not None and isinstance(status.get("pid"), int) and not status.get("stopped"):
            self.supervisor.on_report(status["pid"])
        launchable = payload.get("launchable")
        if launchable is not None:
            launchable = check_bundles(launchable)
        if launchable != self.launchable:
            self.launchable = launchable
            for entry in self.gcs.nodes.values():
                if entry.alive and entry.conn is not None:
                    entry.conn.notify("set_launchable", launchable)

    def autoscaler_gone(self, pid: int | None) -> None:
        """Its connection closed: keep its last status (marked stopped); unless it is to be
        restarted should it have died, forget its node types."""
        status = dict(self.last_report or {})
        status["stopped"] = True
        self.last_report = status
        if not self.supervisor.connection_closed(pid):
            self._withdraw_shapes()

    def _withdraw_shapes(self) -> None:
        self.report({"status": self.last_report, "launchable": None})

    def add_event(self, kind: str, message: str) -> None:
        """An event the control service records in the autoscaler's status (its supervision)."""
        logger.warning("autoscaler %s: %s", kind, message)
        status = dict(self.last_report or {"stopped": True})
        events = list(status.get("events") or [])
        events.append({"time": time.time(), "kind": kind, "message": message})
        status["events"] = events[-config().autoscaler_max_events:]
        self.last_report = status

    def status(self) -> dict[str, Any] | None:
        if self.last_report is None:
            return None
        return {**self.last_report, "reported_at": self.reported_at, "restarting": self.supervisor.restarting}


def _count(table: dict[str, list[Any]], shape: dict[str, float], count: int) -> None:
    key = json.dumps(shape, sort_keys=True)
    row = table.setdefault(key, [shape, 0])
    row[1] += int(count)


def _plain(amounts: dict[str, float]) -> dict[str, float]:
    """Resources without the per-node ``node:<ip>`` markers and placement-group resources."""
    return {k: v for k, v in amounts.items() if not k.startswith("node:") and "_group_" not in k}
