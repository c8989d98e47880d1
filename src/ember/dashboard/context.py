"""What a route module is given: ``DashboardContext``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from ember._private.background import BackgroundTasks
from ember._private.config import Config
from ember.dashboard.gcs_client import GcsClient


@dataclass
class DashboardContext:
    """Everything a module's ``setup(app, ctx)`` may use.

    Attributes:
        token: the cluster token (requests must present it, see ``auth.py``).
        session_dir: the head's session folder.
        logs_dir: ``<session_dir>/logs``; log routes must not read outside it.
        gcs_address: ``HOST:PORT`` of the control service.
        gcs: async client of the control service (``await ctx.gcs.call("get_nodes")``).
        config: this process's ``Config``.
        host, port: where this server listens.
        public_paths / public_prefixes: routes served without the token (health checks;
            a module adds to them with ``make_public``).
    """

    token: str
    session_dir: str
    gcs_address: str
    gcs: GcsClient
    config: Config
    host: str = "127.0.0.1"
    port: int = 0
    public_paths: set[str] = field(default_factory=set)
    public_prefixes: list[str] = field(default_factory=list)
    _background: BackgroundTasks = field(default_factory=lambda: BackgroundTasks("HTTP server"))

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.session_dir, "logs")

    @property
    def session_name(self) -> str:
        return os.path.basename(os.path.normpath(self.session_dir))

    @property
    def url(self) -> str:
        """``host:port`` (Ray's ``dashboard_url`` has no scheme)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def make_public(self, path: str = "", *, prefix: str = "") -> None:
        """Serve ``path`` (exact) or every path under ``prefix`` without the token."""
        if path:
            self.public_paths.add(path)
        if prefix:
            self.public_prefixes.append(prefix)

    def run_in_background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start a task owned by the server: cancelled and awaited when it stops."""
        return self._background.spawn(coro, getattr(coro, "__name__", ""))

    async def close(self) -> None:
        await self._background.close(self.config.process_stop_timeout_s)
        self.gcs.close()
