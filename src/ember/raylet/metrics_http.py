"""The metrics port: ``GET /metrics`` answered on the node daemon's event loop.

One request per connection, as Prometheus scrapes: the request head is read
(bounded in size and time), ``/metrics`` (or ``/``) gets the exposition that
``render`` produces, anything else 404 or 405, then the connection closes.
The exposition format itself comes from ``prometheus_client``.

The port serves no control and no secrets (metric values and labels only),
binds the node's address (loopback unless the node was started on another),
and takes no token: Prometheus scrapers cannot send one (Ray's metrics port
is unauthenticated too).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

#: Largest request head accepted (request line and headers).
MAX_REQUEST_HEAD = 16 * 1024

Render = Callable[[str], Awaitable[tuple[bytes, str]]]


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + body


class MetricsHttpServer:
    def __init__(self, sock: socket.socket, render: Render, request_timeout_s: float) -> None:
        self._sock = sock
        self._render = render
        self._timeout = request_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, sock=self._sock, limit=MAX_REQUEST_HEAD)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=1.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            writer.write(await self._answer(reader))
            await writer.drain()
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._timeout)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return _response("400 Bad Request", b"malformed or oversized request\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response("400 Bad Request", b"malformed request line\n")
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"only GET is served here\n")
        if path not in ("/metrics", "/"):
            return _response("404 Not Found", b"metrics are served at /metrics\n")
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        try:
            body, content_type = await self._render(accept)
        except Exception:
            logger.exception("building the metrics exposition failed")
            return _response("500 Internal Server Error", b"building the metrics failed; see the node daemon's log\n")
        return _response("200 OK", body, content_type, head_only=method == "HEAD")
