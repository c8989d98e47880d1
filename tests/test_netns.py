"""Nodes in separate Linux network namespaces: nothing may assume 127.0.0.1.

The head (control service + node daemon) listens on 10.77.N.1, the host end
of a veth pair in the root namespace; a second node daemon runs inside the
namespace ``embns<pid>`` at 10.77.N.2, started with
``ip netns exec ... ember start --address 10.77.N.1:PORT --node-ip-address 10.77.N.2``.
The two can reach each other only through the veth pair, so every address
that is handed around (daemons, workers, drivers as owners, object transfer
ports) must be a routable one.

Needs root and ``ip netns``; skipped otherwise. Each test ends every process
it started by pid (the namespace's own process list included) and removes
the namespace and the veth pair, even when it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import ember
from ember._private.config import reset_config
from ember._private.processes import pid_alive, stop_pid
from ember._private.test_utils import wait_for_condition
from ember.cluster_utils import Cluster
from ember.rpc.sync_client import gcs_request

MiB = 1024 * 1024
STORE = 300 * MiB
KNOBS = {"EMBER_resource_report_period_s": "0.1"}
QUICK_DEATH = {"EMBER_node_death_timeout_s": "2"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux-only")


# ============================================================================ namespace plumbing
def _ip_available() -> bool:
    if shutil.which("ip") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "iproute2"], capture_output=True, timeout=300)
    return shutil.which("ip") is not None


def _run(*cmd: str) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _pids_in_namespace(ns: str) -> list[int]:
    try:
        return [int(p) for p in _run("ip", "netns", "pids", ns).split()]
    except RuntimeError:
        return []


@dataclass
class NetnsCluster:
    ns: str
    host_if: str
    peer_if: str
    head_ip: str
    node_ip: str
    tmpdir: str
    cluster: Cluster | None = None
    node_entry: dict[str, Any] = field(default_factory=dict)

    node_id: str = ""

    def in_ns(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``python args...`` inside the namespace (ended by pid on timeout)."""
        cmd = ["ip", "netns", "exec", self.ns, sys.executable, *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "EMBER_TMPDIR": self.tmpdir, **(env or {})})
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"{' '.join(args)[:80]} timed out:\n{out}\n{err}") from None
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def netns_cluster(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[NetnsCluster]:
    """A head in the root namespace and one node daemon in a fresh namespace; all torn down by pid.

    Parametrize indirectly with ``{"quick_death": True}`` for a 2 s node death timeout.
    """
    knobs = {**KNOBS, **(QUICK_DEATH if getattr(request, "param", {}).get("quick_death") else {})}
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if not _ip_available():
        pytest.skip("the `ip` tool (iproute2) is not available")
    tag = os.getpid() % 100000
    subnet = 10 + os.getpid() % 240
    env = NetnsCluster(
        ns=f"embns{tag}", host_if=f"evh{tag}", peer_if=f"evn{tag}", head_ip=f"10.77.{subnet}.1", node_ip=f"10.77.{subnet}.2",
        tmpdir=str(tmp_path / "ns_tmp"),
    )
    os.makedirs(env.tmpdir)
    try:
        _run("ip", "netns", "add", env.ns)
    except RuntimeError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    saved = {key: os.environ.get(key) for key in knobs}
    try:
        peer = env.peer_if
        _run("ip", "link", "add", env.host_if, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", env.ns)
        _run("ip", "addr", "add", f"{env.head_ip}/24", "dev", env.host_if)
        _run("ip", "link", "set", env.host_if, "up")
        _run("ip", "netns", "exec", env.ns, "ip", "addr", "add", f"{env.node_ip}/24", "dev", peer)
        _run("ip", "netns", "exec", env.ns, "ip", "link", "set", peer, "up")
        _run("ip", "netns", "exec", env.ns, "ip", "link", "set", "lo", "up")
        os.environ.update(knobs)
        reset_config()

        env.cluster = Cluster(initialize_head=False, shutdown_at_exit=False)
        env.cluster.add_node(num_cpus=1, object_store_memory=STORE, node_ip_address=env.head_ip)
        proc = env.in_ns(
            "-m", "ember.cli", "start", "--address", env.cluster.address, "--node-ip-address", env.node_ip,
            "--token", env.cluster.token, "--num-cpus", "1", "--resources", json.dumps({"ns_node": 1}),
            "--object-store-memory", str(STORE),
        )
        started_file = os.path.join(env.tmpdir, "ember_started.json")
        if os.path.exists(started_file):
            with open(started_file) as f:
                entries = json.load(f)
            env.node_entry = entries[-1] if entries else {}
        assert proc.returncode == 0, f"ember start in the namespace failed:\n{proc.stdout}\n{proc.stderr}"
        rows = gcs_request(env.cluster.address, env.cluster.token, "get_nodes")
        env.node_id = next(n["NodeID"] for n in rows if n["NodeManagerAddress"] == env.node_ip and n["Alive"])
        yield env
    finally:
        try:
            if ember.is_initialized():
                ember.shutdown()
        finally:
            # The namespaced node: its daemon, then anything else still running in the namespace.
            for pid in (env.node_entry.get("pids") or {}).values():
                stop_pid(pid, 5.0)
            for pid in _pids_in_namespace(env.ns):
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            wait_for_condition(lambda: not _pids_in_namespace(env.ns), timeout=10)
            if env.node_entry.get("store_dir"):
                shutil.rmtree(env.node_entry["store_dir"], ignore_errors=True)
            if env.cluster is not None:
                env.cluster.shutdown()
            subprocess.run(["ip", "netns", "del", env.ns], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", env.host_if], capture_output=True, timeout=30)  # gone with the namespace, normally
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            reset_config()


# ============================================================================ remote code
@ember.remote
def where() -> str:
    return ember.get_runtime_context().get_node_id()


@ember.remote(resources={"ns_node": 1})
def produce(n: int) -> tuple[np.ndarray, str]:
    return np.arange(n, dtype=np.int64), ember.get_runtime_context().get_node_id()


@ember.remote(resources={"ns_node": 1})
def sum_refs(refs: list[Any]) -> int:
    return sum(int(ember.get(r).sum()) for r in refs)


@ember.remote(resources={"ns_node": 1})
def put_there(n: int) -> list[Any]:
    return [ember.put(np.full(n, 7, dtype=np.int64))]


@ember.remote(resources={"ns_node": 1})
class NsActor:
    def __init__(self) -> None:
        self.total = 0

    def add(self, x: np.ndarray) -> int:
        self.total += int(x.sum())
        return self.total

    def where(self) -> tuple[str, str]:
        worker = ember.get_runtime_context().worker
        return ember.get_runtime_context().get_node_id(), worker.node_ip


def _mapped_file(address: int) -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5] if len(parts) > 5 else ""
    return ""


# ============================================================================ tests
def test_driver_uses_a_node_in_another_network_namespace(netns_cluster):
    env = netns_cluster
    assert env.cluster is not None
    head = env.cluster.head_node
    assert head is not None
    ember.init(address=env.cluster.address, _token=env.cluster.token)

    rows = {n["NodeID"]: n for n in ember.nodes()}
    assert rows[head.node_id]["NodeManagerAddress"] == env.head_ip
    assert rows[env.node_id]["NodeManagerAddress"] == env.node_ip
    assert rows[env.node_id]["Alive"] and rows[env.node_id]["Resources"]["ns_node"] == 1
    assert rows[env.node_id]["Resources"][f"node:{env.node_ip}"] == 1
    # The driver joined from the root namespace: it listens where the other node can reach it.
    assert ember.get_runtime_context().worker.address[0] == env.head_ip

    # A large value made in the namespace, read here through the object transfer port.
    n = 32 * MiB // 8
    ref = produce.remote(n)
    array, node = ember.get(ref, timeout=120)
    assert node == env.node_id
    assert np.array_equal(array, np.arange(n, dtype=np.int64))
    assert not array.flags.writeable
    assert _mapped_file(array.ctypes.data).startswith(head.store_dir)

    # Refs owned by the driver, borrowed in the namespace (the owner is called back over the veth).
    mine = [ember.put(np.ones(MiB, dtype=np.int64)), ember.put(np.arange(10))]
    assert ember.get(sum_refs.remote(mine), timeout=120) == MiB + 45
    # A ref owned by a worker in the namespace, read here.
    [theirs] = ember.get(put_there.remote(MiB), timeout=120)
    assert int(ember.get(theirs, timeout=120).sum()) == 7 * MiB

    # An actor there, called with a large argument that lives here.
    actor = NsActor.remote()
    assert ember.get(actor.where.remote(), timeout=120) == (env.node_id, env.node_ip)
    assert ember.get(actor.add.remote(mine[0]), timeout=120) == MiB
    # node:<ip> routes there too.
    assert ember.get(where.options(resources={f"node:{env.node_ip}": 0.01}).remote(), timeout=60) == env.node_id
    assert ember.get(where.options(resources={f"node:{env.head_ip}": 0.01}).remote(), timeout=60) == head.node_id
    del array


_DRIVER_IN_NS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import ember

    head_ip = sys.argv[3]
    ember.init(address=sys.argv[1], _token=sys.argv[2])

    @ember.remote(resources={"node:" + head_ip: 0.01})
    def on_head(n):
        return np.arange(n, dtype=np.int64), ember.get_runtime_context().get_node_id()

    array, node = ember.get(on_head.remote(8 * 1024 * 1024), timeout=120)
    print(json.dumps({
        "driver_ip": ember.get_runtime_context().worker.address[0],
        "driver_node": ember.get_runtime_context().get_node_id(),
        "task_node": node,
        "ok": bool(np.array_equal(array, np.arange(8 * 1024 * 1024))),
        "writeable": bool(array.flags.writeable),
    }))
    ember.shutdown()
""")


def test_driver_inside_the_namespace_uses_the_head(netns_cluster):
    env = netns_cluster
    assert env.cluster is not None and env.cluster.head_node is not None
    proc = env.in_ns("-c", _DRIVER_IN_NS, env.cluster.address, env.cluster.token, env.head_ip)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "driver_ip": env.node_ip,  # it listens on its own namespace's address
        "driver_node": env.node_id,  # and uses the node daemon of its namespace
        "task_node": env.cluster.head_node.node_id,
        "ok": True,
        "writeable": False,
    }


@pytest.mark.parametrize("netns_cluster", [{"quick_death": True}], indirect=True)
def test_network_partition_marks_the_node_dead(netns_cluster):
    env = netns_cluster
    assert env.cluster is not None and env.cluster.head_node is not None
    ember.init(address=env.cluster.address, _token=env.cluster.token)
    assert ember.get(where.options(resources={"ns_node": 1}).remote(), timeout=60) == env.node_id

    # Cut the cable on the namespace's side: the daemon keeps running, unreachable.
    _run("ip", "netns", "exec", env.ns, "ip", "link", "set", env.peer_if, "down")

    def dead() -> str:
        row = next(n for n in ember.nodes() if n["NodeID"] == env.node_id)
        return "" if row["Alive"] else row["DeathReason"]

    reason = wait_for_condition(dead, timeout=30)
    assert "heartbeat" in reason
    assert "ns_node" not in ember.cluster_resources()
    assert ember.get(where.remote(), timeout=60) == env.cluster.head_node.node_id
