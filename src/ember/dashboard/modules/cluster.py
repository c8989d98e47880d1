"""``/api/version``, the health checks and ``/api/cluster_status`` (Ray's shapes)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ember.dashboard.context import DashboardContext
from ember.dashboard.http_utils import query_choice, rest_response
from ember.exceptions import RpcError

#: Ray's REST API version (``ray.dashboard.modules.version.CURRENT_VERSION``).
API_VERSION = "4"
#: The Ray release whose REST API this server speaks. Ray's job SDK and ``ray job`` CLI
#: refuse a server reporting a Ray version below 2.0, so this is not Ember's own version.
RAY_COMPATIBLE_VERSION = "2.60.0"
#: Seconds a health check waits for the control service.
HEALTH_TIMEOUT_S = 2.0


def setup(app: web.Application, ctx: DashboardContext) -> None:
    async def version(request: web.Request) -> web.Response:
        import ember

        return web.json_response({
            "version": API_VERSION,
            "ray_version": RAY_COMPATIBLE_VERSION,
            "ray_commit": "",
            "ember_version": ember.__version__,
            "session_name": ctx.session_name,
        })

    async def gcs_healthz(request: web.Request) -> web.Response:
        try:
            await ctx.gcs.call("ping", None, timeout=HEALTH_TIMEOUT_S)
        except RpcError as exc:
            return web.Response(status=503, text=f"the control service does not answer: {exc}")
        return web.Response(text="success")

    async def local_raylet_healthz(request: web.Request) -> web.Response:
        try:
            nodes = await ctx.gcs.call("get_nodes", None, timeout=HEALTH_TIMEOUT_S)
        except RpcError as exc:
            return web.Response(status=503, text=f"the control service does not answer: {exc}")
        if any(n["Alive"] and n.get("IsHead") for n in nodes):
            return web.Response(text="success")
        return web.Response(status=503, text="the head's node daemon is not alive")

    async def cluster_status(request: web.Request) -> web.Response:
        formatted = query_choice(request, "format", "0", ("0", "1")) == "1"
        nodes = await ctx.gcs.call("get_nodes", None)
        status = cluster_status_of(nodes)
        if formatted:
            return rest_response("Got formatted cluster status.", clusterStatus=format_status(status))
        return rest_response(
            "Got cluster status.", autoscalingStatus=format_status(status), autoscalingError=None,
            clusterStatus=status,
        )

    app.router.add_get("/api/version", version)
    app.router.add_get("/api/gcs_healthz", gcs_healthz)
    app.router.add_get("/api/healthz", gcs_healthz)
    app.router.add_get("/api/local_raylet_healthz", local_raylet_healthz)
    app.router.add_get("/api/cluster_status", cluster_status)


def cluster_status_of(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Ray's autoscaler status document (camelCase, as Ray's REST layer returns it)."""
    alive = [n for n in nodes if n["Alive"]]
    usage: dict[str, list[float]] = {}
    by_node: dict[str, dict[str, list[float]]] = {}
    for node in alive:
        mine: dict[str, list[float]] = {}
        for name, total in node["Resources"].items():
            if name.startswith("node:"):
                continue
            used = total - node["AvailableResources"].get(name, 0.0)
            mine[name] = [used, total]
            agg = usage.setdefault(name, [0.0, 0.0])
            agg[0] += used
            agg[1] += total
        by_node[node["NodeID"]] = mine
    return {
        "time": time.time(),
        "loadMetricsReport": {
            "usage": usage,
            "usageByNode": by_node,
            "resourceDemand": [],
            "pgDemand": [],
            "requestDemand": [],
            "nodeTypes": [],
        },
        "autoscalerReport": {
            "activeNodes": {"node": len(alive)} if alive else {},
            "idleNodes": {},
            "pendingLaunches": {},
            "pendingNodes": [],
            "failedNodes": [
                {"nodeId": n["NodeID"], "ip": n["NodeManagerAddress"], "reason": n.get("DeathReason", "")}
                for n in nodes if not n["Alive"]
            ],
        },
    }


def format_status(status: dict[str, Any]) -> str:
    """The text ``ray status`` prints for ``status``."""
    report = status["autoscalerReport"]
    lines = ["======== Autoscaler status: " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["time"])),
             "Node status", "-" * 57, "Active:"]
    lines += [f" {count} {kind}" for kind, count in report["activeNodes"].items()] or [" (no active nodes)"]
    lines += ["Pending:", " (no pending nodes)", "Recent failures:"]
    lines += [f" {f['ip']}: {f['reason']} ({f['nodeId'][:12]})" for f in report["failedNodes"]] or [" (no failures)"]
    lines += ["", "Resources", "-" * 57, "Usage:"]
    for name, (used, total) in sorted(status["loadMetricsReport"]["usage"].items()):
        if name in ("memory", "object_store_memory"):
            lines.append(f" {used / 2**30:.2f}GiB/{total / 2**30:.2f}GiB {name}")
        else:
            lines.append(f" {used:g}/{total:g} {name}")
    lines += ["", "Demands:", " (no resource demands)"]
    return "\n".join(lines)
