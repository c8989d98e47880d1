"""Metrics routes of the head's HTTP server.

    GET /api/prometheus/sd      Ray's Prometheus HTTP service discovery: every live node's
                                metrics port, ``[{"labels": {"job": "ray"}, "targets": [...]}]``
                                (the same list as the session's prom_metrics_service_discovery.json)
    GET /api/metrics            current values read from every live node's metrics port, as JSON:
                                ``{"nodes": {node_id: [{"name", "labels", "value"}, ...]},
                                "unreachable": [node_id, ...]}``; ``name=`` (repeatable) keeps
                                samples of those metric families only (``ray_tasks`` keeps its
                                samples; ``ray_app_latency`` its _bucket/_sum/_count too)

Both need the cluster token, like every route but the health checks. Prometheus
sends it with ``http_sd_configs: [{url: .../api/prometheus/sd, authorization:
{credentials: <token>}}]``; the metrics ports themselves are served by each node
daemon without one (see ``ember.raylet.metrics_http``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from ember._private.metrics_scrape import parse
from ember.dashboard.context import DashboardContext
from ember.dashboard.http_utils import bad_request
from ember.gcs.metrics_discovery import targets

#: Seconds a node's metrics port has to answer ``/api/metrics``.
SCRAPE_TIMEOUT_S = 5.0
#: Most ``name=`` filters one request may give.
MAX_NAMES = 100


def setup(app: web.Application, ctx: DashboardContext) -> None:
    async def service_discovery(request: web.Request) -> web.Response:
        nodes = await ctx.gcs.call("get_nodes", None)
        return web.json_response(targets(nodes), headers={"Cache-Control": "no-store"})

    async def current_values(request: web.Request) -> web.Response:
        names = request.query.getall("name", [])
        if len(names) > MAX_NAMES or any(not n or len(n) > 200 for n in names):
            raise bad_request(f"give at most {MAX_NAMES} non-empty 'name' parameters of up to 200 characters")
        nodes = [n for n in await ctx.gcs.call("get_nodes", None) if n["Alive"] and n.get("MetricsExportPort")]
        async with ClientSession(timeout=ClientTimeout(total=SCRAPE_TIMEOUT_S)) as session:
            texts = await asyncio.gather(*(_fetch(session, n) for n in nodes))
        out: dict[str, list[dict[str, Any]]] = {}
        unreachable = []
        for node, text in zip(nodes, texts):
            if text is None:
                unreachable.append(node["NodeID"])
                continue
            out[node["NodeID"]] = [
                {"name": s.name, "labels": s.labels, "value": s.value}
                for s in parse(text) if not names or _in_families(s.name, names)
            ]
        return web.json_response({"nodes": out, "unreachable": unreachable}, headers={"Cache-Control": "no-store"})

    app.router.add_get("/api/prometheus/sd", service_discovery)
    app.router.add_get("/api/metrics", current_values)


def _in_families(sample: str, families: list[str]) -> bool:
    return any(
        sample == f or (sample.startswith(f) and sample[len(f):] in ("_total", "_bucket", "_sum", "_count"))
        for f in families
    )


async def _fetch(session: ClientSession, node: dict[str, Any]) -> str | None:
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    try:
        async with session.get(url, headers={"Accept": "text/plain"}) as response:
            if response.status != 200:
                return None
            return await response.text()
    except (ClientError, asyncio.TimeoutError, OSError):
        return None
