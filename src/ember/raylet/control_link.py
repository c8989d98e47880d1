"""The node daemon's connection to the control service: join, notify, publish, rejoin.

The control service may restart while the node runs: notifications and worker
log records sent meanwhile wait in bounded backlogs and go out when the node
has rejoined (with the same node id, its cluster id, and the leases it granted
to the control service, which answers which of them to release).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from ember._private.config import config
from ember.exceptions import ConnectionLost, RemoteError
from ember.raylet.node import NodeContext
from ember.rpc import Connection, connect

logger = logging.getLogger(__name__)

#: Worker log records a node daemon keeps while the control service is away.
LOG_BACKLOG_RECORDS = 5000


class ControlServiceLink:
    def __init__(
        self,
        node: NodeContext,
        handlers: object,
        node_info: Callable[[], dict[str, Any]],
        leases_held_by: Callable[[Connection], list[list[bytes]]],
        on_rejoined: Callable[[Connection, Connection, set[bytes]], None],
        on_lost_for_good: Callable[[], None],
    ) -> None:
        self.node = node
        self._handlers = handlers
        self._node_info = node_info
        self._leases_held_by = leases_held_by
        self._on_rejoined = on_rejoined
        self._on_lost_for_good = on_lost_for_good
        self.conn: Connection | None = None
        self.cluster_id = ""
        self._backlog: list[tuple[str, Any]] = []
        #: Worker output read while the control service was away (the newest, bounded).
        self._log_backlog: deque[dict[str, Any]] = deque(maxlen=LOG_BACKLOG_RECORDS)

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def is_control_service(self, conn: object) -> bool:
        return conn is self.conn

    async def join(self) -> None:
        """Connect, register this node and subscribe to node joins and deaths."""
        conn = await connect(self.node.gcs_address, self.node.token, self._handlers, info={"role": "raylet"})
        self.conn = conn
        conn.add_close_callback(self._lost)
        reply = await conn.call("register_node", self._node_info())
        self.cluster_id = reply["cluster_id"]
        # Joins and deaths reach the cluster view at once, not at the next report.
        await conn.call("subscribe", {"channels": ["nodes"]})

    async def leave(self) -> None:
        """Tell the control service this node stops (a stop, not a death) and close the connection."""
        conn = self.conn
        if conn is None:
            return
        if not conn.closed:
            try:
                await conn.call("unregister_node", {"node_id": self.node.node_id}, config().process_stop_timeout_s)
            except (ConnectionLost, RemoteError) as exc:
                logger.info("could not tell the control service this node is stopping: %s", exc)
        conn.close("node daemon stopping")

    def notify(self, method: str, payload: Any) -> None:
        """Tell the control service something; kept until it is reachable again if it is not now."""
        if self.conn is not None and not self.conn.closed:
            self.conn.notify(method, payload)
        else:
            self._backlog.append((method, payload))

    def publish_log(self, record: dict[str, Any]) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.notify("publish", ["logs", record])
        else:  # the control service is restarting: delivered when it is back
            self._log_backlog.append(record)

    async def call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        """A request to the control service (``ConnectionLost`` while it is away)."""
        if self.conn is None or self.conn.closed:
            raise ConnectionLost("the control service is not connected")
        return await self.conn.call(method, payload, timeout)

    def _lost(self, conn: Connection) -> None:
        if self.node.stopping or conn is not self.conn:
            return
        logger.warning("lost the connection to the control service (%s); reconnecting", conn.close_reason)
        self.node.background.spawn_if_open(self._reconnect(conn), "reconnect to the control service")

    async def _reconnect(self, old: Connection) -> None:
        """Keep running while the control service restarts; rejoin it with the same node id."""
        timeout = config().gcs_reconnect_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while not self.node.stopping:
            try:
                conn = await connect(self.node.gcs_address, self.node.token, self._handlers, info={"role": "raylet"},
                                     timeout=config().gcs_connect_attempt_timeout_s, retry=False)
                reply = await conn.call("register_node", {
                    **self._node_info(), "cluster_id": self.cluster_id, "gcs_leases": self._leases_held_by(old)})
            except RemoteError as exc:
                logger.error("the control service refused this node: %s; stopping", exc.message)
                self._on_lost_for_good()
                return
            except (ConnectionLost, OSError):
                if loop.time() > deadline:
                    logger.error("the control service did not come back within %gs; stopping", timeout)
                    self._on_lost_for_good()
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, config().gcs_reconnect_max_backoff_s)
                continue
            break
        else:
            return
        self.conn = conn
        conn.add_close_callback(self._lost)
        self._on_rejoined(old, conn, set(reply.get("release_leases") or []))
        backlog, self._backlog = self._backlog, []
        for method, payload in backlog:
            conn.notify(method, payload)
        while self._log_backlog:
            conn.notify("publish", ["logs", self._log_backlog.popleft()])
        try:
            await conn.call("subscribe", {"channels": ["nodes"]})
        except (ConnectionLost, RemoteError):
            pass
        logger.info("rejoined the control service")
