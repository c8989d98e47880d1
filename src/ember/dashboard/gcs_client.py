"""An asyncio client of the control service for the HTTP server's routes."""

from __future__ import annotations

import asyncio
from typing import Any

from ember.exceptions import ConnectionLost
from ember.rpc import Connection, connect


class GcsClient:
    """One connection to the control service, opened on first use and reopened after a loss.

    The control service may restart (head restart): a call made while it is down fails
    with ``ConnectionLost`` after ``connect_timeout`` seconds; the next call reconnects.
    """

    def __init__(self, address: str, token: str, connect_timeout: float = 2.0) -> None:
        self.address = address
        self._token = token
        self._connect_timeout = connect_timeout
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> Connection:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await connect(
                    self.address, self._token, info={"role": "dashboard"}, timeout=self._connect_timeout,
                )
            return self._conn

    async def call(self, method: str, payload: Any = None, timeout: float = 10.0) -> Any:
        """Call ``method`` on the control service; one retry on a fresh connection if it was lost."""
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                return await conn.call(method, payload, timeout)
            except ConnectionLost:
                if attempt == 2 or not conn.closed:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close("dashboard stopping")
            self._conn = None
