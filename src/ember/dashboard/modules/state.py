"""Ray's state API over HTTP: ``/api/v0/{tasks,actors,objects,nodes,placement_groups,workers,jobs}``,
their ``/summarize``, ``/api/v0/logs``, ``/api/v0/logs/file`` and ``/api/v0/timeline``.

Rows come from ``ember.util.state.sources``, the same code ``ember.util.state`` and
``ember list`` use. Shapes are Ray's::

    GET /api/v0/tasks?limit=100&detail=false&filter_keys=state&filter_predicates=%3D&filter_values=RUNNING
    -> {"result": true, "msg": "", "data": {"result": {"result": [rows], "total": N,
        "num_after_truncation": n, "num_filtered": N, "partial_failure_warning": null, "warnings": [...]}}}
    GET /api/v0/tasks/summarize -> {"data": {"result": {"node_id_to_summary": {"cluster": {...}}}}}

``total`` counts every row matching the filters (filters apply before ``limit``).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ember.dashboard.context import DashboardContext
from ember.dashboard.http_utils import (
    bad_request,
    query_bool,
    query_choice,
    query_float,
    query_int,
    rest_response,
)
from ember.util.state.common import RESOURCES
from ember.util.state.sources import StateSource, list_resource, summarize

SUMMARIZABLE = ("tasks", "actors", "objects")


def _filters(request: web.Request) -> list[tuple[str, str, str]]:
    keys = request.query.getall("filter_keys", [])
    predicates = request.query.getall("filter_predicates", [])
    values = request.query.getall("filter_values", [])
    if not (len(keys) == len(predicates) == len(values)):
        raise bad_request("filter_keys, filter_predicates and filter_values must have the same length")
    return list(zip(keys, predicates, values))


def setup(app: web.Application, ctx: DashboardContext) -> None:
    def source(request: web.Request) -> StateSource:
        timeout = query_float(request, "timeout", 30.0, minimum=0.1)
        return StateSource(lambda m, p: ctx.gcs.call(m, p, timeout), ctx.gcs_address, ctx.token, timeout)

    async def list_rows(request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        if resource not in RESOURCES:
            raise web.HTTPNotFound(text=f"no resource {resource!r}; one of {', '.join(RESOURCES)}")
        limit = query_int(request, "limit", 100, minimum=0, maximum=ctx.config.state_api_max_limit)
        detail = query_bool(request, "detail", False)
        reply = await list_resource(source(request), resource, _filters(request), limit, detail)
        warnings = []
        if reply["total"] > reply["num_after_truncation"]:
            warnings.append(f"Showing {reply['num_after_truncation']} of {reply['total']} {resource} that match "
                            f"(limit={limit}).")
        if reply.get("dropped"):
            warnings.append(f"{reply['dropped']} task(s) were dropped from the task-event store.")
        return rest_response("", result={**reply, "warnings": warnings})

    async def summary(request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        if resource not in SUMMARIZABLE:
            raise web.HTTPNotFound(text=f"cannot summarize {resource!r}; one of {', '.join(SUMMARIZABLE)}")
        result = await summarize(source(request), resource)
        return rest_response("", result={"node_id_to_summary": result})

    async def logs_index(request: web.Request) -> web.Response:
        from ember.util.state.logs import list_node_logs

        result = await list_node_logs(source(request), request.query.get("node_id"), request.query.get("node_ip"),
                                      request.query.get("glob"))
        return rest_response("", result=result)

    async def log_file(request: web.Request) -> web.StreamResponse:
        """The text of one log file (``lines``: the last N; ``follow``: keep streaming what is appended)."""
        from ember.util.state.logs import read_chunk, resolve_file, tail_start

        src = source(request)
        pid = query_int(request, "pid", -1)
        q = request.query
        node, name = await resolve_file(
            src, node_id=q.get("node_id"), node_ip=q.get("node_ip"), filename=q.get("filename"),
            actor_id=q.get("actor_id"), task_id=q.get("task_id"), pid=None if pid < 0 else pid,
            suffix=query_choice(request, "suffix", "out", ("out", "err")),
        )
        offset = await tail_start(src, node, name, query_int(request, "lines", -1, minimum=-1))
        follow = query_bool(request, "follow", False)
        chunk = await read_chunk(src, node, name, offset)  # before the headers: a refusal is still a 400
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        while True:
            if chunk["data"]:
                await response.write(chunk["data"])
            offset = chunk["offset"] + len(chunk["data"])
            if offset >= chunk["size"]:
                if not follow:
                    break
                await asyncio.sleep(ctx.config.log_poll_period_s * 4)  # a growing file sends no event
            chunk = await read_chunk(src, node, name, offset)
        await response.write_eof()
        return response

    async def timeline(request: web.Request) -> web.Response:
        from ember.util.state.timeline import chrome_trace, executions

        job_id = request.query.get("job_id") or None
        if job_id is not None:
            try:
                bytes.fromhex(job_id)
            except ValueError:
                raise bad_request(f"job_id must be hex, got {job_id!r}") from None
        rows = await executions(source(request), 0.0, job_id)
        return web.json_response(chrome_trace(rows))

    app.router.add_get("/api/v0/logs", logs_index)
    app.router.add_get("/api/v0/logs/file", log_file)
    app.router.add_get("/api/v0/timeline", timeline)
    app.router.add_get("/api/v0/{resource}/summarize", summary)
    app.router.add_get("/api/v0/{resource}", list_rows)


