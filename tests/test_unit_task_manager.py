"""TaskManager, the owner's sans-I/O task bookkeeping: events in, actions out (no cluster).

Every event goes through ``Harness.do``, which checks ``validate()`` after it, so each
test also asserts the invariants at every step (dependencies counted, retries never
below -1, lineage kept exactly while a result is referenced).
"""

from __future__ import annotations

from typing import Any

import pytest

from ember._private import ids, serialization
from ember.core.memory_store import INLINE, PLASMA, Entry
from ember.core.reference_counter import ReferenceCounter, RefState
from ember.core.task_manager import (
    ARG_PLASMA,
    ARG_REF,
    ARG_VALUE,
    InvariantViolation,
    TaskManager,
    WorkerDeath,
    is_put_object,
)
from ember.core.task_state import TaskEntry, TaskStatus
from ember.exceptions import (
    NodeDiedError,
    ObjectLostError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OutOfMemoryError,
    OwnerDiedError,
    RayError,
    TaskCancelledError,
    WorkerCrashedError,
)

JOB = ids.job_id_from_int(7)
ME = ["127.0.0.1", 1000, b"w" * 28]
OTHER = ["127.0.0.1", 2000, b"o" * 28]
LOCATION = [b"n" * 28, 2 << 20, ["127.0.0.1", 3000]]


class Recorder:
    """The shell, as the tests see it: every action, in order."""

    def __init__(self) -> None:
        self.actions: list[tuple[Any, ...]] = []

    def names(self) -> list[str]:
        return [a[0] for a in self.actions]

    def take(self) -> list[tuple[Any, ...]]:
        out, self.actions = self.actions, []
        return out

    def resolve(self, entry: TaskEntry, index: int, object_id: bytes, owner: Any, recover: bool) -> None:
        self.actions.append(("resolve", entry, index, object_id, recover))

    def enqueue(self, entry: TaskEntry) -> None:
        self.actions.append(("enqueue", entry))

    def requeue(self, entry: TaskEntry, front: bool) -> None:
        self.actions.append(("requeue", entry, front))

    def requeue_later(self, entry: TaskEntry, delay_s: float) -> None:
        self.actions.append(("requeue_later", entry, delay_s))

    def dequeue(self, entry: TaskEntry) -> None:
        self.actions.append(("dequeue", entry))

    def store_results(self, entry: TaskEntry, returns: list[Any]) -> None:
        self.actions.append(("store_results", entry, returns))

    def store_error(self, entry: TaskEntry, error: Entry, reason: str) -> None:
        self.actions.append(("store_error", entry, serialization.deserialize_inline(error[1])[1], reason))

    def forget_copy(self, object_id: bytes) -> None:
        self.actions.append(("forget_copy", object_id))

    def free_dead_attempt(self, entry: TaskEntry, node_address: Any) -> None:
        self.actions.append(("free_dead_attempt", entry, node_address))

    def cancel_running(self, entry: TaskEntry, force: bool, recursive: bool) -> None:
        self.actions.append(("cancel_running", entry, force, recursive))


class Harness:
    def __init__(self) -> None:
        self.freed: list[bytes] = []
        self.counter = ReferenceCounter(self._on_free, lambda: None, ME[2])
        self.shell = Recorder()
        self.manager = TaskManager(self.counter, self.shell, oom_retry_backoff_s=1.0)

    def _on_free(self, object_id: bytes, state: RefState) -> None:
        self.freed.append(object_id)
        if state.owned:
            self.manager.object_freed(object_id)

    def do(self, event: str, *args: Any) -> Any:
        result = getattr(self.manager, event)(*args)
        self.manager.validate()
        return result

    # ------------------------------------------------------------ building tasks
    def owned_object(self, task_id: bytes | None = None, index: int = 1) -> bytes:
        """An object this process owns, with one live local ref (like a held ObjectRef)."""
        oid = ids.return_object_id(task_id or ids.new_task_id(JOB), index)
        self.counter.add_owned(oid, ME)
        self.counter.add_local_ref(oid, ME)
        return oid

    def drop_ref(self, oid: bytes) -> None:
        self.counter.remove_local_ref_deferred(oid)
        self.counter.drain()
        self.manager.validate()

    def task(self, args: list[list[Any]] | None = None, retries: int = 3, nret: int = 1,
             retry_exceptions: Any = False, parent: bytes | None = None) -> TaskEntry:
        """A task as ``.remote()`` builds it: returns owned and referenced, ref args counted as submitted."""
        task_id = ids.new_task_id(JOB)
        return_ids = [ids.return_object_id(task_id, i + 1) for i in range(nret)]
        for rid in return_ids:
            self.counter.add_owned(rid, ME)
            self.counter.add_local_ref(rid, ME)
        args = args or []
        arg_ids = [a[1] for a in args if a[0] == ARG_REF]
        owners = {a[1]: a[2] for a in args if a[0] == ARG_REF}
        if arg_ids:
            self.counter.add_submitted(arg_ids, owners.__getitem__)
        spec = {"tid": task_id, "job": JOB, "name": "f", "args": args, "nret": nret, "rids": return_ids, "owner": ME}
        entry = TaskEntry(spec, "f", return_ids, retries, retry_exceptions, arg_ids, ("CPU", 1), {"CPU": 1.0})
        entry.parent = parent
        return entry

    def submitted_count(self, oid: bytes) -> int:
        state = self.counter.snapshot().get(oid)
        return 0 if state is None else state[1]

    def run(self, entry: TaskEntry) -> None:
        """Submit a task without arguments and push it to a worker."""
        self.do("submit", entry)
        self.do("pushed", entry, "lease", 42)


def _inline(value: Any) -> list[Any]:
    return serialization.serialize(value).to_inline()


def _error_inline(error: BaseException) -> list[Any]:
    return serialization.serialize_error(error).to_inline()


def _stored_error(h: Harness) -> BaseException:
    stored = [a for a in h.shell.actions if a[0] == "store_error"]
    assert len(stored) == 1, h.shell.names()
    return stored[0][2]


@pytest.fixture
def h() -> Harness:
    return Harness()


# ==================================================================== the happy path
def test_a_task_without_arguments_is_queued_pushed_and_finished(h: Harness) -> None:
    entry = h.task()
    h.do("submit", entry)
    assert h.shell.names() == ["enqueue"]
    assert entry.state is TaskStatus.PENDING_NODE_ASSIGNMENT
    h.do("pushed", entry, "lease", 42)
    assert (entry.state, entry.attempt, entry.pushes, entry.spec["attempt"]) == (TaskStatus.SUBMITTED_TO_WORKER, 1, 1, 1)
    returns = [[0, _inline(5), []]]
    h.do("returned", entry, returns)
    assert entry.state is TaskStatus.FINISHED
    assert h.shell.actions[-1] == ("store_results", entry, returns)
    assert h.manager.pending == {} and h.manager.lineage == {}


def test_arguments_are_waited_for_and_the_last_one_queues_the_task(h: Harness) -> None:
    a, b = h.owned_object(), h.owned_object()
    entry = h.task([[ARG_REF, a, ME], [ARG_VALUE, _inline(1)], [ARG_REF, b, ME]])
    h.do("submit", entry)
    assert [(x[0], x[2], x[3]) for x in h.shell.take()] == [("resolve", 0, a), ("resolve", 2, b)]
    assert entry.deps_pending == 2
    h.do("arg_ready", entry, 2, (PLASMA, LOCATION))
    assert h.shell.actions == [] and entry.state is TaskStatus.PENDING_ARGS_AVAIL
    h.do("arg_ready", entry, 0, (INLINE, _inline(3)))
    assert h.shell.names() == ["enqueue"]
    assert entry.spec["args"][0] == [ARG_VALUE, _inline(3)]
    assert entry.spec["args"][2] == [ARG_PLASMA, b, ME, LOCATION]
    # Held as submitted until the task finishes, then released.
    assert h.submitted_count(a) == 1
    h.do("pushed", entry, "lease", 1)
    h.do("returned", entry, [[0, _inline(None), []]])
    assert h.submitted_count(a) == 0 and h.submitted_count(b) == 0


def test_an_argument_that_failed_fails_the_task_with_its_error(h: Harness) -> None:
    a, b = h.owned_object(), h.owned_object()
    entry = h.task([[ARG_REF, a, ME], [ARG_REF, b, ME]])
    h.do("submit", entry)
    h.shell.take()
    h.do("arg_ready", entry, 0, (INLINE, _error_inline(ValueError("bad input"))))
    error = _stored_error(h)
    assert isinstance(error, ValueError) and "bad input" in str(error)
    assert entry.state is TaskStatus.FAILED
    h.shell.take()
    h.do("arg_ready", entry, 1, (INLINE, _inline(2)))  # arrives late: ignored
    assert h.shell.actions == []
    assert h.submitted_count(a) == 0 and h.submitted_count(b) == 0


def test_owner_of_an_argument_died_the_task_fails_with_owner_died(h: Harness) -> None:
    borrowed = ids.return_object_id(ids.new_task_id(JOB), 1)
    entry = h.task([[ARG_REF, borrowed, OTHER]])
    h.do("submit", entry)
    # What the ownership service records when the owner is unreachable.
    h.do("arg_ready", entry, 0, (INLINE, _error_inline(OwnerDiedError(borrowed.hex(), "owner gone"))))
    assert isinstance(_stored_error(h), OwnerDiedError)
    assert h.submitted_count(borrowed) == 0


# ==================================================================== failures at the worker
def test_worker_dies_before_reply_retries_then_fails(h: Harness) -> None:
    entry = h.task(retries=1)
    h.run(entry)
    h.shell.take()
    death = WorkerDeath(pid=9, node_address=["127.0.0.1", 3000])
    h.do("worker_died", entry, death)
    assert h.shell.take() == [("free_dead_attempt", entry, ["127.0.0.1", 3000]), ("requeue", entry, False)]
    assert entry.retries_left == 0 and entry.state is TaskStatus.PENDING_NODE_ASSIGNMENT
    h.do("pushed", entry, "lease2", 10)
    h.do("worker_died", entry, WorkerDeath(pid=10, error=ConnectionResetError("reset")))
    error = _stored_error(h)
    assert isinstance(error, WorkerCrashedError)
    assert "pid=10" in str(error) and "reset" in str(error) and "max_retries" in str(error)
    assert entry.state is TaskStatus.FAILED and entry.attempt == 2


def test_unlimited_retries_stay_unlimited(h: Harness) -> None:
    entry = h.task(retries=-1)
    h.run(entry)
    for pid in range(5):
        h.do("worker_died", entry, WorkerDeath(pid=pid))
        h.do("pushed", entry, "lease", pid)
    assert entry.retries_left == -1 and entry.attempt == 6


def test_oom_kill_retries_later_with_backoff_then_fails_with_oom(h: Harness) -> None:
    entry = h.task(retries=2)
    h.run(entry)
    h.shell.take()
    h.do("worker_died", entry, WorkerDeath(pid=1, oom_detail="node memory above 95%"))
    assert h.shell.take()[-1] == ("requeue_later", entry, 1.0)
    h.do("requeue_due", entry)
    assert h.shell.take() == [("enqueue", entry)]
    h.do("pushed", entry, "lease", 2)
    h.do("worker_died", entry, WorkerDeath(pid=2, oom_detail="again"))
    assert h.shell.take()[-1] == ("requeue_later", entry, 2.0)
    h.do("requeue_due", entry)
    h.do("pushed", entry, "lease", 3)
    h.do("worker_died", entry, WorkerDeath(pid=3, oom_detail="and again"))
    assert isinstance(_stored_error(h), OutOfMemoryError)


def test_a_delayed_retry_of_a_task_failed_meanwhile_is_dropped(h: Harness) -> None:
    entry = h.task(retries=1)
    h.run(entry)
    h.do("worker_died", entry, WorkerDeath(pid=1, oom_detail="oom"))
    h.do("cancel", entry.spec["tid"], False)
    h.shell.take()
    h.do("requeue_due", entry)
    assert h.shell.actions == []


def test_node_death_without_retries_is_node_died(h: Harness) -> None:
    entry = h.task(retries=0)
    h.run(entry)
    h.do("worker_died", entry, WorkerDeath(pid=1, node_death=(b"\x01" * 28, "10.0.0.2:5000", "heartbeats stopped")))
    error = _stored_error(h)
    assert isinstance(error, NodeDiedError) and "heartbeats stopped" in str(error)


def test_worker_refusing_the_push_fails_the_task(h: Harness) -> None:
    entry = h.task()
    h.run(entry)
    h.do("refused", entry, ValueError("this process does not execute tasks"))
    error = _stored_error(h)
    assert isinstance(error, RayError) and "could not run f" in str(error)


def test_bad_reply_fails_the_task(h: Harness) -> None:
    entry = h.task()
    h.run(entry)
    h.do("bad_reply", entry, {"s": "???"})
    assert "bad reply" in str(_stored_error(h))


def test_bounced_task_goes_first_in_line_without_spending_an_attempt(h: Harness) -> None:
    entry = h.task()
    h.run(entry)
    h.shell.take()
    h.do("bounced", entry)
    assert h.shell.take() == [("requeue", entry, True)]
    assert entry.attempt == 0 and entry.retries_left == 3
    h.do("pushed", entry, "lease", 5)
    assert entry.attempt == 1 and entry.pushes == 2 and entry.spec["attempt"] == 2


@pytest.mark.parametrize("retry_exceptions, raised, retried", [
    (True, ValueError("x"), True),
    ((ValueError,), ValueError("x"), True),
    ((KeyError,), ValueError("x"), False),
    (False, ValueError("x"), False),
])
def test_raised_is_retried_only_when_allowed(h: Harness, retry_exceptions: Any, raised: Exception, retried: bool) -> None:
    from ember.exceptions import RayTaskError

    entry = h.task(retries=2, retry_exceptions=retry_exceptions)
    h.run(entry)
    h.shell.take()
    h.do("raised", entry, _error_inline(RayTaskError("f", "traceback", raised)))
    if retried:
        assert h.shell.names() == ["requeue"] and entry.retries_left == 1
    else:
        assert h.shell.names() == ["store_error"] and entry.state is TaskStatus.FAILED


# ==================================================================== cancel
def test_cancel_while_waiting_for_arguments_fails_at_once(h: Harness) -> None:
    a = h.owned_object()
    entry = h.task([[ARG_REF, a, ME]])
    h.do("submit", entry)
    assert h.do("cancel", entry.spec["tid"], False) is True
    assert isinstance(_stored_error(h), TaskCancelledError)
    h.shell.take()
    h.do("arg_ready", entry, 0, (INLINE, _inline(1)))
    assert h.shell.actions == [] and h.submitted_count(a) == 0


def test_cancel_while_queued_dequeues_and_fails(h: Harness) -> None:
    entry = h.task()
    h.do("submit", entry)
    h.shell.take()
    h.do("cancel", entry.spec["tid"], False)
    assert h.shell.names() == ["dequeue", "store_error"]


def test_cancel_of_an_unknown_or_finished_task_is_false(h: Harness) -> None:
    assert h.do("cancel", b"\x00" * 24, False) is False
    entry = h.task()
    h.run(entry)
    h.do("returned", entry, [[0, _inline(1), []]])
    assert h.do("cancel", entry.spec["tid"], True) is False


def test_reply_arrives_after_cancel(h: Harness) -> None:
    running = h.task()
    h.run(running)
    h.shell.take()
    h.do("cancel", running.spec["tid"], False, True)
    assert h.shell.take() == [("cancel_running", running, False, True)]
    assert running.cancelled and running.state is TaskStatus.SUBMITTED_TO_WORKER
    # The worker finished before the interrupt landed: its values stand.
    h.do("returned", running, [[0, _inline(1), []]])
    assert running.state is TaskStatus.FINISHED
    # A worker that was interrupted says so: TaskCancelledError.
    other = h.task()
    h.run(other)
    h.do("cancel", other.spec["tid"], False)
    h.shell.take()
    h.do("cancelled_at_worker", other)
    assert isinstance(_stored_error(h), TaskCancelledError)


def test_force_cancel_kills_and_the_death_is_never_retried(h: Harness) -> None:
    entry = h.task(retries=5)
    h.run(entry)
    h.shell.take()
    h.do("cancel", entry.spec["tid"], True)
    assert h.shell.take() == [("cancel_running", entry, True, False)] and entry.force_cancel
    h.do("worker_died", entry, WorkerDeath(pid=1))
    assert isinstance(_stored_error(h), TaskCancelledError)
    assert entry.retries_left == 5
    # A late reply after the task failed changes nothing.
    h.shell.take()
    h.do("returned", entry, [[0, _inline(1), []]])
    h.do("raised", entry, _error_inline(ValueError("late")))
    h.do("worker_died", entry, WorkerDeath(pid=1))
    assert h.shell.actions == [] and entry.state is TaskStatus.FAILED


def test_raised_after_cancel_is_not_retried(h: Harness) -> None:
    entry = h.task(retries=3, retry_exceptions=True)
    h.run(entry)
    h.do("cancel", entry.spec["tid"], False)
    h.shell.take()
    h.do("raised", entry, _error_inline(ValueError("x")))
    assert h.shell.names() == ["store_error"]


def test_children_of_lists_unfinished_tasks_of_a_parent(h: Harness) -> None:
    parent = ids.new_task_id(JOB)
    a, b, c = h.task(parent=parent), h.task(parent=parent), h.task()
    for entry in (a, b, c):
        h.do("submit", entry)
    h.do("cancel", a.spec["tid"], False)
    assert h.manager.children_of(parent) == [b.spec["tid"]]


def test_fail_all_fails_each_with_one_error(h: Harness) -> None:
    entries = [h.task() for _ in range(3)]
    for entry in entries:
        h.do("submit", entry)
    h.shell.take()
    h.do("fail_all", iter(entries), RayError("unschedulable"))
    assert h.shell.names() == ["store_error"] * 3 and h.manager.pending == {}


# ==================================================================== lineage
def _finish_in_store(h: Harness, entry: TaskEntry) -> None:
    h.run(entry)
    h.do("returned", entry, [[1, LOCATION, []] for _ in entry.return_ids])


def test_lineage_is_kept_while_a_stored_result_is_referenced(h: Harness) -> None:
    a = h.owned_object()
    entry = h.task([[ARG_REF, a, ME]], nret=2)
    h.do("submit", entry)
    h.do("arg_ready", entry, 0, (INLINE, _inline(1)))
    h.do("pushed", entry, "lease", 1)
    h.do("returned", entry, [[1, LOCATION, []], [1, LOCATION, []]])
    assert entry.spec["tid"] in h.manager.lineage
    assert h.submitted_count(a) == 1  # the argument is held for a re-run
    h.drop_ref(entry.return_ids[0])
    assert entry.spec["tid"] in h.manager.lineage
    h.drop_ref(entry.return_ids[1])
    assert h.manager.lineage == {} and h.submitted_count(a) == 0


def test_no_lineage_for_inline_results_or_results_nobody_holds(h: Harness) -> None:
    inline = h.task()
    h.run(inline)
    h.do("returned", inline, [[0, _inline(1), []]])
    unheld = h.task()
    h.run(unheld)
    h.drop_ref(unheld.return_ids[0])  # dropped while it ran
    h.do("returned", unheld, [[1, LOCATION, []]])
    assert h.manager.lineage == {}


def test_reconstruct_reruns_the_task_and_spends_a_retry(h: Harness) -> None:
    a = h.owned_object()
    entry = h.task([[ARG_REF, a, ME]], retries=1)
    h.do("submit", entry)
    h.do("arg_ready", entry, 0, (PLASMA, LOCATION))
    _ = h.shell.take()
    h.do("pushed", entry, "lease", 1)
    h.do("returned", entry, [[1, LOCATION, []]])
    rid = entry.return_ids[0]
    h.shell.take()
    assert h.do("reconstruct", rid) is None
    assert h.shell.take() == [("forget_copy", rid), ("enqueue", entry)]
    assert entry.retries_left == 0 and entry.state is TaskStatus.PENDING_NODE_ASSIGNMENT
    assert h.do("reconstruct", rid) is None  # already running again
    h.do("pushed", entry, "lease", 2)
    h.do("returned", entry, [[1, LOCATION, []]])
    assert h.submitted_count(a) == 1  # held once, by the lineage
    error = h.do("reconstruct", rid)
    assert isinstance(error, ObjectReconstructionFailedMaxAttemptsExceededError)
    h.drop_ref(rid)
    assert h.submitted_count(a) == 0 and h.manager.lineage == {}


def test_a_rerun_that_fails_releases_its_arguments_once(h: Harness) -> None:
    a = h.owned_object()
    entry = h.task([[ARG_REF, a, ME]], retries=2)
    h.do("submit", entry)
    h.do("arg_ready", entry, 0, (PLASMA, LOCATION))
    h.do("pushed", entry, "lease", 1)
    h.do("returned", entry, [[1, LOCATION, []]])
    h.do("reconstruct", entry.return_ids[0])
    h.do("pushed", entry, "lease", 2)
    h.do("raised", entry, _error_inline(ValueError("flaky")))
    assert h.manager.lineage == {} and h.submitted_count(a) == 0
    h.drop_ref(entry.return_ids[0])
    h.drop_ref(a)
    assert a in h.freed  # freed exactly once, not held forever nor released twice


def test_reconstruct_refuses_put_values_and_forgotten_tasks(h: Harness) -> None:
    put_id = ids.put_object_id(ids.new_task_id(JOB))
    assert is_put_object(put_id)
    assert isinstance(h.do("reconstruct", put_id), ObjectLostError)
    unknown = ids.return_object_id(ids.new_task_id(JOB), 1)
    assert not is_put_object(unknown)
    assert isinstance(h.do("reconstruct", unknown), ObjectReconstructionFailedLineageEvictedError)


def test_lost_owned_argument_is_rebuilt_from_lineage_then_resolved_again(h: Harness) -> None:
    producer = h.task(retries=1)
    _finish_in_store(h, producer)
    lost = producer.return_ids[0]
    consumer = h.task([[ARG_REF, lost, ME]])
    h.do("submit", consumer)
    h.do("arg_ready", consumer, 0, (PLASMA, LOCATION))
    h.do("pushed", consumer, "lease", 7)
    h.shell.take()
    h.do("arg_lost", consumer, lost, ME)
    actions = h.shell.take()
    assert ("forget_copy", lost) in actions and ("enqueue", producer) in actions
    assert actions[-1] == ("resolve", consumer, 0, lost, True)
    assert consumer.state is TaskStatus.PENDING_ARGS_AVAIL and consumer.attempt == 0
    assert consumer.spec["args"][0] == [ARG_REF, lost, ME]


def test_lost_argument_that_cannot_be_rebuilt_fails_the_task(h: Harness) -> None:
    put_id = ids.put_object_id(ids.new_task_id(JOB))
    h.counter.add_owned(put_id, ME)
    h.counter.add_local_ref(put_id, ME)
    consumer = h.task([[ARG_REF, put_id, ME]])
    h.do("submit", consumer)
    h.do("arg_ready", consumer, 0, (PLASMA, LOCATION))
    h.do("pushed", consumer, "lease", 7)
    h.shell.take()
    h.do("arg_lost", consumer, put_id, ME)
    assert isinstance(_stored_error(h), ObjectLostError)


def test_lost_borrowed_argument_is_fetched_again_with_recovery(h: Harness) -> None:
    borrowed = ids.return_object_id(ids.new_task_id(JOB), 1)
    consumer = h.task([[ARG_REF, borrowed, OTHER]])
    h.do("submit", consumer)
    h.do("arg_ready", consumer, 0, (PLASMA, LOCATION))
    h.do("pushed", consumer, "lease", 7)
    h.shell.take()
    h.do("arg_lost", consumer, borrowed, OTHER)
    assert h.shell.take() == [("forget_copy", borrowed), ("resolve", consumer, 0, borrowed, True)]


def test_arg_lost_naming_no_stored_argument_fails_clearly(h: Harness) -> None:
    entry = h.task()
    h.run(entry)
    h.do("arg_lost", entry, b"\x09" * 28, ME)
    assert "no such stored argument" in str(_stored_error(h))


# ==================================================================== validate
def test_validate_reports_an_argument_released_behind_the_tasks_back(h: Harness) -> None:
    a = h.owned_object()
    entry = h.task([[ARG_REF, a, ME]])
    h.do("submit", entry)
    h.counter.remove_submitted([a])
    with pytest.raises(InvariantViolation, match="counted 0 time"):
        h.manager.validate()


def test_validate_reports_negative_retries_and_lineage_nobody_needs(h: Harness) -> None:
    entry = h.task()
    h.run(entry)
    entry.retries_left = -2
    with pytest.raises(InvariantViolation, match="-2 retries left"):
        h.manager.validate()
    entry.retries_left = 0
    h.do("returned", entry, [[1, LOCATION, []]])
    h.counter.remove_local_ref_deferred(entry.return_ids[0])
    h.counter._on_free = lambda oid, state: None  # the free does not reach the manager
    h.counter.drain()
    with pytest.raises(InvariantViolation, match="no result is referenced"):
        h.manager.validate()


def test_validate_reports_a_task_waiting_for_nothing(h: Harness) -> None:
    entry = h.task([[ARG_REF, h.owned_object(), ME]])
    h.do("submit", entry)
    entry.deps_pending = 0
    with pytest.raises(InvariantViolation, match="waits for arguments"):
        h.manager.validate()
