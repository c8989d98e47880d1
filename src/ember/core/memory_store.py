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
        # Held through the lock itself (``with self._lock``), not the
        # condition: ``Condition.__enter__``/``__exit__`` are Python calls,
        # and this lock is taken once per task result and per freed ref.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: Threads inside ``wait`` (guarded by ``_lock``): ``put`` notifies only if any.
        self._waiters = 0
        self._callbacks: dict[bytes, list[Callable[[Entry], None]]] = {}

    def put(self, object_id: bytes, entry: Entry) -> None:
        with self._lock:
            self._entries[object_id] = entry
            callbacks = self._callbacks.pop(object_id, None)
            if self._waiters:
                self._cond.notify_all()
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
            # Every put wakes us: check again only the ids still missing, not
            # all of them (a get of 1000 task results wakes up many times).
            pending = [oid for oid in ids if oid not in entries]
            self._waiters += 1
            try:
                while len(ids) - len(pending) < num_ready:
                    if deadline is None:
                        self._cond.wait(1.0)
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    pending = [oid for oid in pending if oid not in entries]
            finally:
                self._waiters -= 1
        return ids.difference(pending)

    def __len__(self) -> int:
        return len(self._entries)
