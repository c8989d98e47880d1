"""The job API: Ray's routes and JSON shapes, so Ray's SDK and CLI work against Ember
(with ``/api/version`` from the ``cluster`` module, which they check first).

    POST   /api/jobs/                      submit      -> {"job_id", "submission_id"}
    GET    /api/jobs/                      list        -> [JobDetails, ...]
    GET    /api/jobs/{id}                  one job     -> JobDetails (id: submission or driver job id)
    POST   /api/jobs/{id}/stop             stop        -> {"stopped": bool}
    DELETE /api/jobs/{id}                  delete      -> {"deleted": bool} (finished jobs only)
    GET    /api/jobs/{id}/logs             logs        -> {"logs": str}
    GET    /api/jobs/{id}/logs/tail        WebSocket: the output as text messages until the job ends
    GET    /api/packages/gcs/{name}        200 if the package (an uploaded working_dir) is stored, else 404
    PUT    /api/packages/gcs/{name}        store a package (the body is the zip; checked for unsafe entries)

Errors are plain text: 400 for bad input (the message names what is wrong), 404 for an
unknown job, 503 while the control service is unreachable. Every route needs the
cluster token (the server's auth middleware): an open job API runs anyone's code.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ember.exceptions import ConnectionLost
from ember.jobs.common import JobSubmitRequest
from ember.jobs.manager import JobManager, JobNotFoundError, JobStateError

logger = logging.getLogger(__name__)

_MANAGER = web.AppKey("job_manager", JobManager)


def setup(app: web.Application, ctx: Any) -> None:
    manager = JobManager(ctx.gcs.call, ctx.gcs_address, ctx.token, ctx.logs_dir)
    app[_MANAGER] = manager

    async def start(app: web.Application) -> None:
        manager.start()

    async def close(app: web.Application) -> None:
        await manager.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    app.middlewares.append(_errors)
    app.router.add_post("/api/jobs/", submit_job)
    app.router.add_get("/api/jobs/", list_jobs)
    app.router.add_get("/api/jobs/{job_id}", get_job)
    app.router.add_post("/api/jobs/{job_id}/stop", stop_job)
    app.router.add_delete("/api/jobs/{job_id}", delete_job)
    app.router.add_get("/api/jobs/{job_id}/logs", get_job_logs)
    app.router.add_get("/api/jobs/{job_id}/logs/tail", tail_job_logs)
    app.router.add_get("/api/packages/{protocol}/{package_name}", package_exists)
    app.router.add_put("/api/packages/{protocol}/{package_name}", upload_package)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The job API's errors as Ray answers them (plain text with a status code)."""
    if not request.path.startswith(("/api/jobs", "/api/packages")):
        return await handler(request)
    try:
        return await handler(request)
    except JobNotFoundError as exc:
        return web.Response(status=404, text=f"Job {exc.args[0]} does not exist")
    except JobStateError as exc:
        return web.Response(status=400, text=str(exc))
    except (ConnectionLost, ConnectionError, OSError) as exc:
        return web.Response(status=503, text=f"The cluster's control service is unreachable: {exc}")


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data), content_type="application/json")


async def submit_job(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError as exc:
        return web.Response(status=400, text=f"the request body is not JSON: {exc}")
    try:
        submit = JobSubmitRequest.from_json(body)
        submission_id = await request.app[_MANAGER].submit(submit)
    except (TypeError, ValueError) as exc:
        return web.Response(status=400, text=str(exc))
    return _json({"job_id": submission_id, "submission_id": submission_id})


async def list_jobs(request: web.Request) -> web.Response:
    jobs = await request.app[_MANAGER].list_jobs()
    return _json([job.to_json() for job in jobs])


async def get_job(request: web.Request) -> web.Response:
    job = await request.app[_MANAGER].get_job(request.match_info["job_id"])
    return _json(job.to_json())


async def stop_job(request: web.Request) -> web.Response:
    manager = request.app[_MANAGER]
    submission_id = await manager.submission_id_of(request.match_info["job_id"], "stop")
    return _json({"stopped": await manager.stop_job(submission_id)})


async def delete_job(request: web.Request) -> web.Response:
    manager = request.app[_MANAGER]
    submission_id = await manager.submission_id_of(request.match_info["job_id"], "delete")
    return _json({"deleted": await manager.delete_job(submission_id)})


async def get_job_logs(request: web.Request) -> web.Response:
    manager = request.app[_MANAGER]
    submission_id = await manager.submission_id_of(request.match_info["job_id"], "get logs of")
    return _json({"logs": await manager.get_logs(submission_id)})


async def tail_job_logs(request: web.Request) -> web.StreamResponse:
    manager = request.app[_MANAGER]
    submission_id = await manager.submission_id_of(request.match_info["job_id"], "get logs of")
    ws = web.WebSocketResponse()
    await ws.prepare(request)

    async def send() -> None:
        async for chunk in manager.tail_logs(submission_id):
            await ws.send_str(chunk)

    # The client may leave first: its close (or a dropped connection) ends the stream at once.
    sender = asyncio.ensure_future(send())
    client_left = asyncio.ensure_future(ws.receive())
    try:
        await asyncio.wait({sender, client_left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, client_left):
            task.cancel()
        results = await asyncio.gather(sender, client_left, return_exceptions=True)
    if isinstance(results[0], Exception) and not isinstance(results[0], (ConnectionResetError, asyncio.CancelledError)):
        logger.warning("streaming the logs of job %s failed: %r", submission_id, results[0])
    await ws.close()
    return ws


async def package_exists(request: web.Request) -> web.Response:
    uri = _package_uri(request)
    if await request.app[_MANAGER].package_exists(uri):
        return web.Response()
    return web.Response(status=404, text=f"Package {uri} does not exist")


async def upload_package(request: web.Request) -> web.Response:
    uri = _package_uri(request)
    try:
        await request.app[_MANAGER].store_package(uri, await request.read())
    except ValueError as exc:
        return web.Response(status=400, text=str(exc))
    return web.Response()


def _package_uri(request: web.Request) -> str:
    """``gcs://<name>``: packages live in the cluster (Ray's SDK uploads under this scheme)."""
    protocol, name = request.match_info["protocol"], request.match_info["package_name"]
    if protocol != "gcs":
        raise web.HTTPBadRequest(text=f"packages are uploaded under gcs://, not {protocol}://")
    if not name.endswith((".zip", ".whl")) or "/" in name or name.startswith("."):
        raise web.HTTPBadRequest(text=f"bad package name {name!r}: expected <name>.zip or <name>.whl")
    return f"gcs://{name}"
