"""The task-event store alone: merging owner and executor views, bounded retention, filters."""

from __future__ import annotations

import pytest

from ember._private.state_filters import check_filters, matches
from ember.gcs.task_events import TASK_FIELDS, TaskEventStore
from ember.protocol.gcs import TASK_STATES, RunRow, TaskEventBatch, TaskRow, encode_rows


def _tid(i: int) -> bytes:
    return i.to_bytes(16, "big")


#: What each task's owner has seen so far: [(state, time), ...] (a row carries them all).
_HISTORY: dict[tuple[int, int], list[tuple[str, float]]] = {}


def _owner_row(store: TaskEventStore, i: int, state: str, ts: float, job: bytes = b"\x01",
               error_type: str | None = None, error: str | None = None) -> None:
    steps = _HISTORY.setdefault((id(store), i), [])
    steps.append((state, ts))
    row = TaskRow(_tid(i), 0, "f", job, None, 0, None, None,
                  tuple(TASK_STATES.index(s) for s, _ in steps), tuple(t for _, t in steps), error_type, error)
    store.add_batch(TaskEventBatch(job=job, tasks=encode_rows([row])))


def _submit(store: TaskEventStore, i: int, job: bytes = b"\x01") -> None:
    _owner_row(store, i, "PENDING_ARGS_AVAIL", 1.0 + i, job)


def _state(store: TaskEventStore, i: int, state: str, ts: float, **error: str) -> None:
    _owner_row(store, i, state, ts, **error)


def _run(store: TaskEventStore, i: int, start: float, end: float | None, pid: int) -> None:
    run = RunRow(_tid(i), 0, start, end, "f", b"\x01", None)
    store.add_batch(TaskEventBatch(job=b"\x01", runs=encode_rows([run]), worker=b"w" * 16, node=b"n" * 16, pid=pid))


def test_owner_and_executor_views_merge():
    store = TaskEventStore(100)
    _submit(store, 1)
    _state(store, 1, "SUBMITTED_TO_WORKER", 2.0)
    _run(store, 1, 2.5, None, 42)
    row = store.list([], 10, True)["result"][0]
    assert (row["state"], row["worker_pid"], row["node_id"]) == ("RUNNING", 42, (b"n" * 16).hex())
    # The owner's FINISHED can arrive before the worker's last batch: terminal wins.
    _state(store, 1, "FINISHED", 3.0)
    _run(store, 1, 2.5, 2.9, 42)
    row = store.list([], 10, True)["result"][0]
    assert row["state"] == "FINISHED" and row["start_time_ms"] == 2500.0 and row["end_time_ms"] == 2900.0
    assert [e["state"] for e in row["events"]] == ["PENDING_ARGS_AVAIL", "SUBMITTED_TO_WORKER", "RUNNING", "FINISHED"]


def test_failure_keeps_its_error_type_and_message():
    store = TaskEventStore(100)
    _submit(store, 1)
    _state(store, 1, "FAILED", 2.0, error_type="WORKER_DIED", error="the worker died")
    row = store.list([("state", "=", "FAILED")], 10, True)["result"][0]
    assert (row["error_type"], row["error_message"]) == ("WORKER_DIED", "the worker died")


def test_retention_drops_finished_tasks_before_live_ones_and_counts_drops():
    store = TaskEventStore(10)
    for i in range(3):  # three live tasks, submitted first (the oldest)
        _submit(store, i)
    for i in range(3, 20):
        _submit(store, i)
        _state(store, i, "FINISHED", 100.0 + i)
    listed = store.list([], 100, False)
    assert listed["stored"] == 10 and listed["dropped"] == 10
    assert {r["task_id"] for r in store.list([("state", "=", "PENDING_ARGS_AVAIL")], 100, False)["result"]} == {
        _tid(i).hex() for i in range(3)
    }
    # Only live tasks left to drop: then the oldest live one goes (and is counted).
    small = TaskEventStore(2)
    for i in range(3):
        _submit(small, i)
    assert {r["task_id"] for r in small.list([], 10, False)["result"]} == {_tid(1).hex(), _tid(2).hex()}
    assert small.list([], 10, False)["dropped"] == 1


def test_process_side_drops_are_reported():
    store = TaskEventStore(10)
    store.add_batch(TaskEventBatch(job=b"\x01", dropped=7))
    assert store.list([], 1, False)["dropped"] == 7 and store.summary()["dropped"] == 7


def test_filters_apply_before_the_limit_and_total_counts_every_match():
    store = TaskEventStore(1000)
    for i in range(50):
        _submit(store, i)
        if i % 10:
            _state(store, i, "FINISHED", 100.0 + i)
    reply = store.list([("state", "=", "pending_args_avail")], 2, False)
    assert reply["total"] == 5 and len(reply["result"]) == 2
    assert store.list([("state", "!=", "FINISHED")], 100, False)["total"] == 5
    assert store.summary()["summary"]["f"]["state_counts"] == {"FINISHED": 45, "PENDING_ARGS_AVAIL": 5}


@pytest.mark.parametrize("bad", [[("state", "~", "x")], [("nope", "=", "x")], [("state", "=")], ["state=x"]])
def test_malformed_filters_are_refused(bad):
    with pytest.raises(ValueError):
        check_filters(bad, TASK_FIELDS)


def test_matching_is_textual_and_case_insensitive():
    assert matches(42, "=", "42") and matches("RUNNING", "=", "running") and matches(None, "=", "")
    assert matches("A", "!=", "b") and not matches("A", "!=", "a")


def test_batches_from_owner_and_worker_arrive_in_any_order():
    store = TaskEventStore(100)
    _submit(store, 1)
    _run(store, 1, 3.0, None, 7)
    _state(store, 1, "SUBMITTED_TO_WORKER", 2.0)  # the owner's batch came later
    assert store.list([], 1, False)["result"][0]["state"] == "RUNNING"
