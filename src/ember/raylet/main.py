"""Entry point of the node daemon process."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import TYPE_CHECKING

from ember._private import ids
from ember._private.config import config
from ember.raylet.worker_launcher import ZygoteLauncher, fork_server_log

if TYPE_CHECKING:
    import asyncio

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ember-raylet")
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--node-ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--listen-fd", type=int, default=-1)
    parser.add_argument("--resources", required=True, help="JSON of all node resources")
    parser.add_argument("--object-store-memory", type=int, required=True)
    parser.add_argument("--store-dir", required=True)
    parser.add_argument("--node-id", default="")
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--metrics-export-port", type=int, default=0)
    parser.add_argument("--metrics-listen-fd", type=int, default=-1)
    args = parser.parse_args(argv)
    node_id = bytes.fromhex(args.node_id) if args.node_id else ids.random_unique_id()
    fork_server = None
    if config().use_fork_server:
        # First, before this process imports its own modules: the fork server imports the
        # worker runtime meanwhile, so the first worker can fork as soon as we listen.
        fork_server = ZygoteLauncher(fork_server_log(os.path.join(args.session_dir, "logs"), node_id))
    # The rest of this process's modules (asyncio, the RPC layer, the node's services).
    from ember._private import session
    from ember.raylet.server import Raylet, RayletOptions
    from ember.rpc.daemon import run_daemon, setup_logging

    setup_logging("raylet")
    token = session.read_token(args.session_dir)
    opts = RayletOptions(
        session_dir=args.session_dir,
        gcs_address=args.gcs_address,
        node_ip=args.node_ip,
        port=args.port,
        listen_fd=args.listen_fd,
        resources=json.loads(args.resources),
        store_capacity=args.object_store_memory,
        store_dir=args.store_dir,
        node_id=node_id,
        is_head=args.head,
        metrics_export_port=args.metrics_export_port,
        metrics_listen_fd=args.metrics_listen_fd,
        fork_server=fork_server,
    )

    async def serve(stop: asyncio.Event) -> None:
        raylet = Raylet(opts, token, stop)
        try:
            await raylet.start()
            await stop.wait()
        finally:
            await raylet.stop()
            logger.info("node daemon stopped")

    run_daemon(serve)
    os._exit(0)
