"""Builds the aiohttp application: the token check, error handling, and every route module.

A route module is ``ember/dashboard/modules/<feature>.py`` with a function
``setup(app: web.Application, ctx: DashboardContext) -> None`` that adds its routes
(and may call ``ctx.make_public`` / ``ctx.run_in_background``). ``MODULES`` below is
the one list of modules the server loads, in order.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ember.dashboard import auth
from ember.dashboard.context import DashboardContext
from ember.exceptions import ConnectionLost, ErrorCode, RemoteError

logger = logging.getLogger(__name__)

#: Route modules under ``ember.dashboard.modules``, loaded in this order.
MODULES: tuple[str, ...] = ("cluster", "state", "jobs", "metrics", "ui")

#: Where a handler finds the context: ``request.app[CONTEXT]``.
CONTEXT = web.AppKey("ember_dashboard_context", DashboardContext)

#: Largest request body accepted (job submissions upload working directories).
CLIENT_MAX_SIZE = 100 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Control-service trouble becomes 503 with the reason; bad arguments 400; nothing is swallowed."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ConnectionLost as exc:
        return web.Response(status=503, text=f"the control service is unreachable: {exc}")
    except ValueError as exc:  # bad arguments found by shared code (e.g. the state API's filters)
        return web.Response(status=400, text=str(exc))
    except RemoteError as exc:
        if exc.code is ErrorCode.BAD_REQUEST:
            return web.Response(status=400, text=exc.message)
        logger.exception("control service error in %s %s", request.method, request.path)
        return web.Response(status=500, text=f"{exc.code}: {exc}")


def build_app(ctx: DashboardContext, modules: tuple[str, ...] = MODULES) -> web.Application:
    app = web.Application(middlewares=[auth.middleware(ctx), _errors], client_max_size=CLIENT_MAX_SIZE)
    app[CONTEXT] = ctx
    auth.setup(app, ctx)
    for name in modules:
        importlib.import_module(f"ember.dashboard.modules.{name}").setup(app, ctx)
    return app
