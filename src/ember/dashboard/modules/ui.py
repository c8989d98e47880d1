"""The web UI: the pages (``static/``), the login page, and the documents the pages poll.

Pages are plain HTML/CSS/JavaScript files shipped in the package (no CDN, no build
step). ``/`` serves the page shell to a browser that carries the token (cookie or
header) and redirects any other to ``/login.html``; the login page, the stylesheet and
the icon are the only files served without the token, and they hold no data. Every
``/api/ui/...`` document is built at most once per ``dashboard_ui_refresh_s`` for all
open pages and answered ``304`` when the page already has it (``shared_document.py``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ember.dashboard import auth
from ember.dashboard.context import DashboardContext
from ember.dashboard.http_utils import bad_request, query_bool, query_int
from ember.dashboard.ui.cluster_source import ClusterSource
from ember.dashboard.ui.documents import Documents
from ember.dashboard.ui.history import ClusterHistory
from ember.dashboard.ui.jobs_source import JobsSource
from ember.dashboard.ui.log_files import LogFiles
from ember.dashboard.ui.shared_document import DocumentCache, SharedDocument
from ember.dashboard.ui.task_counts import TaskCounts

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "static")
#: Served without the token: they hold no cluster data.
PUBLIC_FILES = ("/login.html", "/static/style.css", "/static/favicon.svg")
#: Task stream windows a page may ask for, in seconds.
STREAM_WINDOWS = (15, 60, 300, 900)


def tasks_source(ctx: DashboardContext) -> Any:
    """The task events the pages read, if this server records them (see ``task_source.py``)."""
    try:
        from ember.dashboard.ui.task_source import make_task_source
    except ImportError:
        return None
    return make_task_source(ctx)


def setup(app: web.Application, ctx: DashboardContext) -> None:
    cfg = ctx.config
    cluster = ClusterSource(ctx, cfg.dashboard_node_timeout_s)
    logs = LogFiles(ctx.logs_dir, cfg.dashboard_log_read_bytes, cfg.dashboard_log_search_matches)
    history = ClusterHistory(lambda: documents.history_sample(), cfg.dashboard_history_period_s,
                             cfg.dashboard_history_samples)
    jobs = JobsSource(ctx, cfg.dashboard_node_timeout_s)
    counts = TaskCounts(cluster.task_count_rows, remembered_jobs=cfg.dashboard_ui_remembered_jobs)
    documents = Documents(cluster, logs, counts, tasks_source(ctx), history, cfg.dashboard_ui_rows, jobs)
    ttl = cfg.dashboard_ui_refresh_s
    single = {name: SharedDocument(getattr(documents, name), ttl)
              for name in ("overview", "nodes", "jobs", "actors", "log_index")}
    keyed = DocumentCache(capacity=64, ttl=ttl)

    for path in PUBLIC_FILES:
        ctx.make_public(path)
    ctx.make_public("/")

    async def start_history(app: web.Application) -> None:
        ctx.run_in_background(history.run())

    async def stop_sources(app: web.Application) -> None:
        cluster.close()
        await jobs.close()

    app.on_startup.append(start_history)
    app.on_cleanup.append(stop_sources)

    async def index(request: web.Request) -> web.StreamResponse:
        if not auth.token_matches(auth.presented_token(request), ctx.token):
            raise web.HTTPFound("/login.html")
        return web.FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={"Cache-Control": "no-cache"})

    async def login_page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(os.path.join(STATIC_DIR, "login.html"), headers={"Cache-Control": "no-cache"})

    def document(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return await single[name].respond(request)
        return handler

    async def keyed_document(request: web.Request, key: tuple[Any, ...], build: Any) -> web.Response:
        try:
            return await keyed.get(key, build).respond(request)
        except KeyError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0]) if exc.args else "not found") from None

    async def node(request: web.Request) -> web.Response:
        node_id = request.match_info["node_id"]
        return await keyed_document(request, ("node", node_id), lambda: documents.node(node_id))

    async def job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        return await keyed_document(request, ("job", job_id), lambda: documents.job(job_id))

    async def actor(request: web.Request) -> web.Response:
        actor_id = request.match_info["actor_id"]
        return await keyed_document(request, ("actor", actor_id), lambda: documents.actor(actor_id))

    async def taskstream(request: web.Request) -> web.Response:
        window = query_int(request, "window", 60)
        if window not in STREAM_WINDOWS:
            raise bad_request(f"window must be one of {', '.join(map(str, STREAM_WINDOWS))} seconds")
        return await keyed_document(request, ("stream", window), lambda: documents.taskstream(window))

    async def log(request: web.Request) -> web.StreamResponse:
        name = request.query.get("file", "")
        try:
            if request.query.get("search"):
                result = logs.search(name, request.query["search"])
            else:
                offset = query_int(request, "offset", -1, minimum=0) if "offset" in request.query else None
                tail = query_int(request, "tail", cfg.dashboard_log_read_bytes, minimum=1)
                result = logs.read(name, offset, tail if offset is None else None)
                if query_bool(request, "raw", False):
                    return web.FileResponse(logs.path_of(name), headers={"Content-Type": "text/plain; charset=utf-8"})
        except FileNotFoundError:
            raise web.HTTPNotFound(text=f"no log file {name!r}") from None
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        return web.json_response(result, headers={"Cache-Control": "no-cache"})

    async def timeline(request: web.Request) -> web.Response:
        from ember.dashboard.ui.trace import chrome_trace

        executions = await documents.tasks.executions(0.0) if documents.tasks is not None else []
        return web.json_response(chrome_trace(executions),
                                 headers={"Content-Disposition": 'attachment; filename="timeline.json"'})

    r = app.router
    r.add_get("/", index)
    r.add_get("/login.html", login_page)
    r.add_get("/api/ui/overview", document("overview"))
    r.add_get("/api/ui/nodes", document("nodes"))
    r.add_get("/api/ui/nodes/{node_id}", node)
    r.add_get("/api/ui/jobs", document("jobs"))
    r.add_get("/api/ui/jobs/{job_id}", job)
    r.add_get("/api/ui/actors", document("actors"))
    r.add_get("/api/ui/actors/{actor_id}", actor)
    r.add_get("/api/ui/taskstream", taskstream)
    r.add_get("/api/ui/timeline", timeline)
    r.add_get("/api/ui/logs", document("log_index"))
    r.add_get("/api/ui/log", log)
    r.add_static("/static/", STATIC_DIR, follow_symlinks=False)
