"""``ember.init`` / ``ember.shutdown``: start or join a cluster from a driver."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from ember._private import collector, runtime, session
from ember._private.node import NodeProcesses, start_head
from ember._private.processes import raise_fd_limit

if TYPE_CHECKING:
    from ember.core.worker import CoreWorker

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_local_nodes: NodeProcesses | None = None
_atexit_registered = False
#: The driver's garbage-collector thresholds before ``init`` raised them (see _private/collector.py).
_gc_before: collector.Thresholds | None = None


class RayContext(dict):  # type: ignore[type-arg]
    """What ``init`` returns: address information, usable as a context manager."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info)
        self.address_info = info
        self.dashboard_url = info.get("webui_url")

    def __enter__(self) -> RayContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()

    def disconnect(self) -> None:
        shutdown()


def _resolve_address(address: str | None) -> str | None:
    if address is None:
        address = os.environ.get("EMBER_ADDRESS") or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "", "local"):
        return None
    if address == "auto":
        # As in Ray, the environment names the cluster first (a submitted job's driver gets it).
        env_address = os.environ.get("EMBER_ADDRESS") or os.environ.get("RAY_ADDRESS")
        if env_address and env_address not in ("auto", "local") and "://" not in env_address:
            return env_address
        info = session.read_current_cluster()
        if info is None:
            raise ConnectionError(
                "Could not find a running Ember cluster on this machine (address='auto'). "
                "Start one with `ember start --head`, or call ember.init() without an address "
                "to start a local cluster."
            )
        return str(info["gcs_address"])
    if address.startswith("ember://") or address.startswith("ray://"):
        address = address.split("://", 1)[1]
    return address


def _driver_sys_path() -> list[str]:
    paths = []
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file:
        paths.append(os.path.dirname(os.path.abspath(main_file)))
    paths.append(os.getcwd())
    for entry in sys.path:
        if entry and os.path.isdir(entry) and "site-packages" not in entry and "lib/python" not in entry:
            paths.append(os.path.abspath(entry))
    seen: list[str] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    include_dashboard: bool | None = None,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    logging_level: int | str = logging.INFO,
    _node_ip_address: str | None = None,
    _token: str | None = None,
    _metrics_export_port: int | None = None,
    **kwargs: Any,
) -> RayContext:
    """Start a local cluster, or connect to a running one.

    Args:
        address: None to start a local cluster (or join the one named by
            ``EMBER_ADDRESS``), ``"auto"`` for the cluster started on this
            machine by ``ember start``, or ``"HOST:PORT"`` of a control service.
        num_cpus, num_gpus, resources, object_store_memory: the local node's
            resources (only when starting a local cluster).
        namespace: the namespace of this job (default: an anonymous one).
        ignore_reinit_error: make a second ``init`` a no-op instead of an error.
        log_to_driver: print workers' output in this terminal.
        runtime_env: the job's runtime environment, the default of every task and actor
            it starts (merged with a submitted job's, ``EMBER_JOB_RUNTIME_ENV``). Local
            ``working_dir`` / ``py_modules`` folders are uploaded now.
        include_dashboard: start the head's HTTP server with a local cluster (default: when
            aiohttp is installed); its address is ``.dashboard_url`` of the result.
        dashboard_host, dashboard_port: where it listens (default 127.0.0.1:8265, or the
            next free port).
    """
    global _local_nodes, _atexit_registered
    allowed_ignored = {"configure_logging", "log_style", "_temp_dir", "_system_config", "local_mode", "job_config", "_enable_object_reconstruction", "_plasma_directory", "storage", "_memory"}
    unknown = set(kwargs) - allowed_ignored
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    from ember.api.job_config import JobConfig, validate_namespace

    job_config = kwargs.get("job_config")
    if job_config is not None and not isinstance(job_config, JobConfig):
        raise TypeError(f"job_config= must be an ember.job_config.JobConfig, got {type(job_config).__name__}")
    if namespace is not None:
        validate_namespace(namespace)
    elif job_config is not None:
        namespace = job_config.ray_namespace
    if runtime_env is None and job_config is not None and job_config.runtime_env:
        runtime_env = job_config.runtime_env
    with _lock:
        if runtime.core_worker_or_none() is not None:
            if ignore_reinit_error:
                return RayContext(_context_info())
            raise RuntimeError(
                "Maybe you called ember.init twice by accident? This error can be suppressed by "
                "passing ignore_reinit_error=True, or call ember.shutdown() first."
            )
        from ember.runtime_env.resolve import job_env

        job_runtime_env = job_env(runtime_env)  # a malformed env fails here, before anything starts
        gcs_address = _resolve_address(address)
        # A driver holds a connection per actor it calls (and its daemons inherit the limit).
        raise_fd_limit()
        if gcs_address is not None and any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory)):
            raise ValueError(
                "When connecting to an existing cluster, num_cpus, num_gpus, resources and "
                "object_store_memory cannot be given: they are set when the cluster's nodes start."
            )
        node_ip = _node_ip_address or "127.0.0.1"
        if gcs_address is None:
            nodes = start_head(
                node_ip=node_ip, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                object_store_memory=object_store_memory, parent_pid=os.getpid(),
                metrics_export_port=_metrics_export_port or 0,
                include_dashboard=_want_dashboard(include_dashboard), dashboard_host=dashboard_host,
                dashboard_port=8265 if dashboard_port is None else int(dashboard_port),
                defer_dashboard=True,
            )
            _local_nodes = nodes
            token = nodes.token
            raylet_address = nodes.raylet_address
            gcs_address = nodes.gcs_address
        else:
            token, raylet_address = _join_existing(gcs_address, _token)
            if _node_ip_address is None:
                # Other nodes' workers call this driver (the owner of its objects): listen on
                # the address that reaches the cluster, not on 127.0.0.1.
                node_ip = _local_ip_towards(gcs_address)
        # Imported only now: a local cluster's daemons start up while this driver loads its
        # runtime (~85 ms), instead of after it.
        from ember.core import metrics_recorder
        from ember.core.worker import DRIVER, CoreWorker

        worker = CoreWorker(
            DRIVER, gcs_address=gcs_address, raylet_address=raylet_address, token=token,
            node_ip=node_ip, namespace=namespace, log_to_driver=log_to_driver,
            job_config={"sys_path": _driver_sys_path(), "runtime_env": {}},
        )
        if job_config is not None:
            worker.default_actor_lifetime = job_config.default_actor_lifetime
            worker.job_config["metadata"] = dict(job_config.metadata)
        try:
            worker.start()
            if job_runtime_env:
                _set_job_runtime_env(worker, job_runtime_env)
            _wait_for_local_node(worker)
        except BaseException:
            worker.shutdown()
            if _local_nodes is not None:
                _local_nodes.stop()
                _local_nodes = None
            raise
        runtime.set_core_worker(worker)
        global _gc_before
        _gc_before = collector.raise_young_threshold()
        metrics_recorder.kick_if_used()
        if _local_nodes is not None:
            _local_nodes.start_deferred_dashboard()
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        info = _context_info()
        if _local_nodes is not None and info["webui_url"]:
            print(f"Started a local Ember cluster. View the dashboard at http://{info['webui_url']}", file=sys.stderr)
        return RayContext(info)


def _want_dashboard(include_dashboard: bool | None) -> bool:
    """Start the HTTP server? ``None``: when its dependency (aiohttp) is installed, as in Ray."""
    if include_dashboard is not None:
        return bool(include_dashboard)
    import importlib.util

    return importlib.util.find_spec("aiohttp") is not None


def _set_job_runtime_env(worker: CoreWorker, env: dict[str, Any]) -> None:
    """Upload the job env's local folders (once) and make it the parent env of this driver's tasks."""
    import json

    wire = worker.renv.resolve_job_env(env)
    worker.job_config["runtime_env"] = wire
    worker.gcs_call("kv_put", {"ns": "job", "key": worker.job_id, "value": json.dumps(worker.job_config).encode()})
    if (wire.get("config") or {}).get("eager_install", True) and worker.renv.parent_key:
        # As Ray's eager_install (on this driver's node): the env is built while the driver
        # gets going, not when its first task asks for a worker.
        worker.loop.call_soon_threadsafe(worker.raylet.notify, "prepare_runtime_env", [worker.renv.parent_key, wire])


def _wait_for_local_node(worker: CoreWorker) -> None:
    """Return once this driver's node is in the control service's node table.

    The node daemon serves its socket before it registers, so without this
    ``nodes()`` or ``cluster_resources()`` right after ``init`` could miss it
    (Ray's ``init`` returns with the local node registered too).
    """
    import time

    from ember._private.config import config

    node_hex = worker.node_id.hex()
    deadline = time.monotonic() + config().connect_timeout_s
    delay = 0.001
    while True:
        if any(n["NodeID"] == node_hex and n["Alive"] for n in worker.gcs_call("get_nodes", None)):
            return
        if time.monotonic() > deadline:
            raise ConnectionError(
                f"The node daemon {node_hex[:12]} did not register with the control service at "
                f"{worker.gcs_address} within {config().connect_timeout_s:g}s; see its log in "
                f"{os.path.join(worker.session_dir, 'logs')}."
            )
        time.sleep(delay)  # polling the node table: registration sends this process no event
        delay = min(delay * 2, 0.05)


def _local_ip_towards(address: str) -> str:
    """This machine's address on the route to ``address`` (no packet is sent)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host.strip("[]"), int(port)))
            return str(sock.getsockname()[0])
    except (OSError, ValueError):
        return "127.0.0.1"


def _join_existing(gcs_address: str, token: str | None) -> tuple[str, str]:
    """The cluster token and this machine's node daemon address for a running cluster."""
    import asyncio

    from ember._private.config import config
    from ember.rpc import connect

    token = session.cluster_token(gcs_address, token)

    async def query() -> list[dict[str, Any]]:
        conn = await connect(gcs_address, token, timeout=config().connect_timeout_s)
        try:
            nodes: list[dict[str, Any]] = await conn.call("get_nodes", None)
            return nodes
        finally:
            conn.close()

    loop = asyncio.new_event_loop()
    try:
        nodes = loop.run_until_complete(query())
    except Exception as exc:
        raise ConnectionError(f"Could not connect to the Ember cluster at {gcs_address}: {exc}") from exc
    finally:
        loop.close()
    alive = [n for n in nodes if n["Alive"]]
    if not alive:
        raise ConnectionError(f"The cluster at {gcs_address} has no live nodes.")
    # This machine's node daemon: the one at our address on the route to the head first
    # (a driver on another machine must not use the head's store), then loopback, then the head.
    preferred = [_local_ip_towards(gcs_address), "127.0.0.1", "localhost", gcs_address.rsplit(":", 1)[0]]
    chosen = next((n for ip in preferred for n in alive if n["NodeManagerAddress"] == ip), alive[0])
    return token, f"{chosen['NodeManagerAddress']}:{chosen['NodeManagerPort']}"


def _dashboard_url(worker: CoreWorker) -> str | None:
    """``host:port`` of the cluster's HTTP server: ours, else the control service's record."""
    if _local_nodes is not None:
        return _local_nodes.dashboard_url or None
    from ember.exceptions import RaySystemError

    try:
        url = worker.gcs_call("cluster_info", None).get("dashboard_url")
    except RaySystemError as exc:  # an unreachable control service: no URL, not a failed init
        logger.debug("cannot read the dashboard address: %s", exc)
        return None
    return str(url) if url else None


def _context_info() -> dict[str, Any]:
    worker = runtime.core_worker()
    return {
        "node_ip_address": worker.node_ip,
        "raylet_ip_address": worker.node_ip,
        "address": worker.gcs_address,
        "gcs_address": worker.gcs_address,
        "session_dir": worker.session_dir,
        "node_id": worker.node_id.hex(),
        "webui_url": _dashboard_url(worker),
        "job_id": worker.job_id.hex(),
    }


def shutdown(_exiting_interpreter: bool = False) -> None:
    """Disconnect this driver and stop every process ``init`` started."""
    global _local_nodes, _gc_before
    with _lock:
        worker = runtime.core_worker_or_none()
        if worker is not None:
            runtime.set_core_worker(None)
            worker.shutdown()
            collector.restore_threshold(_gc_before)
            _gc_before = None
        if _local_nodes is not None:
            nodes, _local_nodes = _local_nodes, None
            nodes.stop()


def is_initialized() -> bool:
    return runtime.core_worker_or_none() is not None
