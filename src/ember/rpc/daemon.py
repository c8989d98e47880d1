"""What every daemon process does at start: logging, signals, parent watch."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from ember._private.config import config
from ember._private.processes import pid_alive


def setup_logging(name: str) -> None:
    level = os.environ.get("EMBER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s %(levelname)s {name} pid={os.getpid()} %(name)s: %(message)s",
    )


def run_daemon(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop_event)`` on a fresh loop until SIGTERM/SIGINT or the parent dies."""
    from ember._private.collector import raise_young_threshold
    from ember.rpc.loop_thread import new_event_loop

    raise_young_threshold()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = int(os.environ.get("EMBER_PARENT_PID", "0") or 0)

    async def watch_parent() -> None:
        while True:
            await asyncio.sleep(config().parent_check_period_s)
            if not pid_alive(parent):
                logging.getLogger(__name__).warning("parent process %d is gone; exiting", parent)
                stop.set()
                return

    async def runner() -> None:
        watcher = loop.create_task(watch_parent()) if parent else None
        try:
            await main(stop)
        finally:
            if watcher:
                watcher.cancel()

    try:
        loop.run_until_complete(runner())
    finally:
        loop.close()
