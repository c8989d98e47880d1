"""Objects: put/get, zero-copy numpy, timeouts, wait, futures, store capacity and cleanup."""

from __future__ import annotations

import asyncio
import mmap
import os
import sys
import time

import numpy as np
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition, wait_for_file
from ember.exceptions import GetTimeoutError, ObjectStoreFullError, RayError

sys.path.insert(0, os.path.dirname(__file__))
from memory_helpers import object_files  # noqa: E402

MiB = 1024 * 1024


# Its own scheduling class (num_cpus=0.5), so that quick tasks are never queued
# behind it on the same worker (see test_tasks.py::test_short_tasks_not_stuck_behind_a_long_one).
@ember.remote(num_cpus=0.5)
def block_until(path, value=None):
    """Return ``value`` once ``path`` exists (the test creates it); gives up after 60 s."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return value


@ember.remote
def identity(x):
    return x


def _release(path):
    with open(path, "w") as f:
        f.write("go")


def _base_buffer(arr):
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base


def _is_shared_memory_view(arr):
    """The array's memory is a read-only mapping of an object file, not a private copy."""
    base = _base_buffer(arr)
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


# ============================================================================ put / get
@pytest.mark.parametrize(
    "value",
    [0, -7, 3.5, None, True, "text", b"bytes", (1, 2), [1, [2, [3]]], {"a": 1, "b": {"c": [1, 2]}}, {1, 2, 3}],
    ids=repr,
)
def test_put_get_roundtrip_small_values(ember_shared, value):
    assert ember.get(ember.put(value)) == value


def test_put_get_large_bytes(ember_shared):
    blob = os.urandom(5 * MiB)
    ref = ember.put(blob)
    assert ember.get(ref) == blob
    # The value went to the node's shared-memory store, not inline.
    assert os.path.exists(os.path.join(runtime.core_worker().store_dir, ref.hex()))


def test_numpy_arrays_come_back_read_only_and_zero_copy(ember_shared):
    arr = np.arange(1_000_000, dtype=np.float64)
    ref = ember.put(arr)
    out = ember.get(ref)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable is False
    assert _is_shared_memory_view(out)
    with pytest.raises(ValueError):
        out[0] = 1.0


def test_numpy_array_returned_by_a_task_is_read_only(ember_shared):
    @ember.remote
    def make():
        return np.full((512, 512), 7, dtype=np.int32)

    out = ember.get(make.remote())
    assert out.shape == (512, 512) and int(out[3, 4]) == 7
    assert out.flags.writeable is False
    assert _is_shared_memory_view(out)


def test_get_of_a_list_keeps_order(ember_shared):
    refs = [ember.put(i) for i in range(10)] + [identity.remote(i) for i in range(10, 20)]
    assert ember.get(refs) == list(range(20))
    assert ember.get(tuple(refs[:3])) == [0, 1, 2]
    assert ember.get([]) == []


def test_get_rejects_non_refs(ember_shared):
    with pytest.raises(TypeError, match="ObjectRef"):
        ember.get(5)
    with pytest.raises(TypeError, match="element 1"):
        ember.get([ember.put(1), 2])
    with pytest.raises(ValueError, match="timeout"):
        ember.get(ember.put(1), timeout=-1)


def test_put_of_a_ref_is_rejected(ember_shared):
    with pytest.raises(TypeError):
        ember.put(ember.put(1))


def test_get_timeout_raises_get_timeout_error_which_is_a_timeout_error(ember_shared, tmp_path):
    gate = str(tmp_path / "gate")
    ref = block_until.remote(gate, "late")
    try:
        start = time.monotonic()
        with pytest.raises(GetTimeoutError) as info:
            ember.get(ref, timeout=0.3)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, RayError)
        assert time.monotonic() - start >= 0.3
        with pytest.raises(TimeoutError):
            ember.get([ember.put(1), ref], timeout=0)
    finally:
        _release(gate)
    assert ember.get(ref, timeout=30) == "late"


# ============================================================================ wait
def test_wait_returns_ready_first_in_input_order(ember_shared, tmp_path):
    gate = str(tmp_path / "gate")
    slow = block_until.remote(gate, "slow")
    try:
        fast = [identity.remote(i) for i in range(4)]
        refs = [fast[0], slow, fast[1], fast[2], fast[3]]
        ready, not_ready = ember.wait(refs, num_returns=4, timeout=30)
        assert ready == [fast[0], fast[1], fast[2], fast[3]]
        assert not_ready == [slow]

        ready, not_ready = ember.wait(refs, num_returns=2, timeout=30)
        assert ready == [fast[0], fast[1]]
        assert not_ready == [slow, fast[2], fast[3]]

        # Timeout: asks for everything, gets what is ready.
        start = time.monotonic()
        ready, not_ready = ember.wait(refs, num_returns=5, timeout=0.2)
        assert time.monotonic() - start >= 0.2
        assert slow in not_ready and len(ready) == 4

        ready, not_ready = ember.wait([slow], timeout=0)
        assert ready == [] and not_ready == [slow]
    finally:
        _release(gate)
    ready, not_ready = ember.wait([slow], timeout=30)
    assert ready == [slow] and not_ready == []


def test_wait_default_num_returns_is_one(ember_shared):
    refs = [ember.put(i) for i in range(3)]
    ready, not_ready = ember.wait(refs)
    assert ready == refs[:1] and not_ready == refs[1:]


def test_wait_on_an_empty_list_returns_two_empty_lists(ember_shared):
    assert ember.wait([]) == ([], [])
    assert ember.wait([], num_returns=3, timeout=0) == ([], [])


def test_wait_argument_errors(ember_shared):
    a, b = ember.put(1), ember.put(2)
    with pytest.raises(ValueError, match="unique"):
        ember.wait([a, a])
    with pytest.raises(ValueError, match="num_returns"):
        ember.wait([a, b], num_returns=3)
    with pytest.raises(ValueError, match="num_returns"):
        ember.wait([a, b], num_returns=0)
    with pytest.raises(ValueError, match="num_returns"):
        ember.wait([a, b], num_returns=-1)
    with pytest.raises(TypeError):
        ember.wait(a)
    with pytest.raises(TypeError):
        ember.wait([a, "b"])
    with pytest.raises(ValueError, match="timeout"):
        ember.wait([a], timeout=-1)


# ============================================================================ futures
def test_await_ref_inside_asyncio(ember_shared):
    async def main():
        direct = await identity.remote(5)
        gathered = await asyncio.gather(identity.remote(1), identity.remote(2), ember.put(3))
        return direct, gathered

    assert asyncio.run(main()) == (5, [1, 2, 3])


def test_await_ref_raises_the_task_error(ember_shared):
    @ember.remote
    def fail():
        raise KeyError("nope")

    async def main():
        await fail.remote()

    with pytest.raises(KeyError):
        asyncio.run(main())


def test_ref_future(ember_shared, tmp_path):
    assert identity.remote("x").future().result(timeout=30) == "x"
    gate = str(tmp_path / "gate")
    ref = block_until.remote(gate, 9)
    fut = ref.future()
    try:
        assert not fut.done()
    finally:
        _release(gate)
    assert fut.result(timeout=30) == 9


# ============================================================================ store capacity
def test_object_store_full_error_names_how_full_the_store_is(ember_env, ember_start):
    ember_env(object_store_fallback_max_bytes=1)  # no room for fallback files (test_fallback_allocation.py)
    ember_start(num_cpus=1, object_store_memory=32 * MiB)
    with pytest.raises(ObjectStoreFullError, match=r"0 B of 32\.0 MiB used"):
        ember.put(np.zeros(40 * MiB, dtype=np.uint8))

    # A value that fits once older ones are spilled to disk is stored, and nothing is lost.
    first = ember.put(np.full(20 * MiB, 1, dtype=np.uint8))
    second = ember.put(np.full(20 * MiB, 2, dtype=np.uint8))
    worker = runtime.core_worker()
    assert worker.raylet_call("store_stats", None)["spilled_objects"] == 1
    assert int(ember.get(first)[-1]) == 1 and int(ember.get(second)[0]) == 2

    # Dropping the refs frees the room, in memory and on disk.
    del first, second
    wait_for_condition(lambda: worker.raylet_call("store_stats", None)["used"] == 0, timeout=10)
    wait_for_condition(lambda: worker.raylet_call("store_stats", None)["spilled_bytes"] == 0, timeout=10)


def test_object_store_full_when_spilling_cannot_make_room(ember_start, monkeypatch):
    monkeypatch.setenv("EMBER_object_spilling_directory", "/proc/ember-cannot-write-here")
    monkeypatch.setenv("EMBER_object_store_fallback_max_bytes", "1")  # and no room for fallback files
    ember_start(num_cpus=1, object_store_memory=32 * MiB)
    first = ember.put(np.zeros(20 * MiB, dtype=np.uint8))
    with pytest.raises(ObjectStoreFullError) as info:
        ember.put(np.zeros(20 * MiB, dtype=np.uint8))
    message = str(info.value)
    assert "20.0 MiB of 32.0 MiB used by 1 objects" in message
    assert "Largest holders: driver pid" in message  # names who holds the memory
    assert "object_store_memory" in message  # says what to do
    assert ember.get(first).nbytes == 20 * MiB  # nothing lost


def test_task_returning_too_large_a_value_fails_with_object_store_full(ember_env, ember_start):
    ember_env(object_store_fallback_max_bytes=1)  # no room for fallback files (test_fallback_allocation.py)
    ember_start(num_cpus=1, object_store_memory=32 * MiB)

    @ember.remote
    def too_big():
        return np.zeros(40 * MiB, dtype=np.uint8)

    with pytest.raises(ObjectStoreFullError, match="32.0 MiB"):
        ember.get(too_big.remote(), timeout=60)


def test_freed_objects_leave_the_store(ember_shared):
    worker = runtime.core_worker()
    ref = ember.put(os.urandom(2 * MiB))
    path = os.path.join(worker.store_dir, ref.hex())
    assert os.path.exists(path)
    del ref
    wait_for_condition(lambda: not os.path.exists(path), timeout=10)


def test_store_files_are_removed_after_shutdown(ember_start):
    ember_start()
    worker = runtime.core_worker()
    store_dir = worker.store_dir
    ref = ember.put(os.urandom(MiB))
    assert os.path.exists(os.path.join(store_dir, ref.hex()))
    assert store_dir.startswith("/dev/shm/ember_")
    ember.shutdown()
    assert not os.path.exists(store_dir)


def test_value_outlives_its_put_ref_while_a_task_uses_it(ember_shared, tmp_path):
    gate = str(tmp_path / "gate")
    started = str(tmp_path / "started")

    @ember.remote
    def use_later(blob, started, gate):
        with open(started, "w") as f:
            f.write("1")
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.005)
        return len(blob)

    blob_ref = ember.put(os.urandom(MiB))
    result = use_later.remote(blob_ref, started, gate)
    del blob_ref  # the pending task still holds the value
    wait_for_file(started)
    _release(gate)
    assert ember.get(result, timeout=30) == MiB


def test_large_result_of_a_dropped_ref_is_freed(ember_shared):
    worker = runtime.core_worker()

    @ember.remote
    def make():
        return np.zeros(2 * MiB, dtype=np.uint8)

    before = object_files(worker.store_dir)
    dropped_task = make.remote().task_id()  # the ref is dropped at once
    kept = make.remote()
    assert ember.get(kept).nbytes == 2 * MiB
    wait_for_condition(lambda: worker.submitter.num_pending() == 0, timeout=30)  # both tasks replied

    def only_kept_remains():
        new = object_files(worker.store_dir) - before  # free-* files kept for reuse are not objects
        return new == {kept.hex()}  # noqa: F821 (kept is deleted after this closure's last use)

    wait_for_condition(only_kept_remains, timeout=10)
    assert not any(name.startswith(dropped_task.hex()) for name in os.listdir(worker.store_dir))
    path = os.path.join(worker.store_dir, kept.hex())
    del kept
    wait_for_condition(lambda: not os.path.exists(path), timeout=10)
