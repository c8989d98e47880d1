"""The in-process store of object *entries*, and waiting for them.

An entry says where a value is, not necessarily the value itself:

  ``(INLINE, [flags, pickle, buffers])``  the serialized value (small objects)
  ``(PLASMA, [node_id, size, raylet_address])``  a file in that node's object store

Owners put entries when a task replies or a ``put`` finishes; borrowers put
entries they fetched from owners (a cache dropped when their last local ref
goes). Threads wait on a condition; the I/O loop registers callbacks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

INLINE = 0
PLASMA = 1

Entry = tuple[int, Any]


class MemoryStore:
    def __init__(self) -> None:
        self._entries: dict[bytes, Entry] = {}
        # Guards entries, callbacks and waiters. A plain lock, taken once per
        # task result and per freed ref; each waiting thread has a condition on it.
        self._lock = threading.Lock()
        #: Object id -> the threads in ``wait`` that still miss it (guarded by ``_lock``).
        self._waiting: dict[bytes, list[_Waiter]] = {}
        self._callbacks: dict[bytes, list[Callable[[Entry], None]]] = {}

    def put(self, object_id: bytes, entry: Entry) -> None:
        with self._lock:
            self._entries[object_id] = entry
            callbacks = self._callbacks.pop(object_id, None)
            waiters = self._waiting.pop(object_id, None)
            if waiters:
                for waiter in waiters:
                    waiter.arrived(object_id)
        if callbacks:
            for fn in callbacks:
                fn(entry)

    def get(self, object_id: bytes) -> Entry | None:
        return self._entries.get(object_id)

    def contains(self, object_id: bytes) -> bool:
        return object_id in self._entries

    def delete(self, object_id: bytes) -> Entry | None:
        if object_id not in self._entries and object_id not in self._callbacks:
            # The common case for a borrowed ref: nothing here. Checking
            # without the lock is safe: each lookup is atomic, and a put that
            # lands right after is the same as one that lands after a delete.
            return None
        with self._lock:
            self._callbacks.pop(object_id, None)
            return self._entries.pop(object_id, None)

    def has_callbacks(self, object_id: bytes) -> bool:
        """Whether something on the loop waits for this entry."""
        return bool(self._callbacks.get(object_id))

    def on_ready(self, object_id: bytes, fn: Callable[[Entry], None]) -> None:
        """Call ``fn(entry)`` once the entry exists (now, if it already does)."""
        with self._lock:
            entry = self._entries.get(object_id)
            if entry is None:
                self._callbacks.setdefault(object_id, []).append(fn)
                return
        fn(entry)

    def wait(self, object_ids: Iterable[bytes], num_ready: int, timeout: float | None) -> set[bytes]:
        """Block until ``num_ready`` of ``object_ids`` have entries or ``timeout`` passes."""
        ids = set(object_ids)
        entries = self._entries
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            missing = {oid for oid in ids if oid not in entries}
            needed = num_ready - (len(ids) - len(missing))
            if needed <= 0:
                return ids - missing
            # Registered under each missing id, the waiter counts arrivals
            # itself and is woken once, when enough are there: no rescans of
            # the whole list on every put (a get of 1000 results is O(1000)).
            waiter = _Waiter(self._lock, missing, needed)
            waiting = self._waiting
            for oid in missing:
                waiting.setdefault(oid, []).append(waiter)
            try:
                while waiter.needed > 0:
                    if deadline is None:
                        waiter.cond.wait(1.0)
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        waiter.cond.wait(remaining)
            finally:
                for oid in waiter.missing:
                    others = waiting.get(oid)
                    if others is not None:
                        others.remove(waiter)
                        if not others:
                            del waiting[oid]
        return ids - waiter.missing

    def validate(self) -> None:
        """Raise ``AssertionError`` if an invariant does not hold (for tests).

        Nothing waits for an entry that exists (callbacks run and waiters are told on
        ``put``), and each waiting thread is registered under exactly the ids it still misses.
        """
        with self._lock:
            problems = [f"callbacks wait for {oid.hex()}, which is here" for oid in self._callbacks
                        if oid in self._entries]
            for oid, waiters in self._waiting.items():
                if oid in self._entries:
                    problems.append(f"a thread waits for {oid.hex()}, which is here")
                problems += [f"a waiter under {oid.hex()} does not miss it" for w in waiters if oid not in w.missing]
                if not waiters:
                    problems.append(f"an empty waiter list is kept for {oid.hex()}")
        if problems:
            raise AssertionError("memory store: " + "; ".join(problems))

    def __len__(self) -> int:
        return len(self._entries)


class _Waiter:
    """One thread blocked in ``MemoryStore.wait``; touched only under the store's lock."""

    __slots__ = ("cond", "missing", "needed")

    def __init__(self, lock: threading.Lock, missing: set[bytes], needed: int) -> None:
        self.cond = threading.Condition(lock)
        self.missing = missing  # the awaited ids that have no entry yet
        self.needed = needed  # how many more must arrive before the wait is over

    def arrived(self, object_id: bytes) -> None:
        self.missing.discard(object_id)
        self.needed -= 1
        if self.needed == 0:
            self.cond.notify()
