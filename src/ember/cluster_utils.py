"""``Cluster``: several node daemons on one machine, for tests (Ray's ``ray.cluster_utils``).

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker_node = cluster.add_node(num_cpus=2, resources={"gpu_box": 1})
    ember.init(address=cluster.address)
    ...
    cluster.remove_node(worker_node)
    cluster.shutdown()

Every process it starts is ended by ``shutdown`` (or ``remove_node``), by pid.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from ember._private import node as node_mod
from ember._private.processes import stop_pid
from ember.rpc.sync_client import live_nodes, wait_for_nodes

#: Ray's flag for platforms where several node daemons cannot run on one machine.
cluster_not_supported = os.name == "nt"


class ClusterNode:
    """One node daemon started by a ``Cluster``."""

    def __init__(self, processes: node_mod.NodeProcesses, is_head: bool) -> None:
        self.processes = processes
        self.is_head = is_head
        self.node_id = processes.node_id.hex()
        self.address = processes.raylet_address
        self.node_ip_address = processes.node_ip
        self.store_dir = processes.store_dir
        self.raylet_proc = next(p for name, p in processes.procs if name == "raylet")

    @property
    def unique_id(self) -> str:
        return self.node_id

    def kill_raylet(self, sig: int = 9) -> None:
        """Kill this node's daemon abruptly (its workers die with it)."""
        if self.raylet_proc.poll() is None:
            os.kill(self.raylet_proc.pid, sig)
            self.raylet_proc.wait()

    def __repr__(self) -> str:
        return f"ClusterNode({self.node_id[:12]}, head={self.is_head})"


class Cluster:
    def __init__(
        self,
        initialize_head: bool = False,
        connect: bool = False,
        head_node_args: dict[str, Any] | None = None,
        shutdown_at_exit: bool = True,
    ) -> None:
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self._head: node_mod.NodeProcesses | None = None
        self.address = ""
        self.token = ""
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()
        if shutdown_at_exit:
            import atexit

            atexit.register(self.shutdown)

    @property
    def gcs_address(self) -> str:
        return self.address

    @property
    def webui_url(self) -> str | None:
        """``host:port`` of the head's HTTP server (Ray's name), None without one."""
        return (self._head.dashboard_url or None) if self._head is not None else None

    dashboard_url = webui_url

    def connect(self, namespace: str | None = None) -> Any:
        import ember

        return ember.init(address=self.address, namespace=namespace, _token=self.token)

    def add_node(
        self,
        wait: bool = True,
        num_cpus: float | None = 1,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        object_store_memory: int | None = 100 * 1024 * 1024,
        node_ip_address: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        include_dashboard: bool = False,
        dashboard_host: str = "127.0.0.1",
        dashboard_port: int = 0,
        **kwargs: Any,
    ) -> ClusterNode:
        """Start a node daemon (the first one also starts the control service, and with
        ``include_dashboard`` the head's HTTP server, at ``webui_url``)."""
        if self._head is None:
            nodes = node_mod.start_head(
                node_ip=node_ip_address, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                object_store_memory=object_store_memory, parent_pid=os.getpid(), extra_env=env,
                include_dashboard=include_dashboard, dashboard_host=dashboard_host, dashboard_port=dashboard_port,
            )
            self._head = nodes
            self.address = nodes.gcs_address
            self.token = nodes.token
            node = ClusterNode(nodes, True)
            self.head_node = node
        else:
            nodes = node_mod.NodeProcesses(self._head.session_dir, self.token, node_ip_address, gcs_address=self.address)
            proc_env = {"EMBER_PARENT_PID": str(os.getpid()), **(env or {})}
            node_mod.start_raylet(
                nodes, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                object_store_memory=object_store_memory, env=proc_env,
            )
            node = ClusterNode(nodes, False)
            self.worker_nodes.append(node)
        if wait:
            self.wait_for_nodes()
        return node

    def list_all_nodes(self) -> list[ClusterNode]:
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stop a node daemon; ``allow_graceful=False`` kills it with SIGKILL."""
        if allow_graceful:
            stop_pid(node.raylet_proc.pid, 5.0, node.raylet_proc)
        else:
            node.kill_raylet()
        shutil.rmtree(node.store_dir, ignore_errors=True)
        if node in self.worker_nodes:
            self.worker_nodes.remove(node)
        elif node is self.head_node:
            self.head_node = None

    def wait_for_nodes(self, timeout: float = 30.0) -> None:
        """Wait until the control service sees exactly the nodes this cluster runs."""
        import time

        expected = len(self.list_all_nodes())
        deadline = time.monotonic() + timeout
        while True:
            # A control service that does not answer yet is starting (slow on a loaded machine):
            # asked again until the deadline, like a node that has not registered yet.
            alive = live_nodes(self.address, self.token, deadline)
            if alive is not None and len(alive) == expected:
                return
            if time.monotonic() > deadline:
                seen = "the control service did not answer" if alive is None else f"{len(alive)} nodes alive"
                raise TimeoutError(f"{seen}, expected {expected} within {timeout:g}s")
            time.sleep(0.05)

    def shutdown(self) -> None:
        """Disconnect a driver started through ``connect`` and stop every process."""
        import ember

        if ember.is_initialized():
            ember.shutdown()
        for node in list(self.worker_nodes):
            self.remove_node(node)
        if self._head is not None:
            self._head.stop()
            self._head = None
            self.head_node = None


__all__ = ["Cluster", "ClusterNode", "cluster_not_supported", "wait_for_nodes"]
