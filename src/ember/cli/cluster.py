"""``ember start|stop|status|memory|microbenchmark``: start, stop and inspect clusters; run benchmarks."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from ember._private import session
from ember.cli import main


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _started_file() -> str:
    return os.path.join(session.temp_root(), "ember_started.json")


def _load_started() -> list[dict[str, Any]]:
    try:
        with open(_started_file()) as f:
            data = json.load(f)
        return data if isinstance(data, list) else []
    except (OSError, ValueError):
        return []


def _save_started(entries: list[dict[str, Any]]) -> None:
    os.makedirs(session.temp_root(), exist_ok=True)
    tmp = _started_file() + f".{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(entries, f)
    os.replace(tmp, _started_file())



@main.command()
@click.option("--head", is_flag=True, help="Start the head node (control service + node daemon).")
@click.option("--address", default=None, help="HOST:PORT of a head's control service to join.")
@click.option("--port", default=6379, show_default=True, type=int, help="Control service port (head only).")
@click.option("--num-cpus", type=float, default=None, help="CPUs of this node (default: all cores).")
@click.option("--num-gpus", type=float, default=None, help="GPUs of this node.")
@click.option("--resources", default=None, help='Custom resources as JSON, e.g. \'{"disk": 4}\'.')
@click.option("--object-store-memory", type=int, default=None, help="Object store capacity in bytes.")
@click.option("--node-ip-address", default="127.0.0.1", show_default=True, help="Address daemons listen on.")
@click.option("--token", default=None, help="Cluster token when joining (default: EMBER_CLUSTER_TOKEN or this machine's head).")
@click.option("--storage", default=None, help="Control service storage: sqlite:///path (default: in the session folder), redis://host:port or memory://.")
@click.option("--metrics-export-port", type=click.IntRange(0, 65535), default=0,
              help="Port this node serves Prometheus metrics on (default: a free port, shown by ember.nodes()).")
@click.option("--include-dashboard/--no-include-dashboard", default=True, show_default=True,
              help="Start the head's HTTP server (dashboard and REST API).")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True, help="Address the HTTP server listens on.")
@click.option("--dashboard-port", default=8265, show_default=True, type=int,
              help="HTTP server port (the next free one if taken).")
@click.option("--autoscaling-config", default=None, type=click.Path(dir_okay=False),
              help="Cluster YAML (Ray's keys): run the autoscaler on this head (head only).")
def start(head: bool, address: str | None, port: int, num_cpus: float | None, num_gpus: float | None,
          resources: str | None, object_store_memory: int | None, node_ip_address: str, token: str | None,
          storage: str | None, metrics_export_port: int, include_dashboard: bool, dashboard_host: str,
          dashboard_port: int, autoscaling_config: str | None = None) -> None:
    """Start Ember daemons on this machine."""
    from ember._private import node
    from ember.rpc.sync_client import wait_for_nodes

    if head == bool(address):
        raise click.UsageError("Give exactly one of --head or --address HOST:PORT.")
    if autoscaling_config is not None:
        if not head:
            raise click.UsageError("--autoscaling-config runs the autoscaler on the head: use it with --head.")
        from ember.autoscaler.cluster_config import load
        from ember.exceptions import AutoscalerConfigError

        try:
            load(autoscaling_config)  # a bad file fails here, before anything starts
        except AutoscalerConfigError as exc:
            raise click.ClickException(str(exc)) from exc
    try:
        custom = json.loads(resources) if resources else None
        if custom is not None and not isinstance(custom, dict):
            raise ValueError("must be a JSON object")
    except ValueError as exc:
        raise click.BadParameter(f"--resources is not a JSON object: {exc}") from exc
    try:
        if head:
            nodes = node.start_head(
                node_ip=node_ip_address, port=port, num_cpus=num_cpus, num_gpus=num_gpus,
                resources=custom, object_store_memory=object_store_memory, detach=True, storage=storage,
                metrics_export_port=metrics_export_port,
                link_latest=False,
                include_dashboard=include_dashboard, dashboard_host=dashboard_host, dashboard_port=dashboard_port,
            )
            try:
                wait_for_nodes(nodes.gcs_address, nodes.token, 1)
            except TimeoutError as exc:
                nodes.stop()
                raise click.ClickException(f"the head did not come up: {exc}; see {nodes.session_dir}/logs") from exc
            session.write_current_cluster({"gcs_address": nodes.gcs_address, "session_dir": nodes.session_dir})
            if autoscaling_config is not None:
                from ember.autoscaler.main import start_autoscaler, wait_for_autoscaler

                pid = start_autoscaler(nodes.session_dir, nodes.gcs_address, autoscaling_config)
                try:
                    # Until it has reported, node daemons would call demand for its node types infeasible.
                    wait_for_autoscaler(nodes.gcs_address, nodes.token, pid)
                except RuntimeError as exc:
                    raise click.ClickException(f"{exc}; see {nodes.session_dir}/logs/monitor.log "
                                               "(the head is running: `ember stop` ends it)") from exc
        else:
            assert address is not None
            try:
                token = session.cluster_token(address, token)
            except ConnectionError as exc:
                raise click.ClickException(f"{exc} (or pass --token)") from exc
            from ember.rpc.sync_client import gcs_request

            try:
                before = len([n for n in gcs_request(address, token, "get_nodes") if n["Alive"]])
            except Exception as exc:
                raise click.ClickException(f"cannot reach the control service at {address}: {exc}") from exc
            session_dir = session.create_session_dir()
            try:
                # Created private (not chmod-ed after creation: a reader could open it in between).
                fd = os.open(os.path.join(session_dir, "token"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(token)
                nodes = node.NodeProcesses(session_dir, token, node_ip_address, gcs_address=address)
                node.start_raylet(nodes, num_cpus=num_cpus, num_gpus=num_gpus, resources=custom,
                                  object_store_memory=object_store_memory, detach=True,
                                  metrics_export_port=metrics_export_port)
            except BaseException:
                session.discard_session_dir(session_dir)
                raise
            wait_for_nodes(address, token, before + 1)
        session.link_latest(nodes.session_dir)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    entries = _load_started()
    entries.append({
        "session_dir": nodes.session_dir,
        "pids": {name: proc.pid for name, proc in nodes.procs},
        "store_dir": nodes.store_dir,
        "head": head,
    })
    _save_started(entries)
    if head:
        click.echo(
            f"Ember head started at {nodes.gcs_address}.\n"
            f"  Connect a driver:  ember.init(address=\"auto\")  or  EMBER_ADDRESS={nodes.gcs_address}\n"
            f"  Add a node:        ember start --address {nodes.gcs_address}\n"
            f"  Status:            ember status\n"
            f"  Stop:              ember stop\n"
            f"  Logs:              {nodes.session_dir}/logs"
        )
        if nodes.dashboard_url:
            click.echo(f"View the dashboard at http://{nodes.dashboard_url}")
            # The token, once: opening this URL sets the browser's cookie (keep it private).
            click.echo(f"  Log in (once per browser): http://{nodes.dashboard_url}/login?token={nodes.token}")
    else:
        click.echo(f"Ember node started and joined {address}. Stop it with `ember stop`.")


def _address_and_token(address: str | None) -> tuple[str, str]:
    """The control service address and token of the cluster a command should talk to."""
    info = session.read_current_cluster()
    address = address or os.environ.get("EMBER_ADDRESS") or (info or {}).get("gcs_address")
    if not address:
        raise click.ClickException("No running cluster found. Start one with `ember start --head`.")
    try:
        return address, session.cluster_token(address)
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--force", is_flag=True, help="SIGKILL instead of a graceful stop.")
def stop(force: bool) -> None:
    """Stop every Ember daemon started on this machine by `ember start`."""
    entries = _load_started()
    stopped = sum(stop_started(entry, force) for entry in entries)
    _save_started([])
    click.echo(f"Stopped {stopped} Ember process(es)." if stopped else "No running Ember processes were found.")


def stop_started(entry: dict[str, Any], force: bool = False) -> int:
    """End the daemons one ``ember start`` recorded; how many were running.

    The autoscaler first (it would launch nodes while the others stop), then node daemons
    (they end their workers), then the control service.
    """
    import shutil
    import signal

    from ember._private.processes import pid_alive, stop_pid

    def end(pid: int) -> int:
        if not pid_alive(pid):
            return 0
        if force:
            os.kill(pid, signal.SIGKILL)
        else:
            stop_pid(pid, 5.0)
        return 1

    stopped = 0
    # Withdrawn first: the control service would restart the autoscaler ended here.
    session.withdraw_autoscaler_restart_args(entry["session_dir"])
    scaler = session.read_pid_files(entry["session_dir"]).get("autoscaler") or entry["pids"].get("autoscaler")
    if scaler:
        stopped += end(scaler)
    # The session's pid files also name daemons started since `ember start` (a restarted control
    # service, nodes the autoscaler added).
    pids = {**entry["pids"], **session.read_pid_files(entry["session_dir"])}
    pids.pop("autoscaler", None)
    for _name, pid in sorted(pids.items(), key=lambda kv: kv[0] == "gcs"):
        stopped += end(pid)
    if entry.get("store_dir"):
        shutil.rmtree(entry["store_dir"], ignore_errors=True)
    session.remove_current_cluster(entry["session_dir"])
    session.unregister_cluster(entry["session_dir"])
    return stopped


@main.command()
@click.option("--address", default=None, help="HOST:PORT of the control service (default: this machine's head).")
def status(address: str | None) -> None:
    """Show the cluster's nodes, resource use and object store use."""
    from ember.rpc.sync_client import gcs_request

    address, token = _address_and_token(address)
    try:
        nodes = gcs_request(address, token, "get_nodes")
    except Exception as exc:
        raise click.ClickException(f"cannot reach the cluster at {address}: {exc}") from exc
    alive = [n for n in nodes if n["Alive"]]
    dead = [n for n in nodes if not n["Alive"]]
    click.echo(f"======== Cluster status ({address}) ========")
    click.echo(f"Nodes: {len(alive)} alive, {len(dead)} dead")
    for n in alive:
        role = " (head)" if n.get("IsHead") else ""
        click.echo(f"  {n['NodeID'][:12]}  {n['NodeManagerAddress']}:{n['NodeManagerPort']}{role}")
    for n in dead:
        click.echo(f"  {n['NodeID'][:12]}  DEAD: {n.get('DeathReason', '')}")
    totals: dict[str, float] = {}
    avail: dict[str, float] = {}
    for n in alive:
        for k, v in n["Resources"].items():
            totals[k] = totals.get(k, 0) + v
        for k, v in n["AvailableResources"].items():
            avail[k] = avail.get(k, 0) + v
    click.echo("Resources (used / total):")
    for name in sorted(totals):
        if name.startswith("node:"):
            continue
        used = totals[name] - avail.get(name, 0)
        if name in ("memory", "object_store_memory"):
            click.echo(f"  {_fmt_bytes(used)} / {_fmt_bytes(totals[name])} {name}")
        else:
            click.echo(f"  {used:g} / {totals[name]:g} {name}")
    store_used = sum(n["ObjectStoreUsed"] for n in alive)
    store_cap = sum(n["ObjectStoreCapacity"] for n in alive)
    store_objs = sum(n["ObjectStoreObjects"] for n in alive)
    pct = 100.0 * store_used / store_cap if store_cap else 0.0
    fallback = sum(n.get("ObjectStoreFallback", 0) for n in alive)
    fallback_objs = sum(n.get("ObjectStoreFallbackObjects", 0) for n in alive)
    click.echo(f"Object store: {_fmt_bytes(store_used)} / {_fmt_bytes(store_cap)} used ({pct:.1f}%), {store_objs} objects")
    if fallback_objs:
        click.echo(f"  + {_fmt_bytes(fallback)} in {fallback_objs} fallback file(s) on disk (objects larger than the store could take)")
    try:
        demand = gcs_request(address, token, "get_cluster_demand")
        autoscaler = gcs_request(address, token, "get_autoscaler_status")
    except Exception as exc:
        raise click.ClickException(f"cannot read the cluster's demand at {address}: {exc}") from exc
    from ember.autoscaler.status import format_status, status_document

    # Ray's `ray status` view: nodes per type, pending and failed launches, demands, autoscaler events.
    click.echo("")
    click.echo(format_status(status_document(nodes, demand, autoscaler)))


@main.command()
@click.option("--address", default=None, help="HOST:PORT of the control service (default: this machine's head).")
def memory(address: str | None) -> None:
    """List every object reference in the cluster by node and owner, with totals."""
    from ember.cli.memory_report import collect, format_report

    address, token = _address_and_token(address)
    try:
        nodes, tables = collect(address, token)
    except Exception as exc:
        raise click.ClickException(f"cannot reach the cluster at {address}: {exc}") from exc
    click.echo(format_report(nodes, tables))


@main.command()
@click.option("--filter", "name_filter", default=None, help="Only run benchmarks whose name contains this.")
@click.option("--duration", default=2.0, show_default=True, type=float, help="Seconds per benchmark.")
def microbenchmark(name_filter: str | None, duration: float) -> None:
    """Run Ray's core microbenchmarks against a fresh local cluster."""
    from ember.bench import microbenchmark as bench

    names = [bench.INIT_TO_FIRST_RESULT, bench.CROSS_NODE_TRANSFER, *bench.WORKLOAD_NAMES]
    if not any(bench.selected(name, name_filter) for name in names):
        listing = "\n  ".join(names)
        raise click.ClickException(f"no benchmark name contains {name_filter!r}; the benchmarks are:\n  {listing}")
    bench.run_all(name_filter=name_filter, duration=duration)

