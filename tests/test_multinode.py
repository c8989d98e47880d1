"""Several node daemons on this machine (``ember.cluster_utils.Cluster``).

Membership (``ember.nodes()``), routing by custom resources, ``SPREAD``, node
affinity, the hybrid default policy, cross-node objects and arguments,
fractional and ``node:<ip>`` resources, infeasible requests, and node deaths
(SIGKILL and a frozen daemon) with task retries and actor restarts.

Every test starts its own small cluster (1-2 CPUs per node) through the
``make_cluster`` fixture, which sets ``EMBER_resource_report_period_s=0.1``
(and, for the node-death tests, ``EMBER_node_death_timeout_s=2``) before any
daemon starts and always shuts the cluster down. Tasks that must
overlap wait for a "go" file that the test creates; the test itself only
waits on conditions.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import ember
from ember._private.config import reset_config
from ember._private.test_utils import wait_for_condition
from ember.cluster_utils import Cluster, ClusterNode
from ember.exceptions import (
    ActorDiedError,
    ActorUnschedulableError,
    NodeDiedError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

STORE = 300 * 1024 * 1024
#: Set before every cluster starts: cluster views refresh quickly.
FAST_REPORTS = {"EMBER_resource_report_period_s": "0.1"}
#: Only for the tests about node deaths (on a loaded 2-core machine a live
#: node can miss 2 s of reports, so the other tests keep the default).
QUICK_DEATH = {"EMBER_node_death_timeout_s": "2"}
MiB = 1024 * 1024


# ============================================================================ fixtures and helpers
@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(head_cpus=1, env=None, quick_death=False, **head_args)``: a Cluster with its head.

    ``env`` (plus ``FAST_REPORTS``, and ``QUICK_DEATH`` if asked) is put in
    ``os.environ`` before the head starts, so every daemon, worker and this
    driver read it. The cluster is shut down after the test.
    """
    clusters: list[Cluster] = []
    saved: dict[str, str | None] = {}

    def make(head_cpus: float = 1, env: dict[str, str] | None = None, quick_death: bool = False,
             **head_args: Any) -> Cluster:
        for key, value in {**FAST_REPORTS, **(QUICK_DEATH if quick_death else {}), **(env or {})}.items():
            saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        reset_config()
        cluster = Cluster(initialize_head=False, shutdown_at_exit=False)
        clusters.append(cluster)  # registered before any process starts, so shutdown always ends them
        head_args.setdefault("object_store_memory", STORE)
        cluster.add_node(num_cpus=head_cpus, **head_args)
        return cluster

    try:
        yield make
    finally:
        try:
            for cluster in clusters:
                cluster.shutdown()
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            reset_config()


def add_node(cluster: Cluster, num_cpus: float = 1, **kwargs: Any) -> ClusterNode:
    kwargs.setdefault("object_store_memory", STORE)
    return cluster.add_node(num_cpus=num_cpus, **kwargs)


def node_row(node_id: str) -> dict[str, Any]:
    rows = [n for n in ember.nodes() if n["NodeID"] == node_id]
    assert len(rows) == 1, rows
    return rows[0]


def node_is_dead(node_id: str) -> bool:
    return not node_row(node_id)["Alive"]


def affinity(node: ClusterNode | str, soft: bool = False) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node if isinstance(node, str) else node.node_id, soft=soft)


def mapped_file(address: int) -> str:
    """The file mapped at ``address`` in this process ('' for anonymous memory)."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5] if len(parts) > 5 else ""
    return ""


class Gate:
    """Tasks check in (one file each) and wait until the test opens the gate."""

    def __init__(self, path: Any) -> None:
        self.dir = str(path)
        os.makedirs(self.dir, exist_ok=True)

    def started(self) -> list[str]:
        """The node ids of the tasks that have checked in."""
        out = []
        for name in os.listdir(self.dir):
            if name.startswith("in-"):
                with open(os.path.join(self.dir, name)) as f:
                    out.append(f.read())
        return out

    def wait_started(self, n: int, timeout: float = 30) -> list[str]:
        wait_for_condition(lambda: len(self.started()) >= n and all(self.started()), timeout=timeout)
        return self.started()

    def open(self) -> None:
        with open(os.path.join(self.dir, "go"), "w"):
            pass


@ember.remote
def where() -> str:
    return ember.get_runtime_context().get_node_id()


@ember.remote
def gated(gate_dir: str, tag: Any) -> tuple[Any, str]:
    """Check in at the gate, wait until it opens (at most a minute), return (tag, node id)."""
    node = ember.get_runtime_context().get_node_id()
    tmp = os.path.join(gate_dir, f".in-{tag}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(node)
    os.replace(tmp, os.path.join(gate_dir, f"in-{tag}-{os.getpid()}"))
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(gate_dir, "go")):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.01)
    return tag, node


@ember.remote
def make_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


@ember.remote
def describe_array(x: np.ndarray) -> tuple[int, int, bool, str]:
    return int(x.sum()), int(x.size), bool(x.flags.writeable), ember.get_runtime_context().get_node_id()


@ember.remote
class Locator:
    def node(self) -> str:
        return ember.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()


# ============================================================================ membership
def test_nodes_join_and_leave_and_dead_nodes_are_reported(make_cluster):
    cluster = make_cluster(head_cpus=1, quick_death=True)
    n2 = add_node(cluster, num_cpus=2, resources={"disk": 3})
    n3 = add_node(cluster, num_cpus=1)
    cluster.connect()

    rows = {n["NodeID"]: n for n in ember.nodes()}
    assert set(rows) == {cluster.head_node.node_id, n2.node_id, n3.node_id}
    for node in (cluster.head_node, n2, n3):
        row = rows[node.node_id]
        assert row["Alive"] is True
        assert row["NodeManagerAddress"] == "127.0.0.1"
        assert f"{row['NodeManagerAddress']}:{row['NodeManagerPort']}" == node.address
        assert isinstance(row["ObjectManagerPort"], int) and row["ObjectManagerPort"] > 0
        assert row["Resources"]["node:127.0.0.1"] == 1
    assert rows[n2.node_id]["Resources"]["CPU"] == 2
    assert rows[n2.node_id]["Resources"]["disk"] == 3
    assert rows[cluster.head_node.node_id]["Resources"]["CPU"] == 1
    assert "disk" not in rows[n3.node_id]["Resources"]
    assert ember.cluster_resources()["CPU"] == 4
    assert ember.cluster_resources()["disk"] == 3

    cluster.remove_node(n2)  # graceful
    wait_for_condition(lambda: node_is_dead(n2.node_id))
    cluster.remove_node(n3, allow_graceful=False)  # SIGKILL
    wait_for_condition(lambda: node_is_dead(n3.node_id))
    for node in (n2, n3):
        row = node_row(node.node_id)
        assert row["Alive"] is False
        assert row["Resources"] == {}
        assert row["DeathReason"]
    assert ember.cluster_resources()["CPU"] == 1
    assert "disk" not in ember.cluster_resources()

    n4 = add_node(cluster, num_cpus=1, resources={"disk": 1})
    wait_for_condition(lambda: ember.cluster_resources().get("disk") == 1)
    assert len(ember.nodes()) == 4
    assert sorted(n["Alive"] for n in ember.nodes()) == [False, False, True, True]
    assert ember.get(where.options(resources={"disk": 1}).remote()) == n4.node_id


# ============================================================================ routing
def test_custom_resources_route_tasks_and_actors(make_cluster):
    cluster = make_cluster(head_cpus=1)
    node_a = add_node(cluster, resources={"a": 2})
    node_b = add_node(cluster, resources={"b": 2})
    cluster.connect()

    assert set(ember.get([where.options(resources={"a": 1}).remote() for _ in range(4)])) == {node_a.node_id}
    assert set(ember.get([where.options(resources={"b": 1}).remote() for _ in range(4)])) == {node_b.node_id}
    # Tasks without custom resources are not sent there by the resource.
    assert ember.get(where.options(resources={"a": 2}).remote()) == node_a.node_id

    actor_a = Locator.options(resources={"a": 1}).remote()
    actor_b = Locator.options(resources={"b": 1}).remote()
    assert ember.get(actor_a.node.remote()) == node_a.node_id
    assert ember.get(actor_b.node.remote()) == node_b.node_id
    # The actor holds its resource: a task needing both units of "b" waits until it is gone.
    ref = where.options(resources={"b": 2}).remote()
    ready, _ = ember.wait([ref], timeout=1.0)
    assert not ready
    ember.kill(actor_b)
    assert ember.get(ref, timeout=30) == node_b.node_id


def test_spread_puts_tasks_and_actors_on_every_node(make_cluster, tmp_path):
    cluster = make_cluster(head_cpus=2)
    nodes = [cluster.head_node, add_node(cluster, num_cpus=2), add_node(cluster, num_cpus=2)]
    ids = {n.node_id for n in nodes}
    cluster.connect()

    actors = [Locator.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert {ember.get(a.node.remote()) for a in actors} == ids

    # Three overlapping tasks: one per node.
    gate = Gate(tmp_path / "gate")
    refs = [gated.options(scheduling_strategy="SPREAD").remote(gate.dir, i) for i in range(3)]
    assert set(gate.wait_started(3)) == ids
    gate.open()
    assert {node for _, node in ember.get(refs)} == ids

    # Short tasks, one after another: still spread over every node.
    placed = ember.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(9)])
    assert set(placed) == ids, Counter(placed)


def test_node_affinity_pins_tasks_and_actors(make_cluster):
    cluster = make_cluster(head_cpus=1)
    n2 = add_node(cluster)
    n3 = add_node(cluster)
    cluster.connect()
    for node in (cluster.head_node, n2, n3):
        placed = ember.get([where.options(scheduling_strategy=affinity(node)).remote() for _ in range(4)])
        assert set(placed) == {node.node_id}
        actor = Locator.options(scheduling_strategy=affinity(node)).remote()
        assert ember.get(actor.node.remote()) == node.node_id
        # Soft affinity to a live node that can run it also lands there.
        assert ember.get(where.options(scheduling_strategy=affinity(node, soft=True)).remote()) == node.node_id


def test_hard_affinity_to_unknown_or_dead_node_fails_and_soft_falls_back(make_cluster):
    cluster = make_cluster(head_cpus=1)
    n2 = add_node(cluster)
    cluster.connect()
    unknown = "ab" * 16

    with pytest.raises(TaskUnschedulableError, match="abababababab.* is not part of the cluster"):
        ember.get(where.options(scheduling_strategy=affinity(unknown)).remote(), timeout=30)
    actor = Locator.options(scheduling_strategy=affinity(unknown)).remote()
    with pytest.raises(ActorUnschedulableError, match="abababababab"):
        ember.get(actor.node.remote(), timeout=30)
    assert ember.get(where.options(scheduling_strategy=affinity(unknown, soft=True)).remote(), timeout=30) in {
        cluster.head_node.node_id, n2.node_id,
    }

    cluster.remove_node(n2)
    wait_for_condition(lambda: node_is_dead(n2.node_id))
    with pytest.raises(TaskUnschedulableError, match=f"{n2.node_id[:12]}.* is dead"):
        ember.get(where.options(scheduling_strategy=affinity(n2)).remote(), timeout=30)
    actor = Locator.options(scheduling_strategy=affinity(n2)).remote()
    with pytest.raises(ActorUnschedulableError, match=f"{n2.node_id[:12]}.* is dead"):
        ember.get(actor.node.remote(), timeout=30)
    assert ember.get(where.options(scheduling_strategy=affinity(n2, soft=True)).remote(), timeout=30) == (
        cluster.head_node.node_id
    )
    soft_actor = Locator.options(scheduling_strategy=affinity(n2, soft=True)).remote()
    assert ember.get(soft_actor.node.remote(), timeout=30) == cluster.head_node.node_id


def test_default_policy_stays_local_until_half_busy_then_spills(make_cluster, tmp_path):
    cluster = make_cluster(head_cpus=2)
    other = add_node(cluster, num_cpus=2)
    cluster.connect()
    head = cluster.head_node.node_id

    # One task at a time keeps the head at most half busy: everything stays local.
    assert {ember.get(where.remote()) for _ in range(10)} == {head}

    # Two overlapping tasks: the first takes the head to 50%, so the second spills.
    gate = Gate(tmp_path / "two")
    refs = [gated.remote(gate.dir, i) for i in range(2)]
    assert sorted(gate.wait_started(2)) == sorted([head, other.node_id])
    gate.open()
    assert sorted(node for _, node in ember.get(refs)) == sorted([head, other.node_id])

    # Four overlapping tasks fill both nodes, two each (none waits while a CPU is free).
    gate = Gate(tmp_path / "four")
    refs = [gated.remote(gate.dir, i) for i in range(4)]
    assert Counter(gate.wait_started(4)) == Counter({head: 2, other.node_id: 2})
    gate.open()
    assert [tag for tag, _ in ember.get(refs)] == [0, 1, 2, 3]


def test_tasks_queued_behind_a_busy_worker_move_to_a_free_node(make_cluster, tmp_path):
    # Right after a task, its lease is still held and takes several new tasks at
    # once; while the first blocks, the second must reach the free CPU of the
    # other node instead of waiting behind it.
    cluster = make_cluster(head_cpus=1)
    other = add_node(cluster, num_cpus=1)
    cluster.connect()
    gate = Gate(tmp_path / "gate")
    assert ember.get(where.remote()) == cluster.head_node.node_id
    refs = [gated.remote(gate.dir, i) for i in range(2)]
    assert sorted(gate.wait_started(2)) == sorted([cluster.head_node.node_id, other.node_id])
    gate.open()
    assert [tag for tag, _ in ember.get(refs)] == [0, 1]


# ============================================================================ objects across nodes
def test_large_object_made_on_one_node_is_read_zero_copy_on_another(make_cluster):
    cluster = make_cluster(head_cpus=1)
    producer = add_node(cluster, resources={"producer": 1})
    consumer = add_node(cluster, resources={"consumer": 1})
    cluster.connect()
    n = 40 * MiB // 8

    ref = make_array.options(resources={"producer": 1}).remote(n)
    array = ember.get(ref, timeout=60)
    assert array.dtype == np.int64 and array.size == n
    assert np.array_equal(array, np.arange(n, dtype=np.int64))
    # Read-only and zero-copy: the data lives in a file of the driver's node's store, mapped here.
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0] = 1
    path = mapped_file(array.ctypes.data)
    assert path == os.path.join(cluster.head_node.store_dir, ref.hex()), path
    expected_sum = int(np.arange(n, dtype=np.int64).sum())

    # A task on a third node gets the argument from the producer's node.
    total, size, writeable, node = ember.get(describe_array.options(resources={"consumer": 1}).remote(ref), timeout=60)
    assert (total, size, writeable, node) == (expected_sum, n, False, consumer.node_id)
    # A value put by the driver (head) is read on another node.
    put_ref = ember.put(np.ones(n, dtype=np.int64))
    assert ember.get(describe_array.options(resources={"producer": 1}).remote(put_ref), timeout=60) == (
        n, n, False, producer.node_id,
    )
    del array


@ember.remote
def sum_nested(refs: list[Any]) -> tuple[int, str]:
    return int(sum(int(ember.get(r).sum()) for r in refs)), ember.get_runtime_context().get_node_id()


def test_refs_nested_in_arguments_are_fetched_across_nodes(make_cluster):
    cluster = make_cluster(head_cpus=1)
    n2 = add_node(cluster, resources={"n2": 1})
    n3 = add_node(cluster, resources={"n3": 1})
    cluster.connect()
    refs = [make_array.options(resources={"n2": 1}).remote(MiB) for _ in range(3)]
    refs.append(ember.put(np.arange(MiB, dtype=np.int64)))
    total, node = ember.get(sum_nested.options(resources={"n3": 1}).remote(refs), timeout=60)
    assert node == n3.node_id
    assert total == 4 * int(np.arange(MiB, dtype=np.int64).sum())
    assert n2.node_id != n3.node_id


# ============================================================================ resources
def test_fractional_resources_share_a_node(make_cluster, tmp_path):
    cluster = make_cluster(head_cpus=1)
    node = add_node(cluster, num_cpus=1, resources={"accel": 1})
    cluster.connect()

    # Two tasks of half an accelerator (and half a CPU) run at once on its node.
    gate = Gate(tmp_path / "half")
    refs = [gated.options(num_cpus=0.5, resources={"accel": 0.5}).remote(gate.dir, i) for i in range(2)]
    assert gate.wait_started(2) == [node.node_id] * 2
    gate.open()
    ember.get(refs)

    # Tiny amounts add up exactly: 0.0001 at a time, the node's total comes back whole.
    placed = ember.get([where.options(num_cpus=0, resources={"accel": 0.0001}).remote() for _ in range(50)])
    assert set(placed) == {node.node_id}
    wait_for_condition(lambda: node_row(node.node_id)["AvailableResources"].get("accel") == 1.0)
    # More than a whole unit in one request is infeasible on a 1-unit node (not rounded down).
    ref = where.options(resources={"accel": 1.0001}).remote()
    ready, _ = ember.wait([ref], timeout=0.5)
    assert not ready
    ember.cancel(ref)


def test_node_ip_resource_routes_to_that_node(make_cluster):
    cluster = make_cluster(head_cpus=1)
    other = add_node(cluster, node_ip_address="127.0.0.2")
    cluster.connect()
    row = node_row(other.node_id)
    assert row["NodeManagerAddress"] == "127.0.0.2"
    assert row["Resources"]["node:127.0.0.2"] == 1
    assert "node:127.0.0.2" not in node_row(cluster.head_node.node_id)["Resources"]

    placed = ember.get([where.options(resources={"node:127.0.0.2": 0.01}).remote() for _ in range(3)])
    assert set(placed) == {other.node_id}
    actor = Locator.options(resources={"node:127.0.0.2": 0.01}).remote()
    assert ember.get(actor.node.remote()) == other.node_id
    # Objects made there come back over that address.
    array = ember.get(make_array.options(resources={"node:127.0.0.2": 0.01}).remote(4 * MiB), timeout=60)
    assert int(array[-1]) == 4 * MiB - 1


# ============================================================================ infeasible
def test_infeasible_task_warns_naming_the_shape_and_times_out(make_cluster, capfd):
    cluster = make_cluster(head_cpus=1, env={"EMBER_infeasible_timeout_s": "2"})
    add_node(cluster, num_cpus=1, resources={"small": 1})
    cluster.connect()
    start = time.monotonic()
    with pytest.raises(TaskUnschedulableError, match="EMBER_infeasible_timeout_s"):
        ember.get(where.options(resources={"huge": 4}).remote(), timeout=60)
    assert time.monotonic() - start < 30
    err = capfd.readouterr().err
    assert "cannot be scheduled" in err
    assert "huge: 4" in err
    with pytest.raises(TaskUnschedulableError):
        ember.get(where.options(num_cpus=3).remote(), timeout=60)
    assert "CPU: 3" in capfd.readouterr().err
    # Feasible work is unaffected.
    assert ember.get(where.options(resources={"small": 1}).remote(), timeout=30)


def test_infeasible_task_runs_once_a_node_that_fits_joins(make_cluster, capfd):
    cluster = make_cluster(head_cpus=1)
    cluster.connect()
    ref = where.options(resources={"late": 1}).remote()
    wait_for_condition(lambda: "late: 1" in capfd.readouterr().err)
    late = add_node(cluster, resources={"late": 1})
    assert ember.get(ref, timeout=30) == late.node_id


# ============================================================================ node failures
def test_sigkilled_node_retriable_tasks_rerun_elsewhere(make_cluster, tmp_path):
    cluster = make_cluster(head_cpus=2, quick_death=True)
    doomed = add_node(cluster, num_cpus=2)
    cluster.connect()
    head = cluster.head_node.node_id

    gate = Gate(tmp_path / "gate")
    refs = [
        gated.options(max_retries=2, scheduling_strategy=affinity(doomed, soft=True)).remote(gate.dir, i)
        for i in range(2)
    ]
    assert gate.wait_started(2) == [doomed.node_id] * 2
    doomed.kill_raylet()
    wait_for_condition(lambda: node_is_dead(doomed.node_id))
    gate.open()
    assert sorted(ember.get(refs, timeout=60)) == [(0, head), (1, head)]


def test_sigkilled_node_task_without_retries_fails(make_cluster, tmp_path):
    cluster = make_cluster(head_cpus=1, quick_death=True)
    doomed = add_node(cluster, num_cpus=1)
    cluster.connect()
    gate = Gate(tmp_path / "gate")
    ref = gated.options(max_retries=0, scheduling_strategy=affinity(doomed)).remote(gate.dir, 0)
    gate.wait_started(1)
    doomed.kill_raylet()
    with pytest.raises((WorkerCrashedError, NodeDiedError)):
        ember.get(ref, timeout=60)


def test_sigkilled_node_actors_restart_elsewhere_or_die(make_cluster):
    cluster = make_cluster(head_cpus=2, quick_death=True)
    doomed = add_node(cluster, num_cpus=2)
    cluster.connect()
    head = cluster.head_node.node_id
    on_doomed = affinity(doomed, soft=True)

    # max_task_retries: a call that meets the dead worker is sent again after the restart.
    restartable = Locator.options(max_restarts=1, max_task_retries=1, scheduling_strategy=on_doomed).remote()
    restartable_no_call_retry = Locator.options(max_restarts=1, scheduling_strategy=on_doomed).remote()
    mortal = Locator.options(max_restarts=0, scheduling_strategy=on_doomed).remote()
    actors = [restartable, restartable_no_call_retry, mortal]
    assert ember.get([a.node.remote() for a in actors]) == [doomed.node_id] * 3
    old_pid = ember.get(restartable.pid.remote())

    doomed.kill_raylet()
    assert ember.get(restartable.node.remote(), timeout=60) == head
    assert ember.get(restartable.pid.remote(), timeout=60) != old_pid

    # Without call retries, a call may fail while the caller learns of the death;
    # once it knows, calls reach the restarted actor on the head.
    def answers_from(actor: Any, node_id: str) -> bool:
        try:
            return ember.get(actor.node.remote(), timeout=60) == node_id
        except RayActorError:
            return False

    wait_for_condition(lambda: answers_from(restartable_no_call_retry, head), timeout=60)

    def died_of_node_death() -> str:
        try:
            ember.get(mortal.node.remote(), timeout=60)
        except ActorDiedError as exc:
            return str(exc) if doomed.node_id[:12] in str(exc) else ""
        except RayActorError:
            return ""  # a call that met the dying worker, before the death was known
        raise AssertionError("the actor without restarts answered after its node died")

    message = wait_for_condition(died_of_node_death, timeout=60, raise_exceptions=False)
    assert "node" in message and "died" in message
    assert node_is_dead(doomed.node_id)


def test_frozen_node_is_declared_dead_after_missed_reports(make_cluster):
    cluster = make_cluster(head_cpus=1, quick_death=True)
    frozen = add_node(cluster, resources={"frozen": 1})
    cluster.connect()
    assert ember.get(where.options(resources={"frozen": 1}).remote()) == frozen.node_id
    os.kill(frozen.raylet_proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        wait_for_condition(lambda: node_is_dead(frozen.node_id), timeout=30)
        assert time.monotonic() - start >= 1.5  # the 2 s timeout, not a disconnect
        assert "heartbeat" in node_row(frozen.node_id)["DeathReason"]
        assert "frozen" not in ember.cluster_resources()
        # Work goes to the live node meanwhile.
        assert ember.get(where.remote(), timeout=30) == cluster.head_node.node_id
    finally:
        frozen.kill_raylet(signal.SIGKILL)


def test_object_lost_with_its_node_is_rebuilt_from_lineage(make_cluster):
    cluster = make_cluster(head_cpus=1, quick_death=True)
    doomed = add_node(cluster, num_cpus=1)
    cluster.connect()
    ref = make_array.options(max_retries=2, scheduling_strategy=affinity(doomed, soft=True)).remote(MiB)
    ready, _ = ember.wait([ref], fetch_local=False, timeout=30)
    assert ready
    cluster.remove_node(doomed, allow_graceful=False)
    wait_for_condition(lambda: node_is_dead(doomed.node_id))
    start = time.monotonic()
    array = ember.get(ref, timeout=60)
    # Rebuilt at once: the pull from the dead node fails fast instead of retrying the
    # connection for connect_timeout_s (10 s).
    assert time.monotonic() - start < 8
    assert int(array[-1]) == MiB - 1 and array.size == MiB
    assert mapped_file(array.ctypes.data).startswith(cluster.head_node.store_dir)



@ember.remote
def put_and_return_ref(n: int) -> list[Any]:
    return [ember.put(np.ones(n))]


def test_object_owned_by_a_worker_of_a_dead_node_raises_owner_died(make_cluster):
    cluster = make_cluster(head_cpus=1, quick_death=True)
    doomed = add_node(cluster, num_cpus=1, resources={"doomed": 1})
    cluster.connect()
    [inner] = ember.get(put_and_return_ref.options(resources={"doomed": 1}).remote(MiB))
    cluster.remove_node(doomed, allow_graceful=False)
    wait_for_condition(lambda: node_is_dead(doomed.node_id))
    start = time.monotonic()
    with pytest.raises((OwnerDiedError, ObjectLostError)):
        ember.get(inner, timeout=60)
    assert time.monotonic() - start < 8  # known dead: no connection retries to the dead worker


# ============================================================================ benchmark
def test_cross_node_transfer_benchmark_runs_and_cleans_up():
    from ember.bench.microbenchmark import CROSS_NODE_TRANSFER, measure_cross_node_transfer

    result = measure_cross_node_transfer(ember, np, size=16 * MiB, runs=2, quiet=True)
    assert result["name"] == CROSS_NODE_TRANSFER and result["unit"] == "GB/s"
    assert len(result["rates"]) == 2 and all(rate > 0 for rate in result["rates"])
    assert not ember.is_initialized()
