"""Entry point of the autoscaler process (``python -m ember.autoscaler``), and how the head starts it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from ember._private import session
from ember._private.processes import spawn
from ember.autoscaler.cluster_config import ClusterConfig
from ember.autoscaler.node_provider import NodeProvider, provider_class
from ember.rpc.daemon import run_daemon, setup_logging

logger = logging.getLogger(__name__)

#: The autoscaler's name in the session's ``pids/`` folder.
PID_NAME = "autoscaler"


def start_autoscaler(session_dir: str, gcs_address: str, config_path: str, *, detach: bool = True,
                     env: dict[str, str] | None = None) -> int:
    """Start the autoscaler process for a head (its config must be checked already); its pid.

    Its command is recorded (``autoscaler_restart_args.json``): the control service restarts
    it from there if it dies (``gcs/autoscaler_supervisor.py``).
    """
    args = ["-m", "ember.autoscaler", "--session-dir", session_dir, "--gcs-address", gcs_address,
            "--config", os.path.abspath(config_path)]
    session.write_autoscaler_restart_args(session_dir, args)
    proc = spawn(args, log_path=os.path.join(session_dir, "logs", "monitor.log"), env=env, detach=detach)
    session.write_pid_file(session_dir, PID_NAME, proc.pid)
    return proc.pid


def wait_for_autoscaler(gcs_address: str, token: str, pid: int) -> None:
    """Wait until the autoscaler ``pid`` has reported to the control service (RuntimeError if it exits)."""
    import time

    from ember._private.config import config
    from ember._private.processes import pid_alive
    from ember.rpc.sync_client import gcs_request

    deadline = time.monotonic() + config().autoscaler_start_timeout_s
    while time.monotonic() < deadline:
        status = gcs_request(gcs_address, token, "get_autoscaler_status")
        if status is not None and status.get("pid") == pid and not status.get("stopped"):
            return
        if not pid_alive(pid):
            raise RuntimeError("the autoscaler exited at start")
        time.sleep(0.05)  # polling another process's first report: no event to wait on
    raise RuntimeError(f"the autoscaler did not report within {config().autoscaler_start_timeout_s:g}s")


def build_provider(cluster: ClusterConfig, session_dir: str, gcs_address: str) -> NodeProvider:
    """The cluster's node provider; the head's address and session are added to its config."""
    provider_config = {"session_dir": session_dir, "gcs_address": gcs_address, **cluster.provider}
    return provider_class(provider_config)(provider_config, cluster.cluster_name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ember-autoscaler")
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--config", required=True, help="the cluster YAML")
    args = parser.parse_args(argv)
    setup_logging("autoscaler")
    from ember.autoscaler import cluster_config
    from ember.autoscaler.monitor import Autoscaler
    from ember.dashboard.gcs_client import GcsClient

    cluster = cluster_config.load(args.config)
    provider = build_provider(cluster, args.session_dir, args.gcs_address)
    token = session.read_token(args.session_dir)

    async def serve(stop: asyncio.Event) -> None:
        gcs = GcsClient(args.gcs_address, token)
        autoscaler = Autoscaler(cluster, provider, gcs)
        try:
            await autoscaler.run(stop)
        finally:
            gcs.close()
            provider.shutdown()
        logger.info("autoscaler stopped")

    run_daemon(serve)
    os._exit(0)
