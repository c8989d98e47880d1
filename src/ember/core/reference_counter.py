"""Reference counts of the objects this process knows about.

For every object id we count:

* *local* references: live ``ObjectRef`` objects in this process, including
  the refs held on behalf of a stored value that contains them;
* *submitted* references: pending tasks that take the object as an argument
  (top level or nested inside an argument value);
* *borrowers* (owner side only): other processes that hold the ref. A
  process that receives a ref it does not own registers as a borrower with
  the owner before it uses it, and deregisters when its own count reaches
  zero; a borrower whose connection closes (it died) is dropped.

An owned object is freed when all three are zero. Actor handles (16-byte
ids) are counted the same way: a copy in another process borrows from the
actor's creator. Handles looked up by name carry no owner and are not counted
(as in Ray, they do not keep the actor alive).

``ObjectRef.__del__`` may run in any thread, at any time (even inside this
module, holding the lock), so it never takes the lock: it appends to a
deque that is drained under the lock later.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

_EMBER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _user_call_site() -> str:
    """file:line of the innermost frame outside Ember."""
    import sys

    frame = sys._getframe(2)
    # By module name, and by file for Ember modules run as __main__ (a worker's entry point).
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith("ember.") or frame.f_code.co_filename.startswith(_EMBER_DIR)
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return ""
    return f"{frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})"


class RefState:
    __slots__ = ("local", "submitted", "owned", "owner", "borrowers", "registered")

    def __init__(self, owner: Any, owned: bool) -> None:
        self.local = 0
        self.submitted = 0
        self.owned = owned
        self.owner = owner
        #: Owner side: keys of the connections of processes borrowing this object.
        self.borrowers: set[int] | None = None
        #: Borrower side: whether the owner has been told we borrow it.
        self.registered = False

    def unreferenced(self) -> bool:
        return self.local <= 0 and self.submitted <= 0 and not self.borrowers


class ReferenceCounter:
    def __init__(self, on_free: Callable[[bytes, RefState], None], wake: Callable[[], None], self_id: bytes = b"") -> None:
        self._refs: dict[bytes, RefState] = {}
        self._lock = threading.RLock()
        self._deferred: deque[bytes] = deque()
        self._on_free = on_free
        self._wake = wake
        self._wake_pending = False
        self.self_id = self_id
        #: Borrowed refs created since the last ``take_new_borrows``: (object id, owner).
        self._new_borrows: list[tuple[bytes, Any]] = []
        import os

        #: Where each ref was created (EMBER_record_ref_creation_sites=1), for ``ember memory``.
        self.record_sites = os.environ.get("EMBER_record_ref_creation_sites", "0") not in ("0", "", "false")
        self.call_sites: dict[bytes, str] = {}

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
                if owner is not None and owner[2] != self.self_id:
                    self._new_borrows.append((object_id, owner))
            state.local += 1
            if self.record_sites and object_id not in self.call_sites:
                self.call_sites[object_id] = _user_call_site()

    def on_ref_deserialized(self, ref: Any) -> None:
        """A ref arrived inside a value: registration happens in ``take_new_borrows``."""

    def take_new_borrows(self) -> list[tuple[bytes, Any]]:
        """Borrowed refs not yet registered with their owners (the caller registers them)."""
        with self._lock:
            if not self._new_borrows:
                return []
            out, self._new_borrows = self._new_borrows, []
            return [(oid, owner) for oid, owner in out if oid in self._refs]

    def mark_registered(self, object_ids: Iterable[bytes]) -> None:
        with self._lock:
            for oid in object_ids:
                state = self._refs.get(oid)
                if state is not None:
                    state.registered = True

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
            self.call_sites.pop(oid, None)
            self._on_free(oid, state)

    def add_submitted(self, object_ids: Iterable[bytes], owner_of: Callable[[bytes], Any]) -> None:
        with self._lock:
            for oid in object_ids:
                state = self._refs.get(oid)
                if state is None:
                    state = self._refs[oid] = RefState(owner_of(oid), False)
                state.submitted += 1

    def remove_submitted(self, object_ids: Iterable[bytes]) -> None:
        self._release(object_ids, "submitted")

    def _release(self, object_ids: Iterable[bytes], field: str, borrower: int | None = None) -> None:
        freed: list[tuple[bytes, RefState]] = []
        with self._lock:
            for oid in object_ids:
                state = self._refs.get(oid)
                if state is None:
                    continue
                if field == "submitted":
                    state.submitted -= 1
                elif state.borrowers is not None and borrower is not None:
                    state.borrowers.discard(borrower)
                    if not state.borrowers:
                        state.borrowers = None
                if state.unreferenced():
                    del self._refs[oid]
                    freed.append((oid, state))
        for oid, state in freed:
            self._on_free(oid, state)

    # ---------------------------------------------------------- owner side
    def add_borrowers(self, object_ids: Iterable[bytes], borrower: int) -> list[bytes]:
        """Record ``borrower`` for each owned object; returns the ids that no longer exist."""
        missing = []
        with self._lock:
            for oid in object_ids:
                state = self._refs.get(oid)
                if state is None or not state.owned:
                    missing.append(oid)
                    continue
                if state.borrowers is None:
                    state.borrowers = set()
                state.borrowers.add(borrower)
        return missing

    def remove_borrowers(self, object_ids: Iterable[bytes], borrower: int) -> None:
        self._release(object_ids, "borrower", borrower)

    def drop_borrower(self, borrower: int) -> None:
        """A borrowing process went away: forget everything it borrowed."""
        with self._lock:
            ids = [oid for oid, s in self._refs.items() if s.borrowers and borrower in s.borrowers]
        self._release(ids, "borrower", borrower)

    def is_owned(self, object_id: bytes) -> bool:
        state = self._refs.get(object_id)
        return state is not None and state.owned

    def has_reference(self, object_id: bytes) -> bool:
        return object_id in self._refs

    def num_tracked(self) -> int:
        return len(self._refs)

    def snapshot(self) -> dict[bytes, tuple[int, int, bool]]:
        """(local, submitted, owned) of every tracked object."""
        with self._lock:
            return {oid: (s.local, s.submitted, s.owned) for oid, s in self._refs.items()}

    def owns_any(self) -> bool:
        """Whether this process owns any object (or actor) still referenced."""
        with self._lock:
            return any(s.owned for s in self._refs.values())

    def validate(self) -> None:
        """Raise ``AssertionError`` if an invariant does not hold (for tests; call with nothing deferred
        in flight from other threads).

        Every tracked borrowed object is still referenced (or has decrements waiting in the
        deferred queue; an owned one may be between ``add_owned`` and its first ref), no count
        is negative, only owned objects have borrowers, borrower sets are
        never kept empty, and pending registrations name tracked objects only.
        """
        with self._lock:
            deferred: dict[bytes, int] = {}
            for oid in self._deferred:
                deferred[oid] = deferred.get(oid, 0) + 1
            problems = []
            for oid, s in self._refs.items():
                if s.local < 0 or s.submitted < 0:
                    problems.append(f"{oid.hex()}: local {s.local}, submitted {s.submitted}")
                if s.unreferenced() and not s.owned and oid not in deferred:
                    problems.append(f"{oid.hex()} is tracked but nothing references it")
                if s.borrowers is not None and not s.owned:
                    problems.append(f"{oid.hex()} has borrowers but is not owned here")
                if s.borrowers is not None and not s.borrowers:
                    problems.append(f"{oid.hex()} keeps an empty borrower set")
            for oid, count in deferred.items():
                held = self._refs.get(oid)
                if held is not None and held.local < count:
                    problems.append(f"{oid.hex()}: {count} deferred decrements for {held.local} local refs")
        if problems:
            raise AssertionError("reference counter: " + "; ".join(problems))

    def borrower_counts(self) -> dict[bytes, int]:
        with self._lock:
            return {oid: len(s.borrowers) for oid, s in self._refs.items() if s.borrowers}
