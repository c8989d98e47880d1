"""Authenticated, bidirectional RPC connections.

A ``Connection`` is an asyncio protocol. Either side may send requests,
replies and one-way notifications. Incoming requests are dispatched to a
*handler* object, which serves one ``ember.protocol.Service`` (its
``protocol_service``): method ``m`` must be registered for that service; its
payload is decoded into the declared request type and ``handler.rpc_m(conn,
request)`` is called, which returns a value or an awaitable. A payload that does
not match gets an ERROR reply with ``ErrorCode.PROTOCOL_ERROR``; a handler that
raises sends an ERROR reply with its exception's ``ErrorCode``; either way the
daemon carries on.

Invariants:
  * no frame is decoded beyond the hello until the peer authenticated;
  * a frame's declared size is checked before it is buffered;
  * a malformed frame closes that connection only, and is logged;
  * writes made in one loop iteration go out in one system call.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import itertools
import logging
import socket
from collections.abc import Callable
from typing import Any

import msgspec

from ember._private.config import config
from ember._private.waiting import result_within
from ember.exceptions import (
    AuthenticationError,
    ConnectionLost,
    ErrorCode,
    FrameError,
    ProtocolError,
    RemoteError,
    error_code_of,
)
from ember.protocol.registry import Method, methods_of
from ember.rpc import framing
from ember.rpc.fault_injection import Fault, fault_for, rng
from ember.rpc.framing import ERROR, HELLO_MAGIC, NOTIFY, REPLY, REQUEST

logger = logging.getLogger(__name__)

Address = tuple[str, int]


class Connection(asyncio.Protocol):
    """One end of an authenticated connection."""

    def __init__(
        self,
        token: str,
        handler: Any = None,
        *,
        is_server: bool,
        info: dict[str, Any] | None = None,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self._token = token
        self.handler = handler
        service = getattr(handler, "protocol_service", None)
        #: The methods the handler serves: those registered for its service (none without one).
        self._methods: dict[str, Method] = methods_of(service) if service is not None else {}
        self.is_server = is_server
        self.info = info or {}
        #: What the peer said about itself in its hello (or its OK reply).
        self.peer_info: dict[str, Any] = {}
        self._on_close = [on_close] if on_close else []
        cfg = config()
        self._decoder = framing.FrameDecoder(cfg.max_hello_bytes)
        self._max_frame = cfg.max_frame_bytes
        self._authenticated = False
        #: Handler coroutines still running (kept so none is garbage-collected mid-flight; they
        #: finish even if the peer goes away, since some do work that must complete).
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_event_loop()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.closed = False
        self.close_reason = ""
        self.peername: Any = None
        #: Free-form per-connection state for handlers (e.g. the worker it belongs to).
        self.state: dict[str, Any] = {}
        self._handshake_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.peername = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.is_server:
            self._handshake_timer = self._loop.call_later(
                config().handshake_timeout_s, self._handshake_expired
            )
        else:
            self._write_now(framing.encode([HELLO_MAGIC, self._token, self.info]))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
            for body in frames:
                if self.closed:
                    return
                if self._authenticated:
                    self._dispatch(framing.decode_message(body))
                else:
                    self._handshake(framing.decode_body(body))
        except FrameError as exc:
            self._reject(str(exc))
        except Exception as exc:  # never let one peer's bytes take the process down
            logger.exception("error while handling data from %s", self.peername)
            self._reject(f"internal error handling a frame: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed(self.close_reason or (f"connection lost: {exc}" if exc else "connection closed by peer"))

    # ---------------------------------------------------------------- handshake
    def _handshake_expired(self) -> None:
        if not self._authenticated:
            self._reject("no hello within the handshake timeout")

    def _handshake(self, message: Any) -> None:
        if self.is_server:
            if (
                not isinstance(message, list)
                or len(message) != 3
                or message[0] != HELLO_MAGIC
                or not isinstance(message[1], str)
                or not isinstance(message[2], dict)
            ):
                self._reject("the first frame was not a valid hello")
                return
            if not hmac.compare_digest(message[1].encode(), self._token.encode()):
                self._write_now(framing.encode(["DENIED", "wrong or missing cluster token"]))
                self._reject("unauthenticated client (wrong or missing cluster token)")
                return
            self.peer_info = message[2]
            self._authenticated = True
            self._decoder.limit = self._max_frame
            if self._handshake_timer:
                self._handshake_timer.cancel()
            self._write_now(framing.encode(["OK", self.info]))
            if not self.ready.done():
                self.ready.set_result(None)
        else:
            if isinstance(message, list) and len(message) == 2 and message[0] == "OK":
                self.peer_info = message[1] if isinstance(message[1], dict) else {}
                self._authenticated = True
                self._decoder.limit = self._max_frame
                if not self.ready.done():
                    self.ready.set_result(None)
            else:
                reason = message[1] if isinstance(message, list) and len(message) == 2 else "bad hello reply"
                err = AuthenticationError(f"the server refused this connection: {reason}")
                if not self.ready.done():
                    self.ready.set_exception(err)
                self.close(str(err))

    def _reject(self, reason: str) -> None:
        logger.warning("rejecting connection from %s: %s", self.peername, reason)
        self.close(reason)

    # ----------------------------------------------------------------- dispatch
    def _dispatch(self, message: framing.Message) -> None:
        if isinstance(message, framing.Reply):
            fut = self._pending.pop(message.msg_id, None)
            if fut is not None and not fut.done():
                fut.set_result(message.payload)
        elif isinstance(message, framing.Request):
            self._handle_request(message.msg_id, message.method, message.payload)
        elif isinstance(message, framing.Notify):
            self._handle_notify(message.method, message.payload)
        else:
            fut = self._pending.pop(message.msg_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(RemoteError(ErrorCode.from_wire(message.code), str(message.message)))

    def _lookup(self, method: str) -> tuple[Any, Method] | None:
        """The handler's function for ``method`` and its registered type (None: no such method)."""
        spec = self._methods.get(method)
        if spec is None:
            return None
        fn = getattr(self.handler, "rpc_" + method, None)
        return None if fn is None else (fn, spec)

    def _handle_request(self, msg_id: Any, method: str, raw: msgspec.Raw) -> None:
        found = self._lookup(method)
        if found is None:
            self._send_error(msg_id, ErrorCode.NO_SUCH_METHOD, f"no such method: {method!r}")
            return
        fn, spec = found
        try:
            payload = spec.decode_raw(raw)
        except ProtocolError as exc:
            self._send_error(msg_id, ErrorCode.PROTOCOL_ERROR, str(exc))
            return
        try:
            result = fn(self, payload)
        except Exception as exc:  # a handler bug must not take the daemon down
            self._handler_failed(msg_id, method, exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)
            task.add_done_callback(lambda t: self._request_done(msg_id, method, t))
        else:
            self._reply(msg_id, method, result)

    def _reply(self, msg_id: Any, method: str, result: Any) -> None:
        try:
            self.send([REPLY, msg_id, result])
        except FrameError as exc:  # too large to send: the caller gets an error, not a dropped connection
            self._send_error(msg_id, ErrorCode.FRAME_TOO_LARGE, f"the reply to {method}: {exc}")

    def _request_done(self, msg_id: Any, method: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self._send_error(msg_id, ErrorCode.CANCELLED, f"{method} was cancelled")
            return
        exc = task.exception()
        if exc is not None:
            self._handler_failed(msg_id, method, exc)
        else:
            self._reply(msg_id, method, task.result())

    def _handler_failed(self, msg_id: Any, method: str, exc: BaseException) -> None:
        code = error_code_of(exc)
        if code is ErrorCode.INTERNAL and not getattr(exc, "expected", False):
            logger.exception("handler %s failed", method, exc_info=exc)
        self._send_error(msg_id, code, str(exc))

    def _send_error(self, msg_id: Any, code: ErrorCode, message: str) -> None:
        self.send([ERROR, msg_id, int(code), message])

    def _handle_notify(self, method: str, raw: msgspec.Raw) -> None:
        found = self._lookup(method)
        if found is None:
            logger.warning("ignoring notification %r from %s: no such method", method, self.peername)
            return
        fn, spec = found
        try:
            payload = spec.decode_raw(raw)
        except ProtocolError as exc:
            logger.warning("ignoring notification from %s: %s", self.peername, exc)
            return
        try:
            result = fn(self, payload)
        except Exception:
            logger.exception("notification handler %s failed", method)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)
            task.add_done_callback(_log_task_failure)

    # ------------------------------------------------------------------ sending
    def send(self, message: Any) -> None:
        """Queue one message; everything queued in this loop iteration is written together.

        Raises ``FrameError`` for a message larger than the frame limit: the peer would
        drop the whole connection on receiving it, so it is refused here instead.
        """
        if self.closed:
            return
        frame = framing.encode(message)
        if len(frame) - 4 > self._max_frame:
            raise FrameError(
                f"a message of {len(frame) - 4} bytes is larger than the frame limit of {self._max_frame} bytes "
                "(max_frame_bytes); large values travel through the object store (ember.put), not in messages"
            )
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self.closed:
            out, self._out = self._out, []
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _write_now(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def notify(self, method: str, payload: Any = None) -> None:
        self.send([NOTIFY, method, payload])

    def call_future(self, method: str, payload: Any = None) -> asyncio.Future[Any]:
        """Send a request; the returned future resolves to the reply payload."""
        fut = self._loop.create_future()
        if self.closed:
            fut.set_exception(ConnectionLost(f"connection to {self.peername} is closed: {self.close_reason}"))
            return fut
        fault = fault_for(method)
        if fault is not None:
            self._call_with_faults(fut, method, payload, fault)
            return fut
        msg_id = next(self._ids)
        self._pending[msg_id] = fut
        try:
            self.send([REQUEST, msg_id, method, payload])
        except FrameError as exc:
            del self._pending[msg_id]
            fut.set_exception(FrameError(f"{method}: {exc}"))
        return fut

    def _call_with_faults(self, outer: asyncio.Future[Any], method: str, payload: Any, fault: Fault) -> None:
        """Testing only: lose or delay this request or its reply, resending as a client would."""
        def attempt() -> None:
            if outer.done() or self.closed:
                if not outer.done():
                    outer.set_exception(ConnectionLost(f"connection to {self.peername} is closed"))
                return
            if rng.random() < fault.request_loss:
                self._loop.call_later(0.01, attempt)  # lost on the way: resend after a pause
                return
            inner = self._loop.create_future()
            msg_id = next(self._ids)
            self._pending[msg_id] = inner

            def on_reply(f: asyncio.Future[Any]) -> None:
                if outer.done():
                    return
                if f.exception() is None and rng.random() < fault.reply_loss:
                    self._loop.call_later(0.01, attempt)  # the reply was lost: ask again
                elif f.exception() is not None:
                    outer.set_exception(f.exception())  # type: ignore[arg-type]
                else:
                    outer.set_result(f.result())

            inner.add_done_callback(on_reply)
            try:
                self.send([REQUEST, msg_id, method, payload])
            except FrameError as exc:
                del self._pending[msg_id]
                outer.set_exception(FrameError(f"{method}: {exc}"))

        delay = rng.random() * fault.max_delay_ms / 1000.0
        if delay:
            self._loop.call_later(delay, attempt)
        else:
            attempt()

    async def call(self, method: str, payload: Any = None, timeout: float | None = -1.0) -> Any:
        """Send a request and wait for the reply (``timeout=None``: wait forever)."""
        fut = self.call_future(method, payload)
        if timeout is not None and timeout < 0:
            timeout = config().rpc_timeout_s
        if timeout is None:
            return await fut
        try:
            return await result_within(fut, timeout)
        except asyncio.TimeoutError as exc:
            raise ConnectionLost(f"{method} to {self.peername} got no reply within {timeout}s") from exc

    # ------------------------------------------------------------------ closing
    def add_close_callback(self, fn: Callable[[Connection], None]) -> None:
        if self.closed:
            fn(self)
        else:
            self._on_close.append(fn)

    def close(self, reason: str = "closed locally") -> None:
        if self.closed:
            return
        self.close_reason = reason
        if self._transport is not None:
            self._flush()
            self._transport.close()
        self._mark_closed(reason)

    def _mark_closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or reason
        if self._handshake_timer:
            self._handshake_timer.cancel()
        err = ConnectionLost(f"connection to {self.peername} lost: {self.close_reason}")
        if not self.ready.done():
            self.ready.set_exception(err)
            self.ready.exception()  # mark retrieved
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)
        callbacks, self._on_close = self._on_close, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                logger.exception("close callback failed")


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("notification handler failed", exc_info=task.exception())


async def start_server(
    handler: Any,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    path: str | None = None,
    info: dict[str, Any] | None = None,
    on_connect: Callable[[Connection], None] | None = None,
    on_close: Callable[[Connection], None] | None = None,
) -> asyncio.Server:
    """Serve ``handler`` on TCP ``host:port``, an existing socket, or a Unix ``path``."""
    loop = asyncio.get_running_loop()

    def factory() -> Connection:
        conn = Connection(token, handler, is_server=True, info=info, on_close=on_close)
        if on_connect is not None:
            conn.ready.add_done_callback(lambda f: f.exception() is None and on_connect(conn))
        return conn

    if path is not None:
        return await loop.create_unix_server(factory, path=path)
    if sock is not None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(factory, host=host, port=port, reuse_address=True)


async def connect(
    address: Address | str,
    token: str,
    handler: Any = None,
    *,
    info: dict[str, Any] | None = None,
    timeout: float | None = None,
    retry: bool = True,
) -> Connection:
    """Open and authenticate a connection, retrying while the server starts up."""
    if isinstance(address, str):
        address = parse_address(address)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (config().connect_timeout_s if timeout is None else timeout)
    delay = 0.005
    while True:
        try:
            _, conn = await loop.create_connection(
                lambda: Connection(token, handler, is_server=False, info=info),
                host=address[0],
                port=address[1],
            )
            await result_within(conn.ready, max(0.1, deadline - loop.time()))
            return conn
        except AuthenticationError:
            raise
        except (OSError, ConnectionLost, asyncio.TimeoutError) as exc:
            if not retry or loop.time() >= deadline:
                raise ConnectionLost(f"could not connect to {address[0]}:{address[1]}: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)


def parse_address(address: str) -> Address:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"invalid address {address!r}: expected HOST:PORT")
    return host, int(port)


def format_address(address: Address | list[Any]) -> str:
    return f"{address[0]}:{address[1]}"
