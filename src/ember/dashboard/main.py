"""Entry point of the HTTP server process: ``python -m ember.dashboard``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket

from ember._private import session
from ember._private.config import config
from ember.rpc.daemon import run_daemon, setup_logging

logger = logging.getLogger(__name__)

#: The control-service KV entry (namespace, key) holding ``host:port`` of this server, as in Ray.
KV_NAMESPACE = "dashboard"
KV_KEY = b"dashboard_url"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ember-dashboard")
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--listen-fd", type=int, default=-1, help="an already bound listening socket")
    args = parser.parse_args(argv)
    setup_logging("dashboard")
    session.write_pid_file(args.session_dir, "dashboard", os.getpid())  # a restarted server too

    async def serve(stop: asyncio.Event) -> None:
        from aiohttp import web

        from ember.dashboard.context import DashboardContext
        from ember.dashboard.gcs_client import GcsClient
        from ember.dashboard.server import build_app

        token = session.read_token(args.session_dir)
        sock = socket.socket(fileno=args.listen_fd) if args.listen_fd >= 0 else None
        ctx = DashboardContext(
            token=token, session_dir=args.session_dir, gcs_address=args.gcs_address,
            gcs=GcsClient(args.gcs_address, token), config=config(), host=args.host,
        )
        app = build_app(ctx)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, args.host, args.port)
        await site.start()
        ctx.port = _bound_port(runner)
        logger.info("HTTP server listening on http://%s", ctx.url)
        ctx.run_in_background(_announce(ctx))
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await ctx.close()
            logger.info("HTTP server stopped")

    run_daemon(serve)
    os._exit(0)


def _bound_port(runner: object) -> int:
    for server in getattr(runner, "sites", ()):
        sockets = getattr(getattr(server, "_server", None), "sockets", None) or ()
        for s in sockets:
            return int(s.getsockname()[1])
    return 0


async def _announce(ctx: object) -> None:
    """Record this server's address in the session folder and the control service's KV.

    The KV write is retried until the control service answers (it may be restarting).
    """
    from ember.dashboard.context import DashboardContext
    from ember.exceptions import RpcError

    assert isinstance(ctx, DashboardContext)
    session.write_dashboard_url(ctx.session_dir, ctx.url)
    delay = 0.05
    while True:
        try:
            await ctx.gcs.call("kv_put", {"ns": KV_NAMESPACE, "key": KV_KEY, "value": ctx.url.encode()})
            return
        except RpcError as exc:
            logger.info("cannot record the dashboard address yet: %s", exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
