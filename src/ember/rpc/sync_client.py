"""Short synchronous conversations with a cluster's control service (for the CLI)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ember.rpc import connect


def gcs_request(address: str, token: str, method: str, payload: Any = None, timeout: float = 5.0) -> Any:
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


def wait_for_nodes(address: str, token: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Wait until ``count`` live nodes are registered; returns them."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            last = [n for n in gcs_request(address, token, "get_nodes") if n["Alive"]]
        except Exception:
            last = []
        if len(last) >= count:
            return last
        time.sleep(0.05)
    raise TimeoutError(f"only {len(last)} of {count} node(s) registered with {address} within {timeout:.0f}s")
