"""Short synchronous conversations with a cluster's control service (for the CLI)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ember._private.config import config
from ember.exceptions import ConnectionLost
from ember.rpc import connect


def gcs_request(address: str, token: str, method: str, payload: Any = None, timeout: float | None = None) -> Any:
    """One call; ``timeout`` bounds the connection and the reply (default ``connect_timeout_s``)."""
    if timeout is None:
        timeout = config().connect_timeout_s

    async def run() -> Any:
        conn = await connect(address, token, timeout=timeout)
        try:
            return await conn.call(method, payload, timeout)
        finally:
            conn.close()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def live_nodes(address: str, token: str, deadline: float) -> list[dict[str, Any]] | None:
    """The live nodes the control service knows, or None if it did not answer (it may be starting:
    on a loaded machine its first hello can take seconds) before ``deadline`` (``time.monotonic``)."""
    try:
        nodes = gcs_request(address, token, "get_nodes", timeout=max(0.1, deadline - time.monotonic()))
    except (ConnectionLost, TimeoutError, OSError):
        return None
    return [n for n in nodes if n["Alive"]]


def wait_for_nodes(address: str, token: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Wait until ``count`` live nodes are registered; returns them."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        last = live_nodes(address, token, deadline) or []
        if len(last) >= count:
            return last
        time.sleep(0.05)
    raise TimeoutError(f"only {len(last)} of {count} node(s) registered with {address} within {timeout:.0f}s")
