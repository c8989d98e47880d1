"""Entry point of the control service process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket

from ember._private import session
from ember.gcs.server import GcsServer
from ember.rpc import start_server
from ember.rpc.daemon import run_daemon, setup_logging

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ember-gcs")
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--listen-fd", type=int, default=-1, help="an already bound listening socket")
    parser.add_argument("--storage", default="memory://", help="memory://, sqlite:///path or redis://host:port")
    args = parser.parse_args(argv)
    setup_logging("gcs")
    from ember._private.processes import raise_fd_limit

    raise_fd_limit()  # a connection per driver, node and actor being created
    token = session.read_token(args.session_dir)
    session.write_pid_file(args.session_dir, "gcs", os.getpid())  # a restarted control service too

    async def serve(stop: asyncio.Event) -> None:
        from ember.gcs.storage import open_storage

        gcs = GcsServer(args.session_dir, token, open_storage(args.storage))
        sock = None
        if args.listen_fd >= 0:
            sock = socket.socket(fileno=args.listen_fd)
        server = await start_server(gcs, token, args.host, args.port, sock=sock, info={"role": "gcs"})
        gcs.start()
        if args.listen_fd < 0:
            # Started again from gcs_restart_args.json (a head restart): bring back the
            # head's HTTP server too if it is gone.
            from ember._private.node import restart_dashboard_if_gone

            pid = restart_dashboard_if_gone(args.session_dir)
            if pid is not None:
                logger.info("restarted the HTTP server (pid %d)", pid)
        logger.info("control service listening on %s", server.sockets[0].getsockname())
        await stop.wait()
        server.close()
        await gcs.stop()
        gcs.storage.close()
        logger.info("control service stopped")

    run_daemon(serve)
    os._exit(0)
