"""Starting the daemons of a node: the control service and/or a node daemon.

Used by ``ember.init()`` (daemons tied to the driver, ended with it) and by
``ember start`` (detached daemons recorded in the session's pid files).
Listening sockets are bound here and handed to the daemons, so their ports
are known before they run and clients can connect at once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ember._private import ids, session
from ember._private.config import config
from ember._private.processes import spawn, stop_pid


def total_memory_bytes() -> int:
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
            if raw != "max" and int(raw) < mem:
                mem = int(raw)
        except (OSError, ValueError):
            continue
    return mem


def default_object_store_memory() -> int:
    want = int(total_memory_bytes() * config().object_store_memory_fraction)
    try:
        st = os.statvfs(session.shm_root())
        shm = st.f_bavail * st.f_frsize
        want = min(want, int(shm * 0.9))
    except OSError:
        pass
    return max(want, 64 * 1024 * 1024)


def node_resources(
    num_cpus: float | None,
    num_gpus: float | None,
    resources: dict[str, float] | None,
    object_store_memory: int,
    node_ip: str,
    is_head: bool,
) -> dict[str, float]:
    for name in ("CPU", "GPU"):
        if resources and name in resources:
            raise ValueError(f"Use num_{name.lower()}s= instead of resources={{'{name}': ...}}.")
    cpus = float(os.cpu_count() or 1) if num_cpus is None else float(num_cpus)
    if cpus < 0 or (num_gpus or 0) < 0:
        raise ValueError("num_cpus and num_gpus must not be negative")
    out: dict[str, float] = {"CPU": cpus}
    if num_gpus:
        out["GPU"] = float(num_gpus)
    out["memory"] = float(int(total_memory_bytes() * 0.7))
    out["object_store_memory"] = float(object_store_memory)
    out[f"node:{node_ip}"] = 1.0
    if is_head:
        out["node:__internal_head__"] = 1.0
    for name, value in (resources or {}).items():
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"resource {name!r} must be a non-negative number, got {value!r}")
        out[str(name)] = float(value)
    return out


def bind_listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}. Is another cluster running there?") from exc
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


@dataclass
class NodeProcesses:
    """The daemons this process started, and where their state lives."""

    session_dir: str
    token: str
    node_ip: str
    gcs_address: str = ""
    raylet_address: str = ""
    store_dir: str = ""
    node_id: bytes = b""
    #: ``host:port`` of the head's HTTP server ("" when none was started).
    dashboard_url: str = ""
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    #: The HTTP server's bound socket and start arguments while its start is deferred.
    _dashboard_pending: tuple[socket.socket, list[str], dict[str, str], bool] | None = None

    def start_deferred_dashboard(self) -> None:
        """Start the HTTP server whose start ``start_head(defer_dashboard=True)`` put off."""
        if self._dashboard_pending is None:
            return
        sock, common, env, detach = self._dashboard_pending
        self._dashboard_pending = None
        try:
            proc = spawn(
                [*common, "--listen-fd", str(sock.fileno())],
                log_path=os.path.join(self.session_dir, "logs", "dashboard.log"),
                env=env, pass_fds=[sock.fileno()], detach=detach,
            )
        finally:
            sock.close()
        self.procs.append(("dashboard", proc))
        session.write_pid_file(self.session_dir, "dashboard", proc.pid)

    def stop(self) -> None:
        """End the node daemon first (it ends its workers), then the control service."""
        timeout = config().process_stop_timeout_s
        if self._dashboard_pending is not None:
            self._dashboard_pending[0].close()
            self._dashboard_pending = None
        if any(name == "gcs" for name, _proc in self.procs):
            session.unregister_cluster(self.session_dir)
        for _name, proc in sorted(self.procs, key=lambda p: p[0] != "raylet"):
            stop_pid(proc.pid, timeout, proc)
        self.procs.clear()
        if self.store_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        return {
            "gcs_address": self.gcs_address,
            "raylet_address": self.raylet_address,
            "session_dir": self.session_dir,
            "node_ip": self.node_ip,
            "node_id": self.node_id.hex(),
            "store_dir": self.store_dir,
            "webui_url": self.dashboard_url or None,
        }


def start_head(
    *,
    node_ip: str = "127.0.0.1",
    port: int = 0,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    detach: bool = False,
    parent_pid: int | None = None,
    extra_env: dict[str, str] | None = None,
    storage: str | None = None,
    metrics_export_port: int = 0,
    link_latest: bool = True,
    include_dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int = 8265,
    defer_dashboard: bool = False,
) -> NodeProcesses:
    """Start a control service and one node daemon in a new session.

    ``storage`` is where the control service keeps its tables; detached heads
    (``ember start``) default to SQLite in the session folder so that a
    restarted control service resumes the cluster. ``session_latest`` points at
    the new session once its daemons are started (``link_latest=False``: the
    caller links it when it has seen them come up). A start that fails before
    any daemon runs removes the session folder. ``include_dashboard`` also starts the
    head's HTTP server on ``dashboard_host:dashboard_port`` (or the next free port);
    ``defer_dashboard`` only binds its socket, and ``nodes.start_deferred_dashboard()``
    starts it (``init`` does so once the driver is connected, so that the server's start-up
    does not compete with the cluster's).
    """
    session_dir = session.create_session_dir()
    try:
        nodes = _start_head_in(
            session_dir, node_ip=node_ip, port=port, num_cpus=num_cpus, num_gpus=num_gpus,
            resources=resources, object_store_memory=object_store_memory, detach=detach,
            parent_pid=parent_pid, extra_env=extra_env, storage=storage,
            metrics_export_port=metrics_export_port, include_dashboard=include_dashboard,
            dashboard_host=dashboard_host, dashboard_port=dashboard_port, defer_dashboard=defer_dashboard,
        )
    except BaseException:
        session.discard_session_dir(session_dir)
        raise
    if link_latest:
        session.link_latest(session_dir)
    return nodes


def _start_head_in(
    session_dir: str,
    *,
    node_ip: str,
    port: int,
    num_cpus: float | None,
    num_gpus: float | None,
    resources: dict[str, float] | None,
    object_store_memory: int | None,
    detach: bool,
    parent_pid: int | None,
    extra_env: dict[str, str] | None,
    storage: str | None,
    metrics_export_port: int,
    include_dashboard: bool,
    dashboard_host: str,
    dashboard_port: int,
    defer_dashboard: bool,
) -> NodeProcesses:
    if storage is None:
        storage = f"sqlite:///{os.path.join(session_dir, 'gcs.sqlite')}" if detach else "memory://"
    token = session.create_token(session_dir)
    nodes = NodeProcesses(session_dir, token, node_ip)
    gcs_sock = bind_listener(node_ip, port)
    try:
        nodes.gcs_address = f"{node_ip}:{gcs_sock.getsockname()[1]}"
        env = dict(extra_env or {})
        if parent_pid:
            env["EMBER_PARENT_PID"] = str(parent_pid)
        logs = os.path.join(session_dir, "logs")
        port = gcs_sock.getsockname()[1]
        restart = ["-m", "ember.gcs", "--session-dir", session_dir, "--host", node_ip, "--port", str(port), "--storage", storage]
        with open(os.path.join(session_dir, "gcs_restart_args.json"), "w") as f:
            json.dump(restart, f)
        gcs = spawn(
            ["-m", "ember.gcs", "--session-dir", session_dir, "--listen-fd", str(gcs_sock.fileno()), "--storage", storage],
            log_path=os.path.join(logs, "gcs_server.log"), env=env, pass_fds=[gcs_sock.fileno()], detach=detach,
        )
        nodes.procs.append(("gcs", gcs))
        session.register_cluster(nodes.gcs_address, session_dir)
        session.write_pid_file(session_dir, "gcs", gcs.pid)
    finally:
        gcs_sock.close()
    try:
        start_raylet(
            nodes, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
            object_store_memory=object_store_memory, detach=detach, env=env, is_head=True,
            metrics_export_port=metrics_export_port,
        )
        if include_dashboard:
            start_dashboard(nodes, dashboard_host, dashboard_port, detach=detach, env=env)
            if not defer_dashboard:
                nodes.start_deferred_dashboard()
    except BaseException:
        nodes.stop()
        raise
    return nodes


def start_raylet(
    nodes: NodeProcesses,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    detach: bool = False,
    env: dict[str, str] | None = None,
    is_head: bool = False,
    port: int = 0,
    metrics_export_port: int = 0,
) -> None:
    """Start a node daemon; ``metrics_export_port`` is its Prometheus port (0: a free one)."""
    store = int(object_store_memory) if object_store_memory else default_object_store_memory()
    if store <= 0:
        raise ValueError("object_store_memory must be positive")
    all_resources = node_resources(num_cpus, num_gpus, resources, store, nodes.node_ip, is_head)
    node_id = ids.random_unique_id()
    nodes.node_id = node_id
    nodes.store_dir = session.object_store_dir(os.path.basename(nodes.session_dir), node_id.hex())
    sock = bind_listener(nodes.node_ip, port)
    try:
        metrics_sock = bind_listener(nodes.node_ip, metrics_export_port)
    except OSError:
        sock.close()
        raise
    try:
        nodes.raylet_address = f"{nodes.node_ip}:{sock.getsockname()[1]}"
        args = [
            "-m", "ember.raylet",
            "--session-dir", nodes.session_dir,
            "--gcs-address", nodes.gcs_address,
            "--node-ip", nodes.node_ip,
            "--listen-fd", str(sock.fileno()),
            "--resources", json.dumps(all_resources),
            "--object-store-memory", str(store),
            "--store-dir", nodes.store_dir,
            "--node-id", node_id.hex(),
            "--metrics-listen-fd", str(metrics_sock.fileno()),
        ]
        if is_head:
            args.append("--head")
        proc = spawn(
            args, log_path=os.path.join(nodes.session_dir, "logs", f"raylet-{node_id.hex()[:12]}.log"),
            env=env, pass_fds=[sock.fileno(), metrics_sock.fileno()], detach=detach,
        )
        nodes.procs.append(("raylet", proc))
        session.write_pid_file(nodes.session_dir, f"raylet-{node_id.hex()[:12]}", proc.pid)
    finally:
        sock.close()
        metrics_sock.close()


#: How many ports after a taken dashboard port are tried (Ray moves to a free port too).
DASHBOARD_PORT_TRIES = 100


def bind_free_port(host: str, port: int, tries: int = DASHBOARD_PORT_TRIES) -> socket.socket:
    """Bind ``port``, or the next free one above it (``port=0``: any free port)."""
    last: OSError | None = None
    for candidate in [0] if port == 0 else range(port, min(port + tries, 65536)):
        try:
            return bind_listener(host, candidate)
        except OSError as exc:
            last = exc
    raise OSError(f"no free port for the dashboard on {host} from {port} to {port + tries - 1}: {last}")


def start_dashboard(
    nodes: NodeProcesses, host: str, port: int, *, detach: bool = False, env: dict[str, str] | None = None,
) -> None:
    """Bind the head's HTTP server's socket and prepare its start (``nodes.start_deferred_dashboard``).

    The server (``python -m ember.dashboard``) runs in a process of its own. Its socket is
    bound here, so ``nodes.dashboard_url`` is right before it runs and early requests wait in
    the socket's backlog; ``dashboard_restart_args.json`` is how a restarted control service
    brings it back.
    """
    sock = bind_free_port(host, port)
    bound = sock.getsockname()[1]
    nodes.dashboard_url = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    common = ["-m", "ember.dashboard", "--session-dir", nodes.session_dir, "--gcs-address", nodes.gcs_address,
              "--host", host]
    try:
        with open(os.path.join(nodes.session_dir, "dashboard_restart_args.json"), "w") as f:
            json.dump([*common, "--port", str(bound)], f)
        session.write_dashboard_url(nodes.session_dir, nodes.dashboard_url)
    except BaseException:
        sock.close()
        raise
    nodes._dashboard_pending = (sock, common, dict(env or {}), detach)


def restart_dashboard_if_gone(session_dir: str) -> int | None:
    """Start the head's HTTP server again if it was started once and is not running; its pid.

    Called by a restarted control service ("the HTTP server restarts with the head").
    """
    from ember._private.processes import pid_alive

    path = os.path.join(session_dir, "dashboard_restart_args.json")
    try:
        with open(path) as f:
            args = json.load(f)
    except (OSError, ValueError):
        return None
    pid = session.read_pid_files(session_dir).get("dashboard")
    if pid is not None and pid_alive(pid):
        return None
    proc = spawn(args, log_path=os.path.join(session_dir, "logs", "dashboard.log"), detach=True)
    session.write_pid_file(session_dir, "dashboard", proc.pid)
    return proc.pid
