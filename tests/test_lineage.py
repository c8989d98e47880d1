"""Lineage reconstruction, and values that outlive their creator.

A value whose only copy was on a node that died (SIGKILL of its node daemon)
is recomputed by its owner when it is read, on a replacement node: exactly the
lost tasks run again (executions are counted with files in ``tmp_path``), and
recursively the tasks that made lost arguments. Values that were not lost
(inline results, results on live nodes) and lost values nobody reads are not
recomputed. A lost ``put`` value cannot be recomputed; a task with no retries
left raises ``ObjectReconstructionFailedMaxAttemptsExceededError``.

``put(value, _owner=actor)``: the value survives the driver that put it (a
cluster started with ``ember start --head``; drivers in subprocesses pass the
ref through a named detached actor).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import free_port, wait_for_condition
from ember.cluster_utils import Cluster, ClusterNode
from ember.exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OwnerDiedError,
)
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

sys.path.insert(0, os.path.dirname(__file__))
from cli_cluster import cli_env, ember_cli, end_everything  # noqa: E402
from memory_helpers import (  # noqa: E402
    ClusterFactory,
    MiB,
    digest,
    expected_digest,
    node_alive,
    object_files,
    pattern,
)

N = 256 * 1024  # a 1 MiB value: stored in the object store of the node that made it
DOOMED = {"doomed": 0.01}  # runs on whichever node has the "doomed" resource


# ============================================================================ remote code
def _count(directory: str, tag: str) -> None:
    with open(os.path.join(directory, f"{tag}-{uuid.uuid4().hex}"), "w"):
        pass


@ember.remote(max_retries=3)
def produce(directory: str, tag: str, seed: int) -> np.ndarray:
    _count(directory, tag)
    return pattern(seed, N)


@ember.remote(max_retries=3)
def produce_small(directory: str, tag: str) -> bytes:
    _count(directory, tag)
    return b"small"  # inline: lives in the owner's memory, not on the node


@ember.remote(max_retries=3)
def add_one(directory: str, tag: str, x: np.ndarray) -> np.ndarray:
    _count(directory, tag)
    return x + np.uint32(1)


@ember.remote
def digest_of(x: Any) -> tuple[int, int]:
    return digest(x)


def runs(directory: Any, tag: str) -> int:
    return len([n for n in os.listdir(directory) if n.startswith(f"{tag}-")])


# ============================================================================ clusters
@pytest.fixture
def clusters(own_cluster: None) -> Iterator[ClusterFactory]:
    factory = ClusterFactory()
    try:
        yield factory
    finally:
        factory.shutdown()


def doomed_cluster(clusters: ClusterFactory) -> tuple[Cluster, ClusterNode]:
    """A head (1 CPU) and a node with the "doomed" resource; this driver connected."""
    cluster = clusters.make(head_cpus=1)
    doomed = cluster.add_node(num_cpus=1, resources={"doomed": 1}, object_store_memory=100 * MiB)
    cluster.connect()
    return cluster, doomed


def replace(cluster: Cluster, node: ClusterNode) -> ClusterNode:
    """SIGKILL the node's daemon (its workers and store go with it) and start a replacement."""
    cluster.remove_node(node, allow_graceful=False)
    wait_for_condition(lambda: not node_alive(node.node_id), timeout=20)
    return cluster.add_node(num_cpus=1, resources={"doomed": 1}, object_store_memory=100 * MiB)


def on(node: ClusterNode) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)


# ============================================================================ reconstruction
def test_lost_result_is_recomputed_and_only_lost_tasks_run_again(clusters, tmp_path):
    cluster, doomed = doomed_cluster(clusters)
    d = str(tmp_path)
    lost = produce.options(resources=DOOMED).remote(d, "lost", 1)
    unread = produce.options(resources=DOOMED).remote(d, "unread", 2)
    small = produce_small.options(resources=DOOMED).remote(d, "small")
    safe = produce.options(scheduling_strategy=on(cluster.head_node)).remote(d, "safe", 3)
    ready, _ = ember.wait([lost, unread, small, safe], num_returns=4, fetch_local=False, timeout=60)
    assert len(ready) == 4
    assert [runs(d, t) for t in ("lost", "unread", "small", "safe")] == [1, 1, 1, 1]

    replacement = replace(cluster, doomed)
    array = ember.get(lost, timeout=60)
    assert digest(array) == expected_digest(1, N)
    assert runs(d, "lost") == 2  # ran again, once
    # Nothing else was recomputed: not the lost value nobody read, not the inline result,
    # not the result on the live node.
    assert ember.get(small, timeout=30) == b"small"
    assert digest(ember.get(safe, timeout=30)) == expected_digest(3, N)
    assert [runs(d, t) for t in ("unread", "small", "safe")] == [1, 1, 1]
    # The lost value nobody read is recomputed when it is read, on the replacement node.
    assert ember.get(digest_of.options(scheduling_strategy=on(replacement)).remote(unread), timeout=60) == expected_digest(2, N)
    assert runs(d, "unread") == 2
    assert runs(d, "lost") == 2


def test_lost_arguments_are_recomputed_recursively(clusters, tmp_path):
    cluster, doomed = doomed_cluster(clusters)
    d = str(tmp_path)
    first = produce.options(resources=DOOMED).remote(d, "first", 5)
    second = add_one.options(resources=DOOMED).remote(d, "second", first)
    third = add_one.options(resources=DOOMED).remote(d, "third", second)
    other = produce.options(resources=DOOMED).remote(d, "other", 6)
    ember.wait([third, other], num_returns=2, fetch_local=False, timeout=60)
    del first, second  # only the last result is referenced: its lineage keeps the others
    assert [runs(d, t) for t in ("first", "second", "third", "other")] == [1, 1, 1, 1]

    replace(cluster, doomed)
    # Reading the last value re-runs the whole chain, each task once.
    assert digest(ember.get(third, timeout=90)) == digest(pattern(5, N) + np.uint32(2))
    assert [runs(d, t) for t in ("first", "second", "third")] == [2, 2, 2]
    # A task (on the head) whose argument was lost: the argument is recomputed first.
    result = add_one.options(scheduling_strategy=on(cluster.head_node)).remote(d, "after", other)
    assert digest(ember.get(result, timeout=90)) == digest(pattern(6, N) + np.uint32(1))
    assert (runs(d, "other"), runs(d, "after")) == (2, 1)
    assert [runs(d, t) for t in ("first", "second", "third")] == [2, 2, 2]


def test_exhausted_retries_raise_max_attempts_exceeded(clusters, tmp_path):
    cluster, doomed = doomed_cluster(clusters)
    d = str(tmp_path)
    never = produce.options(resources=DOOMED, max_retries=0).remote(d, "never", 7)
    once = produce.options(resources=DOOMED, max_retries=1).remote(d, "once", 8)
    ember.wait([never, once], num_returns=2, fetch_local=False, timeout=60)

    second = replace(cluster, doomed)
    with pytest.raises(ObjectReconstructionFailedMaxAttemptsExceededError) as info:
        ember.get(never, timeout=60)
    assert isinstance(info.value, ObjectReconstructionFailedError) and isinstance(info.value, ObjectLostError)
    assert "max_retries" in str(info.value) and never.hex() in str(info.value)
    assert runs(d, "never") == 1
    # One retry: spent recovering it the first time (read on the replacement node, so that
    # no copy lands on the head) ...
    assert ember.get(digest_of.options(resources=DOOMED).remote(once), timeout=60) == expected_digest(8, N)
    assert runs(d, "once") == 2
    # ... so losing it again is final.
    replace(cluster, second)
    with pytest.raises(ObjectReconstructionFailedMaxAttemptsExceededError):
        ember.get(once, timeout=60)
    assert runs(d, "once") == 2
    del info


def test_lost_put_value_cannot_be_recomputed(ember_shared):
    w = runtime.core_worker()
    ref = ember.put(pattern(9, N))
    path = os.path.join(w.store_dir, ref.hex())
    os.unlink(path)  # the only copy vanishes (as with its node)
    with pytest.raises(ObjectLostError) as info:
        ember.get(ref, timeout=30)
    assert not isinstance(info.value, (OwnerDiedError, ObjectReconstructionFailedError))
    assert "put values cannot be recomputed" in str(info.value) and ref.hex() in str(info.value)
    # A task given the lost value fails the same way.
    with pytest.raises(ObjectLostError, match="put values cannot be recomputed"):
        ember.get(digest_of.remote(ref), timeout=30)
    hex_id = ref.hex()
    del ref, info
    gc.collect()  # the caught errors' tracebacks held the ref
    wait_for_condition(lambda: w.raylet_call("store_stats", None)["objects"] == 0, timeout=15)
    assert hex_id not in object_files(w.store_dir)


# ============================================================================ put(_owner=actor)
PUT_DRIVER = """
    import json, os
    import numpy as np
    import ember

    ember.init(address="auto", namespace="owned")

    @ember.remote
    class Owner:
        def pid(self):
            return os.getpid()

    @ember.remote
    class Mailbox:
        def __init__(self):
            self.refs = []

        def post(self, refs):
            self.refs = list(refs)
            return len(self.refs)

        def read(self):
            return self.refs

    owner = Owner.options(name="owner", lifetime="detached").remote()
    mailbox = Mailbox.options(name="mailbox", lifetime="detached").remote()
    ref = ember.put(np.arange(1 << 18, dtype=np.int64), _owner=owner)
    mine = ember.put(np.arange(1 << 18, dtype=np.int64))
    assert ember.get(mailbox.post.remote([ref, mine])) == 2
    print(json.dumps({"ref": ref.hex(), "mine": mine.hex(), "owner_pid": ember.get(owner.pid.remote()),
                      "owner_worker": ref.owner_address()[2].hex(), "driver": ember.get_runtime_context().get_worker_id()}))
"""

READ_DRIVER = """
    import json, os
    import ember
    from ember.exceptions import OwnerDiedError, ObjectLostError

    ember.init(address="auto", namespace="owned")
    mailbox = ember.get_actor("mailbox")
    ref, mine = ember.get(mailbox.read.remote())
    out = {"ref": ref.hex(), "sum": int(ember.get(ref, timeout=30).sum())}
    try:
        ember.get(mine, timeout=30)
        out["mine"] = "read"
    except ObjectLostError as exc:
        out["mine"] = type(exc).__name__
    if {kill_owner}:
        ember.kill(ember.get_actor("owner"))
    print(json.dumps(out))
"""

AFTER_OWNER_DIED = """
    import json, time
    import ember
    from ember.exceptions import OwnerDiedError

    ember.init(address="auto", namespace="owned")
    mailbox = ember.get_actor("mailbox")
    ref, _ = ember.get(mailbox.read.remote())
    start = time.monotonic()
    try:
        ember.get(ref, timeout=30)
        out = {"error": None}
    except OwnerDiedError as exc:
        out = {"error": type(exc).__name__}
    out["seconds"] = time.monotonic() - start
    ember.kill(mailbox)
    print(json.dumps(out))
"""


def _driver(code: str, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"driver printed no result:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1])


def test_put_with_an_actor_owner_survives_the_driver_that_put_it(own_cluster, tmp_path):
    tmpdir = str(tmp_path / "ember_cli")
    env = cli_env(tmpdir)
    try:
        started = ember_cli(
            ["start", "--head", "--port", str(free_port()), "--num-cpus", "2", "--object-store-memory", str(128 * MiB)], env
        )
        assert started.returncode == 0, started.stdout + started.stderr
        put = _driver(PUT_DRIVER, env)  # exits: what it owned itself goes with it
        assert put["owner_worker"] != put["driver"]
        got = _driver(READ_DRIVER.replace("{kill_owner}", "True"), env)
        assert got["ref"] == put["ref"]
        assert got["sum"] == sum(range(1 << 18))  # the actor-owned value outlived its creator
        assert got["mine"] == "OwnerDiedError"  # the creator's own put did not
        # Once the owning actor is gone, the value is too: an error at once, not a hang.
        after = _driver(AFTER_OWNER_DIED, env)
        assert after["error"] == "OwnerDiedError" and after["seconds"] < 10
    finally:
        try:
            ember_cli(["stop"], env)
        finally:
            end_everything(tmpdir)
