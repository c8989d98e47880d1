"""This process's place in the cluster and its connections.

``ProcessInfo`` says who this core worker is and where (filled in once when it
connects). ``ClusterLinks`` holds its connections: the node daemon, the control
service (reconnected across a restart; ``gcs_request`` waits it out) and cached
connections to other core workers (``connect_to``). Every other component reaches
the network only through it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ember._private.config import config
from ember._private.waiting import wait_event
from ember.exceptions import ConnectionLost
from ember.rpc import Connection, EventLoopThread, connect

logger = logging.getLogger(__name__)

DRIVER = "driver"
WORKER = "worker"

#: A core worker's address: [ip, port, worker id].
Address = list[Any]


@dataclass
class ProcessInfo:
    """Who this core worker is; the node fields are set when it registers with its node daemon."""

    mode: str
    worker_id: bytes
    node_ip: str = "127.0.0.1"
    #: [ip, port, worker id] where other processes reach this one.
    address: Address = field(default_factory=list)
    node_id: bytes = b""
    store_dir: str = ""
    session_dir: str = ""
    #: [host, port] of this node's daemon (object transfers, frees).
    raylet_location: list[Any] = field(default_factory=list)

    def owns(self, owner: Address | None) -> bool:
        """Whether ``owner`` (a ref's owner address) is this process."""
        return owner is not None and owner[2] == self.worker_id


class ClusterLinks:
    """Connections of one core worker; every coroutine here runs on ``loop``."""

    def __init__(self, mode: str, gcs_address: str, token: str, handler: object) -> None:
        self.mode = mode
        self.gcs_address = gcs_address
        self.token = token
        #: What answers requests arriving on connections this process opens or accepts.
        self.handler = handler
        self.io: EventLoopThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._raylet: Connection | None = None
        #: None while a worker has not reached the control service yet (it connects in the background).
        self.gcs: Connection | None = None
        self.gcs_up: asyncio.Event | None = None
        self._peers: dict[tuple[str, int], asyncio.Future[Connection]] = {}
        self.shutting_down = False

    def start_loop(self) -> EventLoopThread:
        self.io = EventLoopThread("ember-io")
        self._loop = self.io.loop
        return self.io

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the core worker is not started")
        return loop

    @property
    def raylet(self) -> Connection:
        conn = self._raylet
        if conn is None:
            raise RuntimeError("the core worker is not connected to its node daemon")
        return conn

    @raylet.setter
    def raylet(self, conn: Connection) -> None:
        self._raylet = conn

    @property
    def raylet_connected(self) -> bool:
        return self._raylet is not None and not self._raylet.closed

    # ------------------------------------------------------------ calls from user threads
    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait for its result (from a user thread)."""
        if self.io is None:
            coro.close()
            raise RuntimeError("the core worker is not started")
        return self.io.run(coro, timeout=timeout)

    def gcs_call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        return self.run(self.gcs_request(method, payload, timeout))

    def raylet_call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        return self.run(self.raylet.call(method, payload, timeout))

    def in_loop_thread(self) -> bool:
        return self.io is not None and self.io.in_loop_thread()

    # ------------------------------------------------------------ on the loop
    async def gcs_request(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        """Call the control service, waiting out a restart (requests must be idempotent)."""
        wait = config().gcs_reconnect_timeout_s
        while True:
            up = self.gcs_up
            if up is None or not up.is_set():
                if up is None:
                    raise ConnectionLost("not connected to the control service")
                if not await wait_event(up, wait):
                    raise ConnectionLost(f"the control service has been unreachable for {wait:g}s")
            conn = self.gcs
            if conn is None:
                await asyncio.sleep(0)
                continue
            try:
                return await conn.call(method, payload, timeout)
            except ConnectionLost:
                if self.shutting_down:
                    raise
                if conn is self.gcs and not conn.closed:
                    raise  # a timeout, not a lost connection
                await asyncio.sleep(0)

    def notify_gcs(self, method: str, payload: Any) -> None:
        """On the loop: a notification to the control service, if it is reachable now."""
        if self.gcs is not None and not self.gcs.closed:
            self.gcs.notify(method, payload)

    def notify_raylet(self, method: str, payload: Any) -> None:
        """From any thread: a notification to this node's daemon."""
        self.loop.call_soon_threadsafe(self.raylet.notify, method, payload)

    async def connect_to(self, address: list[Any]) -> Connection:
        """A (cached) connection to another core worker."""
        key = (address[0], address[1])
        fut = self._peers.get(key)
        if fut is not None:
            if not fut.done():
                return await asyncio.shield(fut)
            if fut.exception() is None and not fut.result().closed:
                return fut.result()
        fut = self.loop.create_future()
        self._peers[key] = fut
        timeout = config().peer_connect_timeout_s
        try:
            try:
                conn = await connect(key, self.token, self.handler, info={"role": self.mode}, timeout=timeout, retry=False)
            except ConnectionLost as exc:
                # A core worker listens before its address is ever handed out: a refusal means
                # the process is gone (an owner that died), so fail now rather than retry for 5 s.
                if isinstance(exc.__cause__, ConnectionRefusedError):
                    raise
                conn = await connect(key, self.token, self.handler, info={"role": self.mode}, timeout=timeout)
        except BaseException as exc:
            self._peers.pop(key, None)
            fut.set_exception(exc)
            fut.exception()
            raise
        fut.set_result(conn)
        return conn

    def close_all(self, reason: str) -> None:
        """On the loop: close every connection (shutdown)."""
        for conn in [self._raylet, self.gcs]:
            if conn is not None:
                conn.close(reason)
        for fut in self._peers.values():
            if fut.done() and not fut.exception():
                fut.result().close(reason)
