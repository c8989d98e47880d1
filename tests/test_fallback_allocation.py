"""Fallback allocation: objects the object store cannot take even after spilling.

Such an object (a put, a task's return, a copy pulled from another node) is
written to a file on disk in the session's ``fallback/`` folder instead of
failing; readers map it read-only (zero-copy), it counts in the node's
report (``ObjectStoreFallback``), ``ember status`` and ``ember memory`` show
it, and it is freed like any other object. ``ObjectStoreFullError`` remains
for when the disk cannot take it either (here: a fallback quota).
"""

from __future__ import annotations

import glob
import mmap
import os

import numpy as np
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition
from ember.cluster_utils import Cluster
from ember.exceptions import ObjectStoreFullError
from tests.cli_cluster import ember_cli

MiB = 1024 * 1024
STORE = 100 * MiB
BIG = 150 * MiB  # larger than the whole store


def fallback_files() -> list[str]:
    return glob.glob(os.path.join(runtime.core_worker().session_dir, "fallback", "*", "*"))


def fallback_totals() -> tuple[int, int]:
    nodes = [n for n in ember.nodes() if n["Alive"]]
    return sum(n["ObjectStoreFallback"] for n in nodes), sum(n["ObjectStoreFallbackObjects"] for n in nodes)


def maps_a_file(array: np.ndarray) -> bool:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return isinstance(base, mmap.mmap)


@ember.remote
def checksum(array: np.ndarray) -> tuple[int, int, bool]:
    return int(array[::4096].sum()), array.nbytes, maps_a_file(array)


@ember.remote
def make(nbytes: int, fill: int) -> np.ndarray:
    return np.full(nbytes, fill, dtype=np.uint8)


@pytest.fixture
def small_store(ember_start):
    ember_start(num_cpus=2, object_store_memory=STORE)


def test_a_put_larger_than_the_store_goes_to_a_fallback_file(small_store, tmp_path):
    ref = ember.put(np.full(BIG, 7, dtype=np.uint8))
    value = ember.get(ref)
    assert value.nbytes == BIG and value[0] == value[-1] == 7
    assert not value.flags.writeable and maps_a_file(value)  # zero-copy, read-only
    assert ember.get(checksum.remote(ref)) == (7 * len(value[::4096]), BIG, True)
    [path] = fallback_files()
    assert os.path.getsize(path) >= BIG
    wait_for_condition(lambda: fallback_totals() == (os.path.getsize(path), 1), timeout=10)
    status = ember_cli(["status", "--address", runtime.core_worker().gcs_address], dict(os.environ))
    assert status.returncode == 0, status.stderr
    assert "in 1 fallback file(s) on disk" in status.stdout
    memory = ember_cli(["memory", "--address", runtime.core_worker().gcs_address], dict(os.environ))
    assert memory.returncode == 0, memory.stderr
    assert "in 1 fallback file(s) on disk" in memory.stdout
    del value, ref
    wait_for_condition(lambda: not fallback_files() and fallback_totals() == (0, 0), timeout=10)


def test_a_task_return_larger_than_the_store_goes_to_a_fallback_file(small_store):
    ref = make.remote(BIG, 3)
    value = ember.get(ref)
    assert value.nbytes == BIG and value[BIG // 2] == 3 and maps_a_file(value)
    assert len(fallback_files()) == 1
    del value, ref
    wait_for_condition(lambda: not fallback_files() and fallback_totals() == (0, 0), timeout=10)


def test_objects_that_fit_still_use_the_store(small_store):
    ref = ember.put(np.zeros(10 * MiB, dtype=np.uint8))
    assert ember.get(ref).nbytes == 10 * MiB
    assert fallback_files() == []


def test_the_store_full_error_remains_when_the_disk_cannot_take_it(ember_env, ember_start):
    ember_env(object_store_fallback_max_bytes=120 * MiB)
    ember_start(num_cpus=2, object_store_memory=STORE)
    with pytest.raises(ObjectStoreFullError, match="fallback file on disk either.*120.0 MiB allowed"):
        ember.put(np.zeros(BIG, dtype=np.uint8))
    assert fallback_files() == []
    ok = ember.put(np.zeros(110 * MiB, dtype=np.uint8))  # under the quota: falls back
    assert ember.get(ok).nbytes == 110 * MiB and len(fallback_files()) == 1
    del ok
    wait_for_condition(lambda: not fallback_files(), timeout=10)


def test_a_copy_pulled_to_another_node_falls_back_too(monkeypatch):
    monkeypatch.delenv("EMBER_CLUSTER_TOKEN", raising=False)
    cluster = Cluster(initialize_head=False, shutdown_at_exit=False)
    try:
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
        other = cluster.add_node(num_cpus=1, object_store_memory=STORE, resources={"other": 1})
        ember.init(address=cluster.address)
        ref = ember.put(np.full(BIG, 5, dtype=np.uint8))
        remote_checksum = checksum.options(resources={"other": 1})
        assert ember.get(remote_checksum.remote(ref), timeout=60) == (5 * len(range(0, BIG, 4096)), BIG, True)
        by_node = {n["NodeID"]: n["ObjectStoreFallbackObjects"] for n in ember.nodes() if n["Alive"]}
        wait_for_condition(
            lambda: {n["NodeID"]: n["ObjectStoreFallbackObjects"] for n in ember.nodes() if n["Alive"]}
            == dict.fromkeys(by_node, 1),
            timeout=10,
        )
        assert other.node_id in by_node
        del ref
        wait_for_condition(lambda: not fallback_files() and fallback_totals() == (0, 0), timeout=15)
    finally:
        cluster.shutdown()
