"""ReferenceCounter without a cluster: local, submitted and borrower counts, frees, registrations.

``validate()`` runs after every step (``Counts.step``).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ember.core.reference_counter import ReferenceCounter, RefState

ME = ["127.0.0.1", 1, b"m" * 28]
OWNER = ["127.0.0.1", 2, b"o" * 28]
A, B, C = b"a" * 28, b"b" * 28, b"c" * 28


class Counts:
    def __init__(self) -> None:
        self.freed: list[tuple[bytes, bool, bool]] = []
        self.wakes = 0
        self.counter = ReferenceCounter(self._on_free, self._wake, ME[2])

    def _on_free(self, object_id: bytes, state: RefState) -> None:
        self.freed.append((object_id, state.owned, state.registered))

    def _wake(self) -> None:
        self.wakes += 1

    def step(self, method: str, *args: Any) -> Any:
        result = getattr(self.counter, method)(*args)
        self.counter.validate()
        return result

    def drop(self, oid: bytes) -> None:
        self.step("remove_local_ref_deferred", oid)
        self.step("drain")


@pytest.fixture
def c() -> Counts:
    return Counts()


def test_an_owned_object_is_freed_when_its_last_local_ref_goes(c: Counts) -> None:
    c.step("add_owned", A, ME)
    c.step("add_local_ref", A, ME)
    c.step("add_local_ref", A, ME)
    c.drop(A)
    assert c.freed == [] and c.counter.is_owned(A)
    c.drop(A)
    assert c.freed == [(A, True, False)]
    assert not c.counter.has_reference(A) and c.counter.num_tracked() == 0


def test_deferred_decrements_wake_the_loop_once_per_batch(c: Counts) -> None:
    c.step("add_owned", A, ME)
    for _ in range(3):
        c.step("add_local_ref", A, ME)
    for _ in range(3):
        c.step("remove_local_ref_deferred", A)
    assert c.wakes == 1
    c.step("drain")
    c.step("add_local_ref", B, ME)
    c.step("remove_local_ref_deferred", B)
    assert c.wakes == 2


def test_submitted_counts_keep_an_object_alive_after_its_local_refs(c: Counts) -> None:
    c.step("add_owned", A, ME)
    c.step("add_local_ref", A, ME)
    c.step("add_submitted", [A, A], lambda _: ME)
    c.drop(A)
    assert c.freed == []
    assert c.counter.snapshot() == {A: (0, 2, True)}
    c.step("remove_submitted", [A])
    c.step("remove_submitted", [A])
    assert c.freed == [(A, True, False)]
    c.step("remove_submitted", [A])  # unknown now: ignored
    assert len(c.freed) == 1


def test_a_borrowed_ref_is_registered_once_and_unregistered_at_zero(c: Counts) -> None:
    c.step("add_local_ref", A, OWNER)
    c.step("add_local_ref", A, OWNER)
    assert c.step("take_new_borrows") == [(A, OWNER)]
    assert c.step("take_new_borrows") == []
    c.step("mark_registered", [A, B])
    c.drop(A)
    c.drop(A)
    assert c.freed == [(A, False, True)]  # the free tells the owner (registered)


def test_a_borrow_dropped_before_registration_is_not_registered(c: Counts) -> None:
    c.step("add_local_ref", A, OWNER)
    c.drop(A)
    assert c.step("take_new_borrows") == []
    assert c.freed == [(A, False, False)]


def test_refs_without_an_owner_or_owned_here_are_no_borrows(c: Counts) -> None:
    c.step("add_local_ref", A, None)  # a handle looked up by name
    c.step("add_local_ref", B, ME)
    assert c.step("take_new_borrows") == []


def test_owner_side_borrowers_keep_the_object_until_each_leaves(c: Counts) -> None:
    c.step("add_owned", A, ME)
    c.step("add_local_ref", A, ME)
    assert c.step("add_borrowers", [A, B], 1) == [B]  # B is not owned here
    c.step("add_borrowers", [A], 2)
    assert c.counter.borrower_counts() == {A: 2}
    c.drop(A)
    assert c.freed == []
    c.step("remove_borrowers", [A], 1)
    assert c.freed == []
    c.step("drop_borrower", 2)  # its connection closed
    assert c.freed == [(A, True, False)]


def test_validate_reports_a_negative_count_and_an_unreferenced_entry(c: Counts) -> None:
    c.step("add_local_ref", A, OWNER)
    c.counter._refs[A].local = -1
    with pytest.raises(AssertionError, match="local -1"):
        c.counter.validate()
    c.counter._refs[A].local = 0
    with pytest.raises(AssertionError, match="nothing references it"):
        c.counter.validate()


def test_validate_reports_too_many_deferred_decrements(c: Counts) -> None:
    c.step("add_local_ref", A, ME)
    c.counter.remove_local_ref_deferred(A)
    c.counter.remove_local_ref_deferred(A)
    with pytest.raises(AssertionError, match="2 deferred decrements for 1 local refs"):
        c.counter.validate()


def test_decrements_from_many_threads_are_all_applied(c: Counts) -> None:
    c.step("add_owned", A, ME)
    for _ in range(4000):
        c.counter.add_local_ref(A, ME)

    def release() -> None:
        for _ in range(1000):
            c.counter.remove_local_ref_deferred(A)

    threads = [threading.Thread(target=release) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    c.step("drain")
    assert c.freed == [(A, True, False)]


def test_call_sites_are_recorded_when_asked(c: Counts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_record_ref_creation_sites", "1")
    counts = Counts()
    counts.step("add_local_ref", C, ME)
    assert "test_unit_reference_counter.py" in counts.counter.call_sites[C]
    counts.drop(C)
    assert C not in counts.counter.call_sites


def test_owns_any_and_snapshot(c: Counts) -> None:
    assert not c.counter.owns_any()
    c.step("add_owned", A, ME)
    c.step("add_local_ref", A, ME)
    c.step("add_local_ref", B, OWNER)
    assert c.counter.owns_any()
    assert c.counter.snapshot() == {A: (1, 0, True), B: (1, 0, False)}
