"""Helpers for route modules: Ray's response envelope and strict query parsing (400 on bad input)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def rest_response(message: str = "", *, success: bool = True, status: int = 200, **data: Any) -> web.Response:
    """Ray's envelope ``{"result": bool, "msg": str, "data": {...}}`` (keys as given)."""
    return web.json_response({"result": success, "msg": message, "data": data}, status=status)


def bad_request(reason: str) -> web.HTTPBadRequest:
    """The exception to raise for malformed input: 400 with ``reason`` as the body."""
    return web.HTTPBadRequest(text=reason)


def query_int(request: web.Request, name: str, default: int, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise bad_request(f"query parameter {name!r} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise bad_request(f"query parameter {name!r} must be <= {maximum}, got {value}")
    return value


def query_float(request: web.Request, name: str, default: float, *, minimum: float | None = None) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"query parameter {name!r} must be a number, got {raw!r}") from None
    if value != value or (minimum is not None and value < minimum):
        raise bad_request(f"query parameter {name!r} must be a number >= {minimum}, got {raw!r}")
    return value


_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise bad_request(f"query parameter {name!r} must be true or false, got {raw!r}")


def query_choice(request: web.Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise bad_request(f"query parameter {name!r} must be one of {', '.join(choices)}, got {raw!r}")
    return raw
