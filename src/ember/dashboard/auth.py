"""The cluster token on HTTP: ``Authorization: Bearer <token>`` or a cookie set by ``/login``.

Open without the token, as in Ray: the health checks (``/api/gcs_healthz``,
``/api/healthz``, ``/api/local_raylet_healthz``), ``/api/authentication_mode``, and the
two ways to obtain the cookie (``GET /login?token=...`` and Ray's
``POST /api/authenticate``), which check the token themselves. Everything else answers
401 without a valid token, before any handler runs.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from ember.dashboard.context import DashboardContext

#: Ray's cookie and header names, so Ray's dashboard clients and proxies work unchanged.
COOKIE_NAME = "ray-authentication-token"
COOKIE_MAX_AGE_S = 30 * 24 * 3600
HEADERS = ("Authorization", "X-Ray-Authorization")
BEARER = "bearer "

OPEN_PATHS = frozenset({
    "/api/gcs_healthz",
    "/api/healthz",
    "/api/local_raylet_healthz",
    "/api/authentication_mode",
    "/api/authenticate",
    "/login",
})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def presented_token(request: web.Request) -> str | None:
    """The token a request carries (header first, then the cookie), or None."""
    for header in HEADERS:
        value = request.headers.get(header, "").strip()
        if value:
            return value[len(BEARER):].strip() if value.lower().startswith(BEARER) else value
    return request.cookies.get(COOKIE_NAME) or None


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _unauthorized(reason: str) -> web.Response:
    return web.Response(
        status=401, text=f"Unauthorized: {reason}", headers={"WWW-Authenticate": 'Bearer realm="ember"'},
    )


def middleware(ctx: DashboardContext) -> Middleware:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in ctx.public_paths or path.startswith(tuple(ctx.public_prefixes)):
            return await handler(request)
        given = presented_token(request)
        if given is None:
            return _unauthorized("this cluster requires its token (Authorization: Bearer <token>)")
        if not token_matches(given, ctx.token):
            return _unauthorized("wrong cluster token")
        return await handler(request)

    return require_token


def _with_cookie(response: web.StreamResponse, request: web.Request, token: str) -> web.StreamResponse:
    response.set_cookie(
        COOKIE_NAME, token, max_age=COOKIE_MAX_AGE_S, path="/", httponly=True, samesite="Strict",
        secure=request.scheme == "https",
    )
    return response


def _safe_next(target: str) -> str:
    """A redirect target on this server only (no scheme, no ``//host``)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def setup(app: web.Application, ctx: DashboardContext) -> None:
    for path in OPEN_PATHS:
        ctx.make_public(path)

    async def login(request: web.Request) -> web.StreamResponse:
        """``/login?token=T[&next=/path]``: set the HttpOnly cookie and redirect (302)."""
        token = request.query.get("token")
        if not token:
            raise web.HTTPBadRequest(text="missing query parameter 'token'")
        if not token_matches(token, ctx.token):
            return _unauthorized("wrong cluster token")
        return _with_cookie(web.HTTPFound(_safe_next(request.query.get("next", "/"))), request, token)

    async def authenticate(request: web.Request) -> web.StreamResponse:
        """Ray's ``POST /api/authenticate``: the token in the Authorization header sets the cookie."""
        given = presented_token(request) if any(request.headers.get(h) for h in HEADERS) else None
        if given is None:
            return _unauthorized("missing authentication token")
        if not token_matches(given, ctx.token):
            return _unauthorized("wrong cluster token")
        return _with_cookie(web.json_response({"status": "authenticated", "message": "Token is valid"}), request, given)

    async def authentication_mode(request: web.Request) -> web.Response:
        return web.json_response({"authentication_mode": "token"})

    app.router.add_get("/login", login)
    app.router.add_post("/api/authenticate", authenticate)
    app.router.add_get("/api/authentication_mode", authentication_mode)
