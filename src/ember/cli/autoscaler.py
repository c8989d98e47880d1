"""``ember up|down CLUSTER.yaml``: a cluster whose worker nodes come and go with demand."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from ember._private import session
from ember.cli import main


def _record_path(cluster_name: str) -> str:
    return os.path.join(session.temp_root(), "autoscaler", f"{cluster_name}.json")


def _read_record(cluster_name: str) -> dict[str, Any] | None:
    try:
        with open(_record_path(cluster_name)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _load_config(path: str) -> Any:
    from ember.autoscaler.cluster_config import load
    from ember.exceptions import AutoscalerConfigError

    try:
        return load(path)
    except AutoscalerConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("cluster_config_file", type=click.Path(dir_okay=False))
@click.option("--port", default=6379, show_default=True, type=int, help="Control service port of the head.")
@click.option("--node-ip-address", default="127.0.0.1", show_default=True, help="Address the head listens on.")
@click.option("--include-dashboard/--no-include-dashboard", default=True, show_default=True,
              help="Start the head's HTTP server (dashboard and REST API).")
@click.option("--dashboard-port", default=8265, show_default=True, type=int,
              help="HTTP server port (the next free one if taken).")
@click.option("--yes", "-y", is_flag=True, help="Accepted for Ray compatibility (nothing is asked).")
@click.pass_context
def up(ctx: click.Context, cluster_config_file: str, port: int, node_ip_address: str, include_dashboard: bool,
       dashboard_port: int, yes: bool) -> None:
    """Start a cluster from a cluster YAML: the head (its node type's resources) and the autoscaler."""
    from ember._private.processes import pid_alive
    from ember.cli.cluster import start

    cluster = _load_config(cluster_config_file)
    record = _read_record(cluster.cluster_name)
    if record is not None:
        gcs_pid = session.read_pid_files(record["session_dir"]).get("gcs")
        if gcs_pid and pid_alive(gcs_pid):
            raise click.ClickException(
                f"cluster {cluster.cluster_name!r} is already up at {record['gcs_address']}; "
                f"`ember down {cluster_config_file}` first")
    head = dict(cluster.node_types[cluster.head_node_type].resources)
    num_cpus = head.pop("CPU", None)
    num_gpus = head.pop("GPU", None)
    store = head.pop("object_store_memory", None)
    head.pop("memory", None)
    ctx.invoke(start, head=True, address=None, port=port, num_cpus=num_cpus, num_gpus=num_gpus,
               resources=json.dumps(head) if head else None,
               object_store_memory=int(store) if store else None, node_ip_address=node_ip_address, token=None,
               storage=None, metrics_export_port=0, include_dashboard=include_dashboard,
               dashboard_host="127.0.0.1", dashboard_port=dashboard_port, autoscaling_config=cluster_config_file)
    current = session.read_current_cluster() or {}
    os.makedirs(os.path.dirname(_record_path(cluster.cluster_name)), mode=0o700, exist_ok=True)
    with open(_record_path(cluster.cluster_name), "w") as f:
        json.dump({"cluster_name": cluster.cluster_name, "session_dir": current.get("session_dir"),
                   "gcs_address": current.get("gcs_address"), "config": os.path.abspath(cluster_config_file)}, f)
    click.echo(f"Cluster {cluster.cluster_name!r} is up; the autoscaler adds "
               f"{', '.join(cluster.worker_types) or 'no'} nodes with demand. End it with "
               f"`ember down {cluster_config_file}`.")


@main.command()
@click.argument("cluster_config_file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Accepted for Ray compatibility (nothing is asked).")
def down(cluster_config_file: str, yes: bool) -> None:
    """End a cluster started by `ember up`: the autoscaler, every node it started, the head."""
    from ember._private.processes import pid_alive, stop_pid
    from ember.autoscaler.main import PID_NAME, build_provider
    from ember.cli.cluster import _load_started, _save_started, stop_started

    cluster = _load_config(cluster_config_file)
    record = _read_record(cluster.cluster_name)
    if record is None or not record.get("session_dir"):
        click.echo(f"No cluster named {cluster.cluster_name!r} is up.")
        return
    session_dir = record["session_dir"]
    stopped = 0
    session.withdraw_autoscaler_restart_args(session_dir)  # else the control service restarts it
    scaler = session.read_pid_files(session_dir).get(PID_NAME)
    if scaler and pid_alive(scaler):
        stop_pid(scaler, 5.0)  # first: it would replace the nodes ended below
        stopped += 1
    provider = build_provider(cluster, session_dir, record.get("gcs_address") or "")
    for node_id in provider.non_terminated_nodes({}):
        provider.terminate_node(node_id)
        stopped += 1
    provider.shutdown()
    entries = _load_started()
    mine = [e for e in entries if e.get("session_dir") == session_dir]
    stopped += sum(stop_started(e) for e in mine)
    _save_started([e for e in entries if e.get("session_dir") != session_dir])
    os.unlink(_record_path(cluster.cluster_name))
    click.echo(f"Cluster {cluster.cluster_name!r} is down ({stopped} process(es) ended).")
