"""Reference counts of the objects this process knows about.

For every object id we count *local* references (live ``ObjectRef`` objects
in this process) and *submitted* references (pending tasks that take the
object as an argument). An object is freed when both reach zero, unless it
*escaped*: its ref was serialized inside a value that left this process.
Escaped objects are kept until the owner exits; tracking their borrowers
precisely is the job of the distributed reference-counting protocol.

``ObjectRef.__del__`` may run in any thread, at any time (even inside this
module, holding the lock), so it never takes the lock: it appends to a
deque that is drained under the lock later.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any


class RefState:
    __slots__ = ("local", "submitted", "owned", "escaped", "owner")

    def __init__(self, owner: Any, owned: bool) -> None:
        self.local = 0
        self.submitted = 0
        self.owned = owned
        self.escaped = False
        self.owner = owner

    def unreferenced(self) -> bool:
        return self.local <= 0 and self.submitted <= 0 and not self.escaped


class ReferenceCounter:
    def __init__(self, on_free: Callable[[bytes, RefState], None], wake: Callable[[], None]) -> None:
        self._refs: dict[bytes, RefState] = {}
        self._lock = threading.RLock()
        self._deferred: deque[bytes] = deque()
        self._on_free = on_free
        self._wake = wake
        self._wake_pending = False

    # -------------------------------------------------------------- creation
    def add_owned(self, object_id: bytes, owner: Any) -> None:
        with self._lock:
            state = self._refs.get(object_id)
            if state is None:
                self._refs[object_id] = RefState(owner, True)
            else:
                state.owned = True

    def add_local_ref(self, object_id: bytes, owner: Any) -> None:
        with self._lock:
            state = self._refs.get(object_id)
            if state is None:
                state = self._refs[object_id] = RefState(owner, False)
            state.local += 1

    def on_ref_deserialized(self, ref: Any) -> None:
        """A ref arrived inside a value: this process now borrows it."""

    # ------------------------------------------------------------- releasing
    def remove_local_ref_deferred(self, object_id: bytes) -> None:
        self._deferred.append(object_id)
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake()
            except RuntimeError:  # the loop is closed: the process is exiting
                pass

    def drain(self) -> None:
        """Apply deferred decrements and free what became unreferenced."""
        self._wake_pending = False
        freed: list[tuple[bytes, RefState]] = []
        with self._lock:
            deferred = self._deferred
            while deferred:
                oid = deferred.popleft()
                state = self._refs.get(oid)
                if state is None:
                    continue
                state.local -= 1
                if state.unreferenced():
                    del self._refs[oid]
                    freed.append((oid, state))
        for oid, state in freed:
            self._on_free(oid, state)

    def add_submitted(self, object_ids: Iterable[bytes], owner_of: Callable[[bytes], Any]) -> None:
        with self._lock:
            for oid in object_ids:
                state = self._refs.get(oid)
                if state is None:
                    state = self._refs[oid] = RefState(owner_of(oid), False)
                state.submitted += 1

    def remove_submitted(self, object_ids: Iterable[bytes]) -> None:
        freed: list[tuple[bytes, RefState]] = []
        with self._lock:
            for oid in object_ids:
                state = self._refs.get(oid)
                if state is None:
                    continue
                state.submitted -= 1
                if state.unreferenced():
                    del self._refs[oid]
                    freed.append((oid, state))
        for oid, state in freed:
            self._on_free(oid, state)

    def mark_escaped(self, object_ids: Iterable[bytes]) -> None:
        with self._lock:
            for oid in object_ids:
                state = self._refs.get(oid)
                if state is not None:
                    state.escaped = True

    # --------------------------------------------------------------- queries
    def is_owned(self, object_id: bytes) -> bool:
        state = self._refs.get(object_id)
        return state is not None and state.owned

    def has_reference(self, object_id: bytes) -> bool:
        return object_id in self._refs

    def num_tracked(self) -> int:
        return len(self._refs)

    def snapshot(self) -> dict[bytes, tuple[int, int, bool, bool]]:
        with self._lock:
            return {oid: (s.local, s.submitted, s.owned, s.escaped) for oid, s in self._refs.items()}
