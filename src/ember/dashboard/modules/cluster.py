"""``/api/version``, the health checks and ``/api/cluster_status`` (Ray's shapes, with the autoscaler's
state: ``ember.autoscaler.status``)."""

from __future__ import annotations

from aiohttp import web

from ember.autoscaler.status import format_status, status_document
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
        demand = await ctx.gcs.call("get_cluster_demand", None)
        autoscaler = await ctx.gcs.call("get_autoscaler_status", None)
        status = status_document(nodes, demand, autoscaler)
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
