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
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from ember._private.waiting import wait_event
from ember.rpc import Connection

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
    def cluster_demand(self) -> dict[str, Any]:
        nodes = []
        tasks: dict[str, list[Any]] = {}
        for entry in self.gcs.nodes.values():
            if not entry.alive:
                continue
            public = entry.to_public()
            public["IdleSeconds"] = entry.idle_s
            nodes.append(public)
            for shape, count in entry.demand:
                _count(tasks, shape, count)
        actors: dict[str, list[Any]] = {}
        for actor in self.gcs.actor_manager.actors.values():
            if actor.awaiting_node and actor.state.name in ("PENDING_CREATION", "RESTARTING"):
                _count(actors, {k: float(v) for k, v in (actor.spec.get("place") or {}).items() if v}, 1)
        groups = []
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
        launchable = payload.get("launchable")
        if launchable is not None:
            launchable = check_bundles(launchable)
        if launchable != self.launchable:
            self.launchable = launchable
            for entry in self.gcs.nodes.values():
                if entry.alive and entry.conn is not None:
                    entry.conn.notify("set_launchable", launchable)

    def autoscaler_gone(self) -> None:
        """Its connection closed: keep its last status (marked stopped), forget its node types."""
        status = dict(self.last_report or {})
        status["stopped"] = True
        self.report({"status": status, "launchable": None})

    def status(self) -> dict[str, Any] | None:
        if self.last_report is None:
            return None
        return {**self.last_report, "reported_at": self.reported_at}


def _count(table: dict[str, list[Any]], shape: dict[str, float], count: int) -> None:
    key = json.dumps(shape, sort_keys=True)
    row = table.setdefault(key, [shape, 0])
    row[1] += int(count)
