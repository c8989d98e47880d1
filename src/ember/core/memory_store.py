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
        self._cond = threading.Condition(threading.Lock())
        self._callbacks: dict[bytes, list[Callable[[Entry], None]]] = {}

    def put(self, object_id: bytes, entry: Entry) -> None:
        with self._cond:
            self._entries[object_id] = entry
            callbacks = self._callbacks.pop(object_id, None)
            self._cond.notify_all()
        if callbacks:
            for fn in callbacks:
                fn(entry)

    def get(self, object_id: bytes) -> Entry | None:
        return self._entries.get(object_id)

    def contains(self, object_id: bytes) -> bool:
        return object_id in self._entries

    def delete(self, object_id: bytes) -> Entry | None:
        with self._cond:
            self._callbacks.pop(object_id, None)
            return self._entries.pop(object_id, None)

    def on_ready(self, object_id: bytes, fn: Callable[[Entry], None]) -> None:
        """Call ``fn(entry)`` once the entry exists (now, if it already does)."""
        with self._cond:
            entry = self._entries.get(object_id)
            if entry is None:
                self._callbacks.setdefault(object_id, []).append(fn)
                return
        fn(entry)

    def wait(self, object_ids: Iterable[bytes], num_ready: int, timeout: float | None) -> set[bytes]:
        """Block until ``num_ready`` of ``object_ids`` have entries or ``timeout`` passes."""
        ids = list(object_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                ready = {oid for oid in ids if oid in self._entries}
                if len(ready) >= num_ready:
                    return ready
                if deadline is None:
                    self._cond.wait(1.0)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return ready
                    self._cond.wait(remaining)

    def __len__(self) -> int:
        return len(self._entries)
