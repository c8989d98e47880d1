"""``provider: {type: fake_multinode}``: worker nodes as node daemons on this machine (Ray's name).

Each node is a real node daemon (``python -m ember.raylet``, with its fork server and
workers) started like ``ember start --address``: it joins the head's control service
with the cluster token and has the node type's ``resources``. The provider records its
nodes in ``<session>/autoscaler/fake_multinode.json`` (pid, node id, tags), so that a
restarted autoscaler and ``ember down`` find them, and ends them by pid (a pid is ended
only while its command line still names the node's id: a recycled pid is left alone).

Needs ``gcs_address`` and ``session_dir`` in the provider config (the autoscaler fills
them in from the head it runs on).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from typing import Any

from ember._private import session
from ember._private.config import config
from ember._private.processes import pid_alive, stop_pid
from ember.autoscaler.node_provider import TAG_NODE_ID, NodeProvider
from ember.exceptions import NodeProviderError

STATE_FILE = "fake_multinode.json"


def state_path(session_dir: str) -> str:
    return os.path.join(session_dir, "autoscaler", STATE_FILE)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class FakeMultiNodeProvider(NodeProvider):
    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        try:
            self.session_dir = str(provider_config["session_dir"])
            self.gcs_address = str(provider_config["gcs_address"])
        except KeyError as exc:
            raise NodeProviderError(f"the fake_multinode provider needs {exc.args[0]} in its provider config") from exc
        self.node_ip = str(provider_config.get("node_ip", "127.0.0.1"))
        self._lock = threading.Lock()
        #: Node daemons started by this process (reaped when they end).
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        os.makedirs(os.path.dirname(state_path(self.session_dir)), exist_ok=True)

    # ------------------------------------------------------------------ state
    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(state_path(self.session_dir)) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, nodes: dict[str, dict[str, Any]]) -> None:
        path = state_path(self.session_dir)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(nodes, f)
        os.replace(tmp, path)

    def _running(self, provider_id: str, record: dict[str, Any]) -> bool:
        proc = self._procs.get(provider_id)
        if proc is not None:
            return proc.poll() is None
        return pid_alive(record["pid"]) and record["node_id"] in _cmdline(record["pid"])

    # ------------------------------------------------------------------ interface
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        with self._lock:
            nodes = self._load()
            gone = [pid for pid, record in nodes.items() if not self._running(pid, record)]
            for provider_id in gone:  # a node daemon that died is terminated
                self._forget(nodes, provider_id)
            if gone:
                self._save(nodes)
            return [pid for pid, record in nodes.items()
                    if all(record["tags"].get(k) == v for k, v in tag_filters.items())]

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        return self.create_node_with_resources_and_labels(node_config, tags, count, {}, {})

    def create_node_with_resources_and_labels(self, node_config: dict[str, Any], tags: dict[str, str], count: int,
                                              resources: dict[str, float], labels: dict[str, str]) -> dict[str, Any]:
        from ember._private import node as node_mod

        token = session.read_token(self.session_dir)
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "object_store_memory")}
        store = int(resources.get("object_store_memory") or node_config.get("object_store_memory")
                    or config().autoscaler_fake_node_object_store_bytes)
        created: dict[str, Any] = {}
        for _ in range(count):
            nodes = node_mod.NodeProcesses(self.session_dir, token, self.node_ip, gcs_address=self.gcs_address)
            try:
                node_mod.start_raylet(nodes, num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU"),
                                      resources=custom, object_store_memory=store, detach=True)
            except (OSError, ValueError) as exc:
                raise NodeProviderError(f"could not start a node daemon: {exc}") from exc
            proc = nodes.procs[-1][1]
            node_id = nodes.node_id.hex()
            provider_id = f"fake-{node_id[:16]}"
            record = {"pid": proc.pid, "node_id": node_id, "tags": {**tags, TAG_NODE_ID: node_id},
                      "ip": self.node_ip, "store_dir": nodes.store_dir, "created": time.time()}
            with self._lock:
                self._procs[provider_id] = proc
                state = self._load()
                state[provider_id] = record
                self._save(state)
            created[provider_id] = record
        return created

    def terminate_node(self, node_id: str) -> None:
        with self._lock:
            nodes = self._load()
            record = nodes.get(node_id)
            if record is None:
                return
            proc = self._procs.get(node_id)
            if proc is not None or self._running(node_id, record):
                stop_pid(record["pid"], config().process_stop_timeout_s, proc)
            self._forget(nodes, node_id)
            self._save(nodes)

    def _forget(self, nodes: dict[str, dict[str, Any]], provider_id: str) -> None:
        record = nodes.pop(provider_id)
        proc = self._procs.pop(provider_id, None)
        if proc is not None:
            proc.poll()  # reap it
        if record.get("store_dir"):
            shutil.rmtree(record["store_dir"], ignore_errors=True)
        try:
            os.unlink(os.path.join(self.session_dir, "pids", f"raylet-{record['node_id'][:12]}.pid"))
        except OSError:
            pass

    def node_tags(self, node_id: str) -> dict[str, str]:
        return dict(self._load().get(node_id, {}).get("tags", {}))

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with self._lock:
            nodes = self._load()
            if node_id in nodes:
                nodes[node_id]["tags"].update(tags)
                self._save(nodes)

    def internal_ip(self, node_id: str) -> str:
        return str(self._load().get(node_id, {}).get("ip", self.node_ip))

    def pid_of(self, node_id: str) -> int | None:
        record = self._load().get(node_id)
        return int(record["pid"]) if record else None
