"""MemoryStore.wait: counts, timeouts and several waiting threads (no cluster)."""

from __future__ import annotations

import threading
import time

from ember.core.memory_store import INLINE, MemoryStore


def _entry(n: int) -> tuple[int, list[object]]:
    return (INLINE, [0, n, []])


def test_wait_returns_at_once_when_enough_are_ready() -> None:
    store = MemoryStore()
    store.put(b"a", _entry(1))
    assert store.wait([b"a", b"b"], 1, None) == {b"a"}
    assert store.wait([b"a", b"b"], 2, 0) == {b"a"}


def test_wait_wakes_when_the_needed_count_arrives() -> None:
    store = MemoryStore()
    ids = [bytes([i]) for i in range(100)]
    result: list[set[bytes]] = []
    thread = threading.Thread(target=lambda: result.append(store.wait(ids, 100, 10)))
    thread.start()
    for oid in ids:
        store.put(oid, _entry(0))
    thread.join(10)
    assert result == [set(ids)]
    assert not store._waiting


def test_wait_timeout_returns_the_ready_subset_and_unregisters() -> None:
    store = MemoryStore()
    store.put(b"a", _entry(1))
    start = time.monotonic()
    assert store.wait([b"a", b"b", b"c"], 3, 0.05) == {b"a"}
    assert time.monotonic() - start >= 0.05
    assert not store._waiting
    store.put(b"b", _entry(2))  # nobody waits any more: no error
    assert store.wait([b"a", b"b", b"c"], 2, 0) == {b"a", b"b"}


def test_two_threads_waiting_for_overlapping_ids() -> None:
    store = MemoryStore()
    results: dict[str, set[bytes]] = {}

    def wait(name: str, ids: list[bytes], num: int) -> None:
        results[name] = store.wait(ids, num, 10)

    t1 = threading.Thread(target=wait, args=("one", [b"x", b"y"], 2))
    t2 = threading.Thread(target=wait, args=("two", [b"y", b"z"], 1))
    t1.start()
    t2.start()
    time.sleep(0.05)
    store.put(b"y", _entry(1))
    t2.join(10)
    assert results["two"] == {b"y"}
    assert t1.is_alive()
    store.put(b"x", _entry(2))
    t1.join(10)
    assert results["one"] == {b"x", b"y"}
    assert not store._waiting


def test_delete_of_an_unknown_id_is_a_no_op() -> None:
    store = MemoryStore()
    assert store.delete(b"nothing") is None
    store.put(b"a", _entry(1))
    assert store.delete(b"a") == _entry(1)
    assert not store.contains(b"a")


def test_callbacks_run_on_put_and_validate_holds_after_every_step() -> None:
    store = MemoryStore()
    seen: list[object] = []
    store.on_ready(b"a", seen.append)
    store.validate()
    assert store.has_callbacks(b"a") and seen == []
    store.put(b"a", _entry(1))
    store.validate()
    assert seen == [_entry(1)] and not store.has_callbacks(b"a")
    store.on_ready(b"a", seen.append)  # already there: called at once
    assert len(seen) == 2
    store.on_ready(b"b", seen.append)
    assert store.delete(b"b") is None  # a delete drops the waiting callbacks too
    store.validate()
    assert not store.has_callbacks(b"b")
    assert store.delete(b"a") == _entry(1) and len(store) == 0
    store.validate()


def test_validate_reports_a_callback_left_for_an_entry_that_exists() -> None:
    import pytest

    store = MemoryStore()
    store.put(b"a", _entry(1))
    store._callbacks[b"a"] = [lambda entry: None]
    with pytest.raises(AssertionError, match="callbacks wait for"):
        store.validate()
