"""Spilling: more data than the object store holds, kept on disk and read back.

* 2 GiB (256 x 8 MiB) through a 75 MiB store while every ref is held, read back
  in random order with checksums, then freed: memory, store files and spill files.
* Spill files are deleted with their objects (also after a restore).
* ``ObjectStoreFullError`` only when spilling cannot make room (the spill
  location is unusable, or one object is larger than the store), naming the
  largest holders.
* Spilling to an fsspec URL (``local://``, handled by fsspec) and to a
  ``file://`` URL; the node spills into a folder of its own there and never
  touches anything else in the location.
* An object spilled on one node is read on another, both ways.
"""

from __future__ import annotations

import os
import random
import sys
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition
from ember.exceptions import ObjectStoreFullError

sys.path.insert(0, os.path.dirname(__file__))
from memory_helpers import (  # noqa: E402
    ClusterFactory,
    MiB,
    object_files,
    spill_files,
    store_stats,
    wait_store_empty,
)

VALUE = 8 * MiB


def value_of(base: np.ndarray, i: int) -> np.ndarray:
    """The i-th 8 MiB value: a random base XOR its index (cheap to make, all different)."""
    return base ^ np.uint8(i % 256)


def crc(array: Any) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return np.random.default_rng(20261122).integers(0, 256, VALUE, dtype=np.uint8)


def worker() -> Any:
    return runtime.core_worker()


def node_spill_dir() -> str:
    """The default spill folder of this driver's node."""
    w = worker()
    return os.path.join(w.session_dir, "spill", w.node_id.hex()[:12])


@ember.remote
def crc_of(x: Any) -> int:
    return crc(x)


# ============================================================================ spilling and restoring
def test_two_gib_through_a_75_mib_store_with_every_ref_held(ember_start, base):
    ember_start(num_cpus=2, object_store_memory=75 * MiB)
    capacity = store_stats()["capacity"]
    refs, sums = [], []
    for i in range(256):
        value = value_of(base, i)
        sums.append(crc(value))
        refs.append(ember.put(value))
        if i % 32 == 31:
            stats = store_stats()
            assert stats["used"] <= capacity
    stats = store_stats()
    assert stats["spilled_objects"] >= 256 - capacity // VALUE
    assert stats["spilled_bytes"] + stats["used"] >= 256 * VALUE  # nothing dropped
    # Every spilled object has its file (a background spill may still be copying one).
    wait_for_condition(lambda: len(spill_files(node_spill_dir())) == store_stats()["spilled_objects"], timeout=15)

    order = list(range(256))
    random.Random(7).shuffle(order)
    for i in order:
        array = ember.get(refs[i])
        assert array.nbytes == VALUE and crc(array) == sums[i], f"value {i} came back wrong"
        del array
    # Tasks read spilled values too (restored by their own node daemon).
    picks = order[:8]
    assert ember.get([crc_of.remote(refs[i]) for i in picks], timeout=120) == [sums[i] for i in picks]
    assert store_stats()["used"] <= capacity

    del refs
    wait_store_empty(timeout=60)
    wait_for_condition(lambda: not spill_files(node_spill_dir()), timeout=30)
    assert not object_files(worker().store_dir)


def test_spill_files_are_deleted_with_their_objects(ember_start, base):
    ember_start(num_cpus=1, object_store_memory=40 * MiB)
    refs = [ember.put(value_of(base, i)) for i in range(10)]
    spill_dir = node_spill_dir()
    wait_for_condition(lambda: len(spill_files(spill_dir)) == store_stats()["spilled_objects"], timeout=15)
    spilled = spill_files(spill_dir)
    assert spilled and spilled <= {r.hex() for r in refs}
    in_memory = object_files(worker().store_dir)
    assert in_memory | spilled == {r.hex() for r in refs}

    # Restoring one keeps its spill file (so spilling it again is free) ...
    restored = next(r for r in refs if r.hex() in spilled)
    assert crc(ember.get(restored)) == crc(value_of(base, refs.index(restored)))
    assert restored.hex() in object_files(worker().store_dir) and restored.hex() in spill_files(spill_dir)
    # ... and freeing it deletes both copies.
    restored_hex = restored.hex()
    refs.remove(restored)
    del restored
    wait_for_condition(
        lambda: restored_hex not in spill_files(spill_dir) and restored_hex not in object_files(worker().store_dir),
        timeout=15,
    )
    # Freeing only spilled objects deletes exactly their files.
    gone = [r for r in refs if r.hex() in spill_files(spill_dir)][:3]
    gone_hex = {r.hex() for r in gone}
    kept_hex = {r.hex() for r in refs} - gone_hex
    for r in gone:
        refs.remove(r)
    del gone, r
    wait_for_condition(lambda: not gone_hex & spill_files(spill_dir), timeout=15)
    assert kept_hex <= spill_files(spill_dir) | object_files(worker().store_dir)
    for ref in refs:
        assert ember.get(ref).nbytes == VALUE
    del ref, refs
    wait_store_empty()
    wait_for_condition(lambda: not spill_files(spill_dir), timeout=15)


def test_a_dead_owners_spilled_objects_are_deleted(ember_start, base):
    import signal

    ember_start(num_cpus=1, object_store_memory=40 * MiB)

    @ember.remote
    class Owner:
        def __init__(self) -> None:
            self.refs: list[Any] = []

        def fill(self, values: list[np.ndarray]) -> list[str]:
            self.refs += [ember.put(v) for v in values]
            return [r.hex() for r in self.refs]

        def pid(self) -> int:
            return os.getpid()

    owner = Owner.remote()
    hexes = []
    for i in range(0, 8, 2):  # 8 x 8 MiB through a 40 MiB store
        hexes = ember.get(owner.fill.remote([value_of(base, i), value_of(base, i + 1)]), timeout=60)
    spill_dir = node_spill_dir()
    wait_for_condition(lambda: len(spill_files(spill_dir)) == store_stats()["spilled_objects"] > 0, timeout=15)
    assert spill_files(spill_dir) | object_files(worker().store_dir) == set(hexes)
    os.kill(ember.get(owner.pid.remote()), signal.SIGKILL)
    # The node frees everything the dead owner stored: in memory and on disk.
    wait_store_empty()
    wait_for_condition(lambda: not spill_files(spill_dir), timeout=15)
    assert not object_files(worker().store_dir)


# ============================================================================ when the store is full
def test_store_full_error_when_spilling_cannot_make_room_names_the_largest_holders(ember_env, ember_start):
    ember_env(object_spilling_directory="/proc/ember-nope", object_store_fallback_max_bytes=1)  # no fallback files
    ember_start(num_cpus=1, object_store_memory=32 * MiB)

    @ember.remote
    class Hoarder:
        def __init__(self) -> None:
            self.refs = [ember.put(np.zeros(6 * MiB, dtype=np.uint8)) for _ in range(2)]

        def pid(self) -> int:
            return os.getpid()

    hoarder = Hoarder.remote()
    hoarder_pid = ember.get(hoarder.pid.remote(), timeout=60)
    mine = ember.put(np.ones(14 * MiB, dtype=np.uint8))
    with pytest.raises(ObjectStoreFullError) as info:
        ember.put(np.zeros(8 * MiB, dtype=np.uint8))
    message = str(info.value)
    assert "does not fit even after spilling" in message
    # Largest first: this driver (14 MiB), then the actor's worker (2 objects, 12 MiB).
    holders = message.split("Largest holders: ")[1]
    assert holders.startswith(f"driver pid {os.getpid()} holds 1 object(s), 14.0 MiB")
    assert f"worker pid {hoarder_pid} holds 2 object(s), 12.0 MiB" in holders
    assert "object_store_memory" in message  # what to do
    # Nothing was lost, and room made by freeing is used.
    assert int(ember.get(mine)[-1]) == 1
    del mine
    wait_for_condition(lambda: store_stats()["used"] < 20 * MiB, timeout=15)
    assert ember.get(ember.put(np.full(8 * MiB, 3, dtype=np.uint8)))[0] == 3
    ember.kill(hoarder)


def test_one_object_larger_than_the_store_fails_though_spilling_works(ember_env, ember_start, base):
    ember_env(object_store_fallback_max_bytes=1)  # no room for fallback files (test_fallback_allocation.py)
    ember_start(num_cpus=1, object_store_memory=32 * MiB)
    held = [ember.put(value_of(base, i)) for i in range(5)]  # 40 MiB: some spilled
    assert store_stats()["spilled_objects"] >= 1
    with pytest.raises(ObjectStoreFullError, match=r"of 40\.0 MiB does not fit even after spilling"):
        ember.put(np.zeros(40 * MiB, dtype=np.uint8))

    @ember.remote
    def too_big() -> np.ndarray:
        return np.zeros(40 * MiB, dtype=np.uint8)

    with pytest.raises(ObjectStoreFullError):
        ember.get(too_big.remote(), timeout=60)
    assert [crc(ember.get(r)) for r in held] == [crc(value_of(base, i)) for i in range(5)]
    del held
    wait_store_empty()


# ============================================================================ spill locations
@pytest.mark.parametrize("scheme", ["local://", "file://"])
def test_spilling_to_an_url_uses_a_folder_of_its_own(ember_env, ember_start, tmp_path, base, scheme):
    if scheme == "local://":
        pytest.importorskip("fsspec")
    location = tmp_path / "spill here"
    location.mkdir()
    (location / "unrelated.txt").write_text("the user's")
    ember_env(object_spilling_directory=f"{scheme}{location}")
    ember_start(num_cpus=1, object_store_memory=40 * MiB)
    node_dir = location / f"ember_spilled_objects_{worker().node_id.hex()[:12]}"

    refs = [ember.put(value_of(base, i)) for i in range(10)]
    assert store_stats()["spilled_objects"] >= 5
    hexes = {r.hex() for r in refs}

    def spilled_there() -> bool:
        return spill_files(str(node_dir)) == hexes - object_files(worker().store_dir)

    wait_for_condition(spilled_there, timeout=15)
    assert ember.get([crc_of.remote(r) for r in refs], timeout=120) == [crc(value_of(base, i)) for i in range(10)]
    assert [crc(ember.get(r)) for r in reversed(refs)] == [crc(value_of(base, i)) for i in reversed(range(10))]
    del refs
    wait_store_empty()
    wait_for_condition(lambda: not spill_files(str(node_dir)), timeout=15)
    ember.shutdown()
    # The node's own folder is gone; what else was there is untouched.
    assert sorted(os.listdir(location)) == ["unrelated.txt"]
    assert (location / "unrelated.txt").read_text() == "the user's"


# ============================================================================ across nodes
@pytest.fixture
def clusters(own_cluster: None) -> Iterator[ClusterFactory]:
    factory = ClusterFactory()
    try:
        yield factory
    finally:
        factory.shutdown()


@ember.remote(resources={"second": 0.01})
def crcs_there(refs: list[Any]) -> list[int]:
    return [crc(ember.get(r, timeout=60)) for r in refs]


@ember.remote(resources={"second": 0.01})
def make_there(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, VALUE, dtype=np.uint8)


@ember.remote(resources={"second": 0.01})
def stats_there() -> dict[str, int]:
    return runtime.core_worker().raylet_call("store_stats", None)


def test_objects_spilled_on_one_node_are_read_on_another(clusters, base):
    cluster = clusters.make(head_cpus=1, object_store_memory=40 * MiB)
    cluster.add_node(num_cpus=1, resources={"second": 1}, object_store_memory=40 * MiB)
    cluster.connect()
    # Put here until most are spilled, then read them all on the other node.
    refs = [ember.put(value_of(base, i)) for i in range(8)]
    assert store_stats()["spilled_objects"] >= 4
    assert ember.get(crcs_there.remote(refs), timeout=120) == [crc(value_of(base, i)) for i in range(8)]
    # Made and spilled over there; read here.
    made = [make_there.remote(seed) for seed in range(8)]
    ember.wait(made, num_returns=len(made), fetch_local=False, timeout=120)
    assert ember.get(stats_there.remote(), timeout=60)["spilled_objects"] >= 4
    for seed, ref in enumerate(made):
        expected = np.random.default_rng(seed).integers(0, 256, VALUE, dtype=np.uint8)
        assert crc(ember.get(ref, timeout=60)) == crc(expected)
    del refs, made, ref
    # Freed everywhere: the primaries, their spill files and the copies pulled to the other node.
    wait_store_empty()

    def empty_there() -> bool:
        stats = ember.get(stats_there.remote(), timeout=60)
        return stats["objects"] == 0 and stats["used"] == 0 and stats["spilled_objects"] == 0

    wait_for_condition(empty_there, timeout=30)
    wait_for_condition(lambda: not spill_files(os.path.join(worker().session_dir, "spill")), timeout=15)
