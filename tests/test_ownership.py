"""Ownership and distributed reference counting against a real local cluster (2 CPUs).

The owner of a value counts its own refs, the refs held by pending tasks, refs
nested in stored values (puts and task results) and the processes that borrow
it; the value is freed everywhere (the memory-store entry, the /dev/shm file,
its spill file) once the last of them lets go, and never while one remains.
Each test checks both sides through the store's accounting (``store_stats``),
the object files themselves and the owner's reference table; ``ember status``
and ``ember memory`` are run as the user would, in a subprocess.
"""

from __future__ import annotations

import copy
import gc
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition, wait_for_file
from ember.exceptions import ObjectLostError, OwnerDiedError
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

sys.path.insert(0, os.path.dirname(__file__))
from cli_cluster import ember_cli  # noqa: E402
from memory_helpers import (  # noqa: E402
    ClusterFactory,
    Gate,
    MiB,
    digest,
    expected_digest,
    object_files,
    pattern,
    store_stats,
)

N = 256 * 1024  # uint32 elements: a 1 MiB value, stored in the object store


class Box:
    """A user class holding refs (pickled by reference: workers import this module)."""

    def __init__(self, refs: list[Any], pad: Any = None) -> None:
        self.refs = refs
        self.pad = pad


# ============================================================================ remote code
@ember.remote
def make(seed: int, n: int) -> np.ndarray:
    return pattern(seed, n)


@ember.remote
def digest_of(x: Any) -> tuple[int, int]:
    return digest(x)


@ember.remote
def digest_after_gate(gate: str, started: str, arg: Any) -> list[tuple[int, int]]:
    """Say it started, wait for the gate, then read every value in ``arg`` (a value, or refs in a list/dict)."""
    with open(started, "w") as f:
        f.write("1")
    Gate.wait(gate)
    if isinstance(arg, np.ndarray):
        return [digest(arg)]
    refs = list(arg.values()) if isinstance(arg, dict) else list(arg)
    return [digest(ember.get(r)) for r in refs]


@ember.remote
def pass_through(refs: list[Any]) -> list[Any]:
    return list(refs)


@ember.remote
def put_inside(seed: int, n: int) -> list[Any]:
    """A value this task's worker owns, returned inside the result."""
    return [ember.put(pattern(seed, n))]


@ember.remote
def boxed_with_pad(refs: list[Any]) -> Box:
    """A result large enough for the object store, holding the refs it was given."""
    return Box(list(refs), np.zeros(200 * 1024, dtype=np.uint8))


@ember.remote
def store_in_actor(holder: Any, key: str, refs: list[Any]) -> int:
    """A task that hands refs it borrowed to an actor, which keeps them in its state."""
    return ember.get(holder.hold.remote(key, refs))


@ember.remote
class Holder:
    def __init__(self) -> None:
        self.refs: dict[str, list[Any]] = {}

    def hold(self, key: str, refs: list[Any]) -> int:
        self.refs[key] = list(refs)
        return len(self.refs[key])

    def drop(self, key: str) -> bool:
        return self.refs.pop(key, None) is not None

    def digests(self, key: str) -> list[Any]:
        out: list[Any] = []
        for ref in self.refs[key]:
            try:
                out.append(digest(ember.get(ref, timeout=30)))
            except ObjectLostError as exc:
                out.append(type(exc).__name__)
        return out

    def refs_of(self, key: str) -> list[Any]:
        return self.refs[key]

    def pid(self) -> int:
        return os.getpid()


@ember.remote
class Owner:
    def put(self, seed: int, n: int) -> list[Any]:
        return [ember.put(pattern(seed, n))]

    def owned(self) -> list[str]:
        snap = runtime.core_worker().reference_counter.snapshot()
        return sorted(oid.hex() for oid, (_l, _s, owned) in snap.items() if owned and len(oid) != 16)

    def pid(self) -> int:
        return os.getpid()


# ============================================================================ helpers
def worker() -> Any:
    return runtime.core_worker()


def counts(ref_or_hex: Any) -> tuple[int, int, bool] | None:
    """(local, submitted, owned) of an object in this process's reference counter."""
    oid = bytes.fromhex(ref_or_hex) if isinstance(ref_or_hex, str) else ref_or_hex.binary()
    return worker().reference_counter.snapshot().get(oid)


def borrowers(hex_id: str) -> int:
    return worker().reference_counter.borrower_counts().get(bytes.fromhex(hex_id), 0)


def in_store(hex_id: str) -> bool:
    return hex_id in object_files(worker().store_dir)


def freed_everywhere(hex_id: str) -> bool:
    """The owner (this process) forgot it and the node's store no longer holds it."""
    oid = bytes.fromhex(hex_id)
    w = worker()
    return (
        not w.reference_counter.has_reference(oid)
        and not w.memory_store.contains(oid)
        and hex_id not in object_files(w.store_dir)
    )


def wait_freed(*hex_ids: str, timeout: float = 15) -> None:
    def all_freed() -> bool:
        return all(freed_everywhere(h) for h in hex_ids)

    all_freed.__name__ = f"objects {', '.join(h[:12] for h in hex_ids)} freed everywhere"
    wait_for_condition(all_freed, timeout=timeout)


def reference_type(hex_id: str) -> str:
    rows = [r for r in worker().ownership.memory_table()["objects"] if r["object_id"] == hex_id]
    return rows[0]["reference_type"] if rows else "(none)"


def wait_dead(pid: int) -> None:
    def dead() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    dead.__name__ = f"process {pid} is gone"
    wait_for_condition(dead, timeout=15)


@pytest.fixture
def baseline(ember_shared: Any) -> Iterator[dict[str, int]]:
    """The store's use before the test; afterwards it must be back there."""
    before = store_stats()
    yield before
    gc.collect()
    wait_for_condition(lambda: store_stats()["used"] <= before["used"], timeout=15)


# ============================================================================ the owner's own refs
def test_owner_counts_its_local_refs_and_frees_the_value_at_zero(baseline):
    ref = ember.put(pattern(1, N))
    hex_id = ref.hex()
    assert counts(ref) == (1, 0, True)
    assert in_store(hex_id)
    assert store_stats()["used"] >= baseline["used"] + N * 4

    second = copy.copy(ref)  # another live ObjectRef: another local count
    also = ref  # the same Python object: no new count
    assert counts(ref)[0] == 2
    del ref
    assert counts(also)[0] == 2  # `also` is the first ref object itself: nothing was released
    del also
    wait_for_condition(lambda: counts(hex_id)[0] == 1)
    assert in_store(hex_id)
    assert digest(ember.get(second)) == expected_digest(1, N)

    del second
    wait_freed(hex_id)
    wait_for_condition(lambda: store_stats()["used"] == baseline["used"])


def test_task_result_is_owned_by_the_caller_and_freed_with_its_last_ref(baseline):
    ref = make.remote(2, N)
    assert digest(ember.get(ref, timeout=60)) == expected_digest(2, N)
    hex_id = ref.hex()
    local, submitted, owned = counts(ref)
    assert (local, submitted, owned) == (1, 0, True)
    assert in_store(hex_id)
    del ref
    wait_freed(hex_id)


def test_copy_a_dead_attempt_stored_late_is_freed_with_the_last_ref(baseline):
    # A worker that dies right after storing a result can have its create/seal reach its
    # node after the owner's first free of that attempt's results. The owner remembers the
    # node and frees the copy there again when it frees the object.
    from ember._private import serialization

    worker = runtime.core_worker()
    ref = ember.put(1)  # owned, inline: nothing in the store under this id
    hex_id = ref.hex()
    assert not in_store(hex_id)
    noted = worker.io.run(_note_dead_attempt(worker, ref), timeout=10)
    assert noted
    # The dead attempt's late write lands after that first free.
    late = serialization.serialize(np.zeros(N, dtype=np.int32))
    worker.objects.write_plasma(ref.binary(), late, worker.worker_id, worker.address)
    assert in_store(hex_id)
    assert ember.get(ref) == 1  # the owner's value is still the retry's, not the stray copy
    del ref
    wait_freed(hex_id)


async def _note_dead_attempt(worker: Any, ref: Any) -> bool:
    worker.ownership.note_dead_attempt([ref.binary()], worker.raylet_location)
    return True


@pytest.mark.parametrize("how", ["top_level", "nested_in_list", "nested_in_dict"])
def test_pending_task_keeps_its_argument_alive(baseline, tmp_path, how):
    gate, started = tmp_path / "gate", str(tmp_path / "started")
    ref = ember.put(pattern(3, N))
    hex_id = ref.hex()
    arg = {"top_level": ref, "nested_in_list": [ref], "nested_in_dict": {"k": ref}}[how]
    result = digest_after_gate.remote(str(gate), started, arg)
    del ref, arg
    wait_file = wait_for_file(started, timeout=60)
    assert wait_file == "1"
    # Only the pending task references the value now.
    local, submitted, owned = counts(hex_id)
    assert (local, owned) == (0, True) and submitted >= 1
    assert reference_type(hex_id) == "USED_BY_PENDING_TASK"
    assert in_store(hex_id)
    Gate(gate).open()
    assert ember.get(result, timeout=60) == [expected_digest(3, N)]
    wait_freed(hex_id)


# ============================================================================ refs nested in values
def _container(kind: str, inner: Any) -> Any:
    if kind == "list":
        return [inner, "other"]
    if kind == "dict":
        return {"inner": inner, "n": 1}
    if kind == "user_class":
        return Box([inner])
    return {"deep": [(Box([{"x": [inner]}]),)]}  # nested several levels


def _extract(kind: str, value: Any) -> Any:
    if kind == "list":
        return value[0]
    if kind == "dict":
        return value["inner"]
    if kind == "user_class":
        return value.refs[0]
    return value["deep"][0][0].refs[0]["x"][0]


@pytest.mark.parametrize("kind", ["list", "dict", "user_class", "deeply_nested"])
def test_ref_nested_in_a_put_value_lives_as_long_as_the_value(baseline, kind):
    inner = ember.put(pattern(4, N))
    inner_hex = inner.hex()
    outer = ember.put(_container(kind, inner))
    outer_hex = outer.hex()
    del inner
    # The stored value holds its own ref to the inner value.
    wait_for_condition(lambda: counts(inner_hex)[0] == 1)
    assert reference_type(inner_hex) == "CAPTURED_IN_OBJECT"
    assert in_store(inner_hex)
    got = _extract(kind, ember.get(outer))
    assert got.hex() == inner_hex
    assert digest(ember.get(got)) == expected_digest(4, N)
    del got
    # Also when the container is itself large (in the object store).
    again = _extract(kind, ember.get(outer))
    big_outer = ember.put([_container(kind, again), np.ones(MiB, np.uint8)])
    big_hex = big_outer.hex()
    del again
    assert in_store(big_hex)
    del outer
    wait_freed(outer_hex)
    assert in_store(inner_hex)  # still captured in big_outer
    assert digest(ember.get(_extract(kind, ember.get(big_outer)[0]))) == expected_digest(4, N)
    del big_outer
    wait_freed(big_hex, inner_hex)


def test_refs_in_a_task_result_handed_back_to_the_owner(baseline):
    inner = ember.put(pattern(5, N))
    inner_hex = inner.hex()
    outer = pass_through.remote([inner])
    [back] = ember.get(outer, timeout=60)
    assert back.hex() == inner_hex
    del inner, back
    wait_for_condition(lambda: counts(inner_hex)[0] == 1)  # held for the result that contains it
    assert in_store(inner_hex)
    [again] = ember.get(outer)
    assert digest(ember.get(again)) == expected_digest(5, N)
    del again, outer
    wait_freed(inner_hex)


def test_large_task_result_holding_refs_keeps_them_alive(baseline):
    refs = [ember.put(pattern(seed, N)) for seed in (6, 7)]
    hexes = [r.hex() for r in refs]
    boxed = boxed_with_pad.remote(refs)
    box = ember.get(boxed, timeout=60)
    boxed_hex = boxed.hex()
    assert in_store(boxed_hex)
    del refs, box
    wait_for_condition(lambda: all(counts(h)[0] == 1 for h in hexes))
    assert all(in_store(h) for h in hexes)
    inner = ember.get(boxed).refs
    assert [digest(ember.get(r)) for r in inner] == [expected_digest(6, N), expected_digest(7, N)]
    del inner, boxed
    wait_freed(boxed_hex, *hexes)


def test_value_put_by_a_task_is_owned_by_its_worker_and_freed_by_it(baseline):
    outer = put_inside.remote(8, N)
    [inner] = ember.get(outer, timeout=60)
    inner_hex = inner.hex()
    assert inner.owner_address()[2] != worker().worker_id  # the task's worker owns it
    local, _submitted, owned = counts(inner)
    assert local >= 1 and not owned
    assert in_store(inner_hex)
    assert digest(ember.get(inner)) == expected_digest(8, N)
    del inner
    assert in_store(inner_hex)  # the result still contains it
    del outer
    wait_for_condition(lambda: not in_store(inner_hex), timeout=15)
    wait_for_condition(lambda: counts(inner_hex) is None)


def test_idle_worker_that_owns_values_is_not_ended(ember_env, ember_start, tmp_path):
    """A surplus idle worker is ended after idle_worker_kill_s, but not while it owns values in use."""
    ember_env(idle_worker_kill_s=0.3)
    ember_start(num_cpus=2)

    @ember.remote(num_cpus=0.5)
    def put_together(seed: int, barrier: str) -> tuple[list[Any], int]:
        # Four at once (0.5 CPU each) so that the node runs more workers than it prestarts.
        open(os.path.join(barrier, str(seed)), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        return [ember.put(pattern(seed, N))], os.getpid()

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    results = ember.get([put_together.remote(seed, str(barrier)) for seed in range(4)], timeout=60)
    finished = time.monotonic()
    pids = [pid for _, pid in results]
    assert len(set(pids)) == 4

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    # The worker whose value nobody references any more is ended once idle (the check runs) ...
    dropped_refs, dropped_pid = results.pop()
    del dropped_refs
    wait_for_condition(lambda: not alive(dropped_pid), timeout=20)
    # ... and, after several idle periods (0.3 s each, checked every 0.5 s), the workers that
    # own values in use are still there and their values readable.
    wait_for_condition(lambda: time.monotonic() - finished > 2.0, timeout=10)
    assert all(alive(pid) for _, pid in results)
    for seed, (refs, _) in enumerate(results):
        assert digest(ember.get(refs[0], timeout=30)) == expected_digest(seed, N)
    # Once nothing references their values, the surplus workers are ended too.
    del results, refs
    wait_for_condition(lambda: len(worker().raylet_call("get_info", None)["workers"]) <= 2, timeout=20)


# ============================================================================ borrowers
def test_borrower_keeps_the_value_alive_until_it_lets_go(baseline):
    holder = Holder.remote()
    try:
        ref = ember.put(pattern(9, N))
        hex_id = ref.hex()
        assert ember.get(holder.hold.remote("k", [ref]), timeout=60) == 1
        del ref
        wait_for_condition(lambda: counts(hex_id)[0] == 0)
        assert borrowers(hex_id) == 1
        assert in_store(hex_id)
        assert ember.get(holder.digests.remote("k"), timeout=60) == [expected_digest(9, N)]
        # Handed back to the owner by the borrower: still the same value.
        [back] = ember.get(holder.refs_of.remote("k"), timeout=60)
        assert digest(ember.get(back)) == expected_digest(9, N)
        del back
        assert ember.get(holder.drop.remote("k"), timeout=60)
        wait_freed(hex_id)
    finally:
        ember.kill(holder)


def test_ref_stored_in_an_actor_by_a_task_outlives_the_task_and_the_driver_ref(baseline):
    holder = Holder.remote()
    try:
        ref = ember.put(pattern(10, N))
        hex_id = ref.hex()
        assert ember.get(store_in_actor.remote(holder, "k", [ref]), timeout=60) == 1
        del ref
        wait_for_condition(lambda: counts(hex_id)[0] == 0)
        # The task is over; the actor it handed the ref to still borrows it.
        wait_for_condition(lambda: borrowers(hex_id) == 1)
        assert in_store(hex_id)
        assert ember.get(holder.digests.remote("k"), timeout=60) == [expected_digest(10, N)]
        assert ember.get(holder.drop.remote("k"), timeout=60)
        wait_freed(hex_id)
    finally:
        ember.kill(holder)


def test_sigkilled_borrower_releases_what_it_borrowed(baseline):
    holder = Holder.remote()
    keeper = Holder.remote()
    owner = Owner.remote()
    try:
        mine = ember.put(pattern(11, N))
        [theirs] = ember.get(owner.put.remote(12, N), timeout=60)
        shared = ember.put(pattern(13, N))
        hexes = [mine.hex(), theirs.hex(), shared.hex()]
        ember.get(holder.hold.remote("k", [mine, theirs, shared]), timeout=60)
        ember.get(keeper.hold.remote("k", [shared]), timeout=60)
        del mine, theirs, shared
        wait_for_condition(lambda: borrowers(hexes[0]) == 1 and borrowers(hexes[2]) == 2)
        assert all(in_store(h) for h in hexes)

        pid = ember.get(holder.pid.remote())
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        # Both owners (this driver and the Owner actor) drop the dead borrower and free...
        wait_freed(hexes[0])
        wait_for_condition(lambda: not in_store(hexes[1]), timeout=15)
        wait_for_condition(lambda: hexes[1] not in ember.get(owner.owned.remote()), timeout=15)
        # ... but not what another borrower still holds.
        assert in_store(hexes[2]) and borrowers(hexes[2]) == 1
        assert ember.get(keeper.digests.remote("k"), timeout=60) == [expected_digest(13, N)]
        ember.get(keeper.drop.remote("k"))
        wait_freed(hexes[2])
    finally:
        for actor in (holder, keeper, owner):
            ember.kill(actor)


def test_owner_death_makes_get_raise_owner_died_quickly(baseline):
    owner = Owner.remote()
    holder = Holder.remote()
    try:
        [read_before] = ember.get(owner.put.remote(14, N), timeout=60)
        [never_read] = ember.get(owner.put.remote(15, N), timeout=60)
        small = ember.put(b"x" * 100, _owner=owner)
        assert digest(ember.get(read_before)) == expected_digest(14, N)
        ember.get(holder.hold.remote("k", [read_before, never_read]), timeout=60)
        hexes = [read_before.hex(), never_read.hex()]
        assert all(in_store(h) for h in hexes)

        pid = ember.get(owner.pid.remote())
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        # The node frees what the dead owner stored, though borrowers still hold refs.
        wait_for_condition(lambda: not any(in_store(h) for h in hexes), timeout=15)
        for ref in (read_before, never_read, small):
            start = time.monotonic()
            with pytest.raises(OwnerDiedError) as info:
                ember.get(ref, timeout=30)
            assert time.monotonic() - start < 10
            assert isinstance(info.value, ObjectLostError)
            assert ref.hex() in str(info.value)
        # A borrower in another process sees the same.
        assert ember.get(holder.digests.remote("k"), timeout=60) == ["OwnerDiedError", "OwnerDiedError"]
    finally:
        ember.kill(holder)
        ember.kill(owner)


# ============================================================================ never freed while reachable
def test_reachable_values_survive_churn_and_a_mapped_array_keeps_its_contents(baseline):
    # A chain of containers: only the outermost is referenced by the driver.
    leaf = ember.put(pattern(16, N))
    leaf_hex = leaf.hex()
    top: Any = leaf
    for depth in range(5):
        top = ember.put({"depth": depth, "next": [top]})
    del leaf
    # An array read zero-copy, whose ref is then dropped: the value is freed, the mapping stays.
    kept_ref = ember.put(pattern(17, N))
    kept_hex = kept_ref.hex()
    kept_array = ember.get(kept_ref)
    del kept_ref
    wait_for_condition(lambda: not in_store(kept_hex), timeout=15)
    # Churn: many values of the same size are written and freed (their files are recycled).
    for seed in range(100, 140):
        ref = ember.put(pattern(seed, N))
        assert digest(ember.get(ref)) == expected_digest(seed, N)
        del ref
    gc.collect()
    assert digest(kept_array) == expected_digest(17, N)
    del kept_array
    # The chain is intact.
    node = ember.get(top)
    for depth in reversed(range(5)):
        assert node["depth"] == depth
        node = ember.get(node["next"][0])
    assert digest(node) == expected_digest(16, N)
    assert in_store(leaf_hex)
    del node, top
    wait_freed(leaf_hex)


def test_refs_in_a_reference_cycle_are_freed_by_the_garbage_collector(baseline):
    ref = ember.put(pattern(18, N))
    hex_id = ref.hex()
    cycle: list[Any] = [ref]
    cycle.append(cycle)
    del ref
    gc.disable()
    try:
        del cycle
        assert in_store(hex_id) and counts(hex_id)[0] == 1  # unreachable, but not yet collected
    finally:
        gc.enable()
    gc.collect()
    wait_freed(hex_id)


# ============================================================================ ember status / ember memory
def _cli_env(token: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EMBER_ADDRESS", None)
    env["EMBER_CLUSTER_TOKEN"] = token
    env.update(extra)
    return env


def _status_objects(address: str, token: str) -> tuple[str, int]:
    result = ember_cli(["status", "--address", address], _cli_env(token))
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Object store: (.+?) / .+ used \(.+\), (\d+) objects", result.stdout)
    assert match, result.stdout
    return match.group(1), int(match.group(2))


def test_freed_memory_shows_in_ember_status(baseline):
    w = worker()
    before = store_stats()["objects"]
    refs = [ember.put(np.full(4 * MiB, i, dtype=np.uint8)) for i in range(3)]
    assert store_stats()["objects"] == before + 3
    wait_for_condition(lambda: _status_objects(w.gcs_address, w.token)[1] == before + 3, timeout=30)
    used_text, _ = _status_objects(w.gcs_address, w.token)
    assert "MiB" in used_text and float(used_text.split()[0]) >= 12.0
    del refs
    wait_for_condition(lambda: store_stats()["objects"] == before, timeout=15)
    wait_for_condition(lambda: _status_objects(w.gcs_address, w.token)[1] == before, timeout=30)


ROW = re.compile(
    r"^(?P<ip>\S+)\s+(?P<pid>\d+)\s+(?P<mode>driver|worker)\s+(?P<size>\d+)\s+(?P<type>[A-Z_]+)\s+"
    r"(?P<owned>yes|no)\s+(?P<oid>[0-9a-f]+)\s*(?P<site>.*)$"
)


def _memory_report(address: str, token: str) -> tuple[dict[str, list[dict[str, str]]], dict[str, str]]:
    """Rows of `ember memory` by node id prefix, and each node's total line."""
    result = ember_cli(["memory", "--address", address], _cli_env(token))
    assert result.returncode == 0, result.stdout + result.stderr
    rows: dict[str, list[dict[str, str]]] = {}
    totals: dict[str, str] = {}
    node = ""
    for line in result.stdout.splitlines():
        header = re.match(r"^--- Node ([0-9a-f]+) at ", line)
        if header:
            node = header.group(1)
            rows[node] = []
            continue
        if line.startswith("Node total:"):
            totals[node] = line
            continue
        match = ROW.match(line)
        if match:
            rows[node].append(match.groupdict())
    return rows, totals


@ember.remote
class Keeper:
    """Puts a value of its own and keeps the ref (the value lives on the actor's node)."""

    def __init__(self, seed: int, n: int) -> None:
        self.ref = ember.put(pattern(seed, n))

    def info(self) -> tuple[int, str, str]:
        return os.getpid(), self.ref.hex(), ember.get_runtime_context().get_node_id()


@pytest.fixture
def clusters(own_cluster: None) -> Iterator[ClusterFactory]:
    factory = ClusterFactory()
    try:
        yield factory
    finally:
        factory.shutdown()


def test_ember_memory_lists_refs_by_owner_type_size_and_call_site(clusters, tmp_path):
    cluster = clusters.make(head_cpus=1, env={"EMBER_record_ref_creation_sites": "1"})
    other = cluster.add_node(num_cpus=1, resources={"other": 1})
    cluster.connect()
    w = worker()
    me = os.getpid()
    head_id = cluster.head_node.node_id

    pinned = ember.put(pattern(20, N)); pinned_line = sys._getframe().f_lineno  # noqa: E702
    local_small = ember.put(12345)
    inner = ember.put(pattern(21, N))
    outer_small = ember.put([inner])
    captured_hex = inner.hex()
    del inner
    gate, started = tmp_path / "gate", str(tmp_path / "started")
    arg = ember.put(pattern(22, N))
    pending = digest_after_gate.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head_id, soft=False)).remote(
        str(gate), started, arg
    )
    keeper = Keeper.options(resources={"other": 1}).remote(23, 2 * N)
    keeper_pid, keeper_obj, keeper_node = ember.get(keeper.info.remote(), timeout=60)
    assert keeper_node == other.node_id
    wait_for_file(started, timeout=60)
    try:
        rows, totals = _memory_report(cluster.address, cluster.token)
        head, second = head_id[:12], other.node_id[:12]
        assert set(rows) == {head, second} and set(totals) == {head, second}
        mine = {r["oid"]: r for r in rows[head] if int(r["pid"]) == me}
        assert all(r["mode"] == "driver" for r in mine.values())

        def size_of(ref: Any) -> int:
            return w.memory_store.get(ref.binary())[1][1]

        row = mine[pinned.hex()]
        assert (row["type"], row["owned"], int(row["size"])) == ("PINNED_IN_MEMORY", "yes", size_of(pinned))
        assert row["site"].endswith(f"test_ownership.py:{pinned_line} (test_ember_memory_lists_refs_by_owner_type_size_and_call_site)")
        assert mine[local_small.hex()]["type"] == "LOCAL_REFERENCE"
        assert mine[outer_small.hex()]["type"] == "LOCAL_REFERENCE"
        assert mine[captured_hex]["type"] == "CAPTURED_IN_OBJECT"
        assert mine[arg.hex()]["type"] == "USED_BY_PENDING_TASK"
        assert int(mine[arg.hex()]["size"]) == size_of(arg)
        handles = [r for r in mine.values() if r["type"] == "ACTOR_HANDLE"]
        assert len(handles) == 1 and handles[0]["oid"] == keeper._actor_id.hex()
        # The keeper's value: owned by the actor's worker, on the other node, with its size.
        theirs = [r for r in rows[second] if r["oid"] == keeper_obj]
        assert len(theirs) == 1
        assert (int(theirs[0]["pid"]), theirs[0]["mode"], theirs[0]["owned"], theirs[0]["type"]) == (
            keeper_pid, "worker", "yes", "PINNED_IN_MEMORY"
        )
        assert int(theirs[0]["size"]) >= 2 * N * 4
        assert "test_ownership.py" in theirs[0]["site"]
        # Per-node totals: what each node's processes own, and its store.
        owned_here = sum(int(r["size"]) for r in rows[head] if r["owned"] == "yes")
        owned_there = sum(int(r["size"]) for r in rows[second] if r["owned"] == "yes")
        assert f"{owned_here / MiB:.2f} MiB owned" in totals[head]
        assert f"{owned_there / MiB:.2f} MiB owned" in totals[second]
        assert "USED_BY_PENDING_TASK: 1" in totals[head] and "CAPTURED_IN_OBJECT: 1" in totals[head]
        assert "PINNED_IN_MEMORY: 1" in totals[second]
    finally:
        Gate(gate).open()
    assert ember.get(pending, timeout=60) == [expected_digest(22, N)]
    ember.kill(keeper)


def test_ember_memory_says_call_sites_are_disabled_by_default(ember_shared):
    w = worker()
    ref = ember.put(pattern(24, N))
    rows, _ = _memory_report(w.gcs_address, w.token)
    [row] = [r for node_rows in rows.values() for r in node_rows if r["oid"] == ref.hex()]
    assert row["site"] == "disabled" and row["type"] == "PINNED_IN_MEMORY"
    del ref


# ============================================================================ the suite's store guard
def _run_inner_suite(tmp_path: Any, source: str) -> Any:
    """An inner pytest run of ``source`` with this suite's conftest.py."""
    import shutil
    import subprocess
    import textwrap

    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(os.path.join(os.path.dirname(__file__), "conftest.py"), suite / "conftest.py")
    (suite / "test_inner.py").write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "bt"), str(suite)],
        capture_output=True, text=True, timeout=120, cwd=str(suite), stdin=subprocess.DEVNULL,
    )


def test_shared_cluster_store_must_return_to_its_baseline(tmp_path):
    result = _run_inner_suite(tmp_path, """
        import numpy as np
        import ember

        KEPT = []

        def test_frees_what_it_stores(ember_shared):
            ref = ember.put(np.zeros(1 << 20, dtype=np.uint8))
            del ref

        def test_keeps_a_value_in_a_module_global(ember_shared):
            KEPT.append(ember.put(np.zeros(3 << 20, dtype=np.uint8)))
    """)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "did not return to its baseline" in result.stdout
    assert "2 passed, 1 error" in result.stdout  # reported once, at the module's end
    assert "the driver still owns: " in result.stdout and "PINNED_IN_MEMORY" in result.stdout


def test_shared_cluster_store_guard_passes_a_clean_module(tmp_path):
    result = _run_inner_suite(tmp_path, """
        import numpy as np
        import ember

        def test_frees_what_it_stores(ember_shared):
            refs = [ember.put(np.zeros(1 << 20, dtype=np.uint8)) for _ in range(3)]
            assert sum(int(x.sum()) for x in ember.get(refs)) == 0
    """)
    assert result.returncode == 0, result.stdout + result.stderr
