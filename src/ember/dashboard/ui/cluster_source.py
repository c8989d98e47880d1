"""What the UI reads from the cluster: the control service's tables and each node daemon's own view.

The control service gives nodes, jobs (drivers) and actors; a node daemon's ``get_info``
gives its workers, their memory, its own processes and its host's memory. Ids arrive as
bytes and are turned into hex here, once, so the documents deal in strings only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from ember._private.processes import resident_bytes
from ember.exceptions import RpcError

if TYPE_CHECKING:
    from ember.dashboard.context import DashboardContext
    from ember.dashboard.gcs_client import GcsClient

logger = logging.getLogger(__name__)


def hexify(value: Any) -> Any:
    """Bytes become hex strings, recursively through lists and dicts."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {(k.hex() if isinstance(k, bytes) else k): hexify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hexify(v) for v in value]
    return value


class ClusterSource:
    """Reads the cluster for the UI; one reopening connection per node daemon."""

    def __init__(self, ctx: DashboardContext, node_timeout_s: float) -> None:
        self.ctx = ctx
        self._node_timeout_s = node_timeout_s
        self._node_clients: dict[str, GcsClient] = {}
        self._gcs_pid: int | None = None

    async def nodes(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = hexify(await self.ctx.gcs.call("get_nodes"))
        return rows

    async def autoscaler(self, nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The autoscaler's view for the Cluster page (None when no autoscaler has reported)."""
        from ember.autoscaler.status import status_document

        report = await self.ctx.gcs.call("get_autoscaler_status")
        if report is None:
            return None
        demand = await self.ctx.gcs.call("get_cluster_demand")
        doc = status_document(nodes, demand, report)
        return autoscaler_summary(doc, report)

    async def jobs(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = hexify(await self.ctx.gcs.call("get_jobs"))
        return rows

    async def actors(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = hexify(await self.ctx.gcs.call("list_actors"))
        return rows

    async def node_info(self, node: dict[str, Any]) -> dict[str, Any] | None:
        """The node daemon's ``get_info`` (workers, processes, host memory), or None if unreachable."""
        info: dict[str, Any] | None = await self._ask_node(node, "get_info")
        return info

    async def _ask_node(self, node: dict[str, Any], method: str) -> Any:
        """``method`` on ``node``'s daemon, or None if it is dead or does not answer."""
        if not node.get("Alive"):
            return None
        client = self._node_clients.get(node["NodeID"])
        if client is None:
            from ember.dashboard.gcs_client import (
                GcsClient,  # one reopening connection, like the control service's
            )

            address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
            client = self._node_clients[node["NodeID"]] = GcsClient(address, self.ctx.token, self._node_timeout_s)
        try:
            return hexify(await client.call(method, None, self._node_timeout_s))
        except (RpcError, asyncio.TimeoutError, OSError) as exc:
            logger.info("node %s did not answer %s: %s", node["NodeID"][:12], method, exc)
            return None

    async def task_count_rows(self) -> list[list[Any]]:
        """Every node daemon's ``ray_tasks`` rows (``[name, state, is_retry, source, job, count]``)."""
        nodes = [n for n in await self.nodes() if n.get("Alive")]
        answers = await asyncio.gather(*(self._ask_node(n, "task_counts") for n in nodes))
        return [row for rows in answers if rows for row in rows]

    async def node_infos(self, nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``get_info`` of every live node, asked at once; nodes that did not answer are left out."""
        alive = [n for n in nodes if n.get("Alive")]
        for node_id in set(self._node_clients) - {n["NodeID"] for n in alive}:
            self._node_clients.pop(node_id).close()
        answers = await asyncio.gather(*(self.node_info(n) for n in alive))
        return {n["NodeID"]: info for n, info in zip(alive, answers) if info is not None}

    async def head_processes(self) -> list[dict[str, Any]]:
        """The head's own services (control service, this HTTP server) with their memory."""
        if self._gcs_pid is None:
            self._gcs_pid = int((await self.ctx.gcs.call("cluster_info"))["pid"])
        return [
            {"name": "control service", "pid": self._gcs_pid, "rss": resident_bytes(self._gcs_pid)},
            {"name": "dashboard (HTTP server)", "pid": os.getpid(), "rss": resident_bytes(os.getpid())},
        ]

    def close(self) -> None:
        for client in self._node_clients.values():
            client.close()
        self._node_clients.clear()


def autoscaler_summary(doc: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """Node types with their active / idle / pending counts and limits, demands, verdicts, events."""
    scaler = doc["autoscaler"] or {}
    auto = doc["autoscalerReport"]
    load = doc["loadMetricsReport"]
    pending: dict[str, int] = dict(auto["pendingLaunches"])
    for _pid, kind, _state in auto["pendingNodes"]:
        pending[kind] = pending.get(kind, 0) + 1
    types = [
        {"name": name, "resources": t.get("resources", {}), "min_workers": t.get("min_workers", 0),
         "max_workers": t.get("max_workers", 0), "active": auto["activeNodes"].get(name, 0),
         "idle": auto["idleNodes"].get(name, 0), "pending": pending.get(name, 0),
         "head": name == report.get("head_node_type")}
        for name, t in report.get("node_types", {}).items()
    ]
    demands = [f"{shape}: {count}+ pending tasks/actors" for shape, count in load["resourceDemand"]]
    demands += [f"{', '.join(f'{b} * {n}' for b, n in g['bundles'])} ({g['strategy']}): placement group"
                for g, _count in load["pgDemand"]]
    demands += [f"{shape}: {count} from request_resources()" for shape, count in load["requestDemand"]]
    return {
        "running": scaler.get("running", False), "cluster_name": scaler.get("clusterName"),
        "max_workers": report.get("max_workers"), "node_types": types, "demands": demands,
        "infeasible": scaler.get("infeasible", []), "waiting": scaler.get("waiting", []),
        "kept": scaler.get("kept", []), "restarting": scaler.get("restarting", False),
        "failures": auto.get("launchFailures", [])[-5:],
        "events": [e for e in scaler.get("events", []) if e.get("kind") != "started"][-10:],
    }
