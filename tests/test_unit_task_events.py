"""Task events without a cluster: the store (owner and executor rows, bounded retention, filters)
and one process's recorder (rows from task histories, live tasks, executions, drops)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ember._private import serialization
from ember._private.state_filters import check_filters, matches
from ember.core.memory_store import INLINE
from ember.core.task_context import TaskContext
from ember.core.task_events import TaskEventRecorder
from ember.core.task_state import TaskEntry, TaskStatus
from ember.exceptions import ProtocolError
from ember.gcs.task_events import TASK_FIELDS, TaskEventStore
from ember.protocol.gcs import (
    TASK_STATES,
    EndedRows,
    RunRow,
    TaskEventBatch,
    TaskRow,
    encode_rows,
    ended_rows,
    run_rows,
    task_rows,
)


def _tid(i: int) -> bytes:
    return i.to_bytes(16, "big")


#: What each task's owner has seen so far: [(state, time), ...] (a row carries them all).
_HISTORY: dict[tuple[int, int], list[tuple[str, float]]] = {}


def _owner_row(store: TaskEventStore, i: int, state: str, ts: float, job: bytes = b"\x01",
               error_type: str | None = None, error: str | None = None,
               ran: tuple[float, float] | None = None, pid: int = 0) -> None:
    steps = _HISTORY.setdefault((id(store), i), [])
    steps.append((state, ts))
    row = TaskRow(_tid(i), 0, "f", job, None, 0, None, None,
                  tuple(TASK_STATES.index(s) for s, _ in steps), tuple(t for _, t in steps), error_type, error)
    if ran is not None:  # the reply told the owner when the execution ran, on the lease's worker
        row.start, row.end, row.worker, row.node, row.pid = ran[0], ran[1], b"w" * 16, b"n" * 16, pid
    if state in ("FINISHED", "FAILED"):  # the row of a task that ended: kept encoded
        store.add_batch(TaskEventBatch(job=job, ended=[EndedRows(job, 1, encode_rows([row]))]))
    else:
        store.add_batch(TaskEventBatch(job=job, tasks=encode_rows([row])))


def _submit(store: TaskEventStore, i: int, job: bytes = b"\x01") -> None:
    _owner_row(store, i, "PENDING_ARGS_AVAIL", 1.0 + i, job)


def _state(store: TaskEventStore, i: int, state: str, ts: float, **extra: Any) -> None:
    _owner_row(store, i, state, ts, **extra)


def _run(store: TaskEventStore, i: int, start: float, pid: int) -> None:
    """A worker's row of an execution still running after a batch period."""
    run = RunRow(_tid(i), 0, start, "f", b"\x01", None)
    store.add_batch(TaskEventBatch(job=b"\x01", runs=encode_rows([run]), worker=b"w" * 16, node=b"n" * 16, pid=pid))


def test_owner_and_executor_views_merge():
    store = TaskEventStore(100)
    _submit(store, 1)
    _state(store, 1, "SUBMITTED_TO_WORKER", 2.0)
    _run(store, 1, 2.5, 42)
    row = store.list([], 10, True)["result"][0]
    assert (row["state"], row["worker_pid"], row["node_id"]) == ("RUNNING", 42, (b"n" * 16).hex())
    # The owner's FINISHED row carries the execution's end (its reply said): it supersedes the live row.
    _state(store, 1, "FINISHED", 3.0, ran=(2.5, 2.9), pid=42)
    row = store.list([], 10, True)["result"][0]
    assert row["state"] == "FINISHED" and row["start_time_ms"] == 2500.0 and row["end_time_ms"] == 2900.0
    assert (row["worker_pid"], row["worker_id"]) == (42, (b"w" * 16).hex())
    assert [e["state"] for e in row["events"]] == ["PENDING_ARGS_AVAIL", "SUBMITTED_TO_WORKER", "RUNNING", "FINISHED"]
    _run(store, 1, 2.5, 42)  # a worker's batch that left before the end: changes nothing
    assert store.list([], 10, True)["result"][0]["end_time_ms"] == 2900.0


def test_a_short_task_is_known_from_its_owners_row_alone():
    store = TaskEventStore(100)
    _submit(store, 1)
    _state(store, 1, "FINISHED", 3.0, ran=(2.5, 2.9), pid=42)
    (row,) = store.list([], 10, True)["result"]
    assert (row["state"], row["worker_pid"], row["node_id"]) == ("FINISHED", 42, (b"n" * 16).hex())
    assert (row["start_time_ms"], row["end_time_ms"]) == (2500.0, 2900.0)
    (run,) = store.executions()
    assert (run.start, run.end, run.pid) == (2.5, 2.9, 42)


def test_a_retry_running_now_is_newer_than_the_owners_last_execution():
    store = TaskEventStore(100)
    _submit(store, 1)
    _state(store, 1, "PENDING_NODE_ASSIGNMENT", 3.0, ran=(2.5, 2.9), pid=42)  # failed, retried
    _run(store, 1, 3.5, 43)  # the retry has run for a while on another worker
    (row,) = store.list([], 10, True)["result"]
    assert (row["state"], row["worker_pid"], row["start_time_ms"], row["end_time_ms"]) == ("RUNNING", 43, 3500.0, None)


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
    _run(store, 1, 3.0, 7)
    _state(store, 1, "SUBMITTED_TO_WORKER", 2.0)  # the owner's batch came later
    assert store.list([], 1, False)["result"][0]["state"] == "RUNNING"


def test_a_long_history_keeps_the_steps_its_owner_forgot():
    store = TaskEventStore(100)
    first = TaskRow(_tid(1), 0, "f", b"\x01", None, 0, None, None, (0, 1, 2), (1.0, 2.0, 3.0))
    later = TaskRow(_tid(1), 1, "f", b"\x01", None, 0, None, None, (2, 1, 2, 4), (3.0, 4.0, 5.0, 6.0))
    store.add_batch(TaskEventBatch(job=b"\x01", tasks=encode_rows([first])))
    store.add_batch(TaskEventBatch(job=b"\x01", tasks=encode_rows([later])))
    row = store.list([], 1, True)["result"][0]
    assert [e["created_ms"] for e in row["events"]] == [1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0]
    assert row["state"] == "FINISHED" and row["attempt_number"] == 1


def test_an_older_execution_never_replaces_a_newer_one():
    store = TaskEventStore(100)
    _submit(store, 1)
    _run(store, 1, 3.5, 43)
    _run(store, 1, 2.5, 42)  # the first attempt's worker's batch came late
    assert store.list([], 1, True)["result"][0]["worker_pid"] == 43


def test_a_pushed_task_shows_its_worker_before_it_is_known_to_run():
    store = TaskEventStore(100)
    _submit(store, 1)
    row = TaskRow(_tid(1), 0, "f", b"\x01", None, 0, None, None, (0, 2), (1.0, 2.0), worker=b"w" * 16, node=b"n" * 16, pid=5)
    store.add_batch(TaskEventBatch(job=b"\x01", tasks=encode_rows([row])))
    (view,) = store.list([], 1, True)["result"]
    assert (view["state"], view["worker_pid"], view["start_time_ms"]) == ("SUBMITTED_TO_WORKER", 5, None)


def test_an_execution_whose_owner_row_has_not_come_is_listed_running():
    store = TaskEventStore(100)
    _run(store, 7, 2.5, 9)
    (row,) = store.list([("state", "=", "RUNNING")], 10, False)["result"]
    assert (row["task_id"], row["name"], row["worker_pid"]) == (_tid(7).hex(), "f", 9)
    assert store.summary()["summary"]["f"]["state_counts"] == {"RUNNING": 1}


def test_a_finished_task_run_again_is_live_again():
    store = TaskEventStore(100)
    _submit(store, 1)
    _state(store, 1, "FINISHED", 2.0)
    _state(store, 1, "PENDING_ARGS_AVAIL", 3.0)  # its result was lost: lineage reconstruction
    assert store.counts_by_state() == {"PENDING_ARGS_AVAIL": 1}


def test_malformed_rows_are_protocol_errors():
    store = TaskEventStore(100)
    bad = TaskEventBatch(job=b"\x01", tasks=encode_rows([[b"x", 0, "f", b"\x01", None, 9, None, None, (), ()]]))
    with pytest.raises(ProtocolError):
        store.add_batch(bad)
    with pytest.raises(ProtocolError):
        store.add_batch(TaskEventBatch(runs=b"\xc1"))
    assert store.list([], 10, False)["stored"] == 0



def _ended(i: int, job: bytes = b"\x01", state: str = "FINISHED", pid: int | None = None) -> TaskRow:
    row = TaskRow(_tid(i), 0, "f", job, None, 0, None, None, (0, TASK_STATES.index(state)), (1.0 + i, 2.0 + i))
    if pid is not None:
        row.start, row.end, row.worker, row.node, row.pid = 1.5 + i, 1.9 + i, b"w" * 16, b"n" * 16, pid
    return row


def _chunk(rows: list[TaskRow], job: bytes = b"\x01") -> EndedRows:
    return EndedRows(job, len(rows), encode_rows(rows))


def test_ended_rows_are_kept_encoded_and_supersede_live_rows():
    store = TaskEventStore(100)
    for i in range(3):
        _submit(store, i)
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[_chunk([_ended(0), _ended(1, state="FAILED")])]))
    assert set(store.tasks) == {_tid(2)}, "the live rows of the tasks that ended are gone"
    (chunk,) = store.ended[b"\x01"]
    assert isinstance(chunk.chunk.rows, bytes) and chunk.kept == 2
    listed = store.list([], 10, False)
    assert listed["stored"] == 3 and listed["dropped"] == 0
    assert [(r["task_id"], r["state"]) for r in listed["result"]] == [
        (_tid(2).hex(), "PENDING_ARGS_AVAIL"), (_tid(1).hex(), "FAILED"), (_tid(0).hex(), "FINISHED")]
    assert store.counts_by_state() == {"PENDING_ARGS_AVAIL": 1, "FAILED": 1, "FINISHED": 1}


def test_retention_cuts_into_ended_chunks_and_forgets_their_executions():
    store = TaskEventStore(5)
    for i in range(4):  # long executions: the worker's rows came before the owner's
        _run(store, i, 1.2 + i, 9)
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[_chunk([_ended(i, pid=9) for i in range(4)])]))
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[_chunk([_ended(i) for i in range(4, 7)])]))
    listed = store.list([], 100, False)
    assert listed["stored"] == 5 and listed["dropped"] == 2
    assert [r["task_id"] for r in listed["result"]] == [_tid(i).hex() for i in (6, 5, 4, 3, 2)]
    assert set(store.runs) == {_tid(2), _tid(3)}, "the dropped tasks' execution rows went with them"
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[_chunk([_ended(7)])]))
    assert set(store.runs) == {_tid(3)} and store.list([], 100, False)["dropped"] == 3
    # Another job's tasks count against that job only.
    store.add_batch(TaskEventBatch(job=b"\x02", ended=[_chunk([_ended(9, job=b"\x02")], job=b"\x02")]))
    assert store.list([("job_id", "=", "02")], 10, False)["total"] == 1
    assert store.list([], 10, False)["stored"] == 6


def test_an_execution_known_only_from_its_worker_is_listed_first():
    store = TaskEventStore(100)
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[_chunk([_ended(i) for i in range(50)])]))
    _run(store, 99, 3.0, 9)
    (first,) = store.list([], 1, False)["result"]
    assert (first["task_id"], first["state"]) == (_tid(99).hex(), "RUNNING")


def test_ended_rows_that_lie_about_their_count_are_refused_and_undecodable_ones_dropped_when_read(caplog):
    store = TaskEventStore(100)
    with pytest.raises(ProtocolError, match="ended rows"):
        store.add_batch(TaskEventBatch(job=b"\x01", ended=[EndedRows(b"\x01", 50, b"\x91\x01")]))
    with pytest.raises(ProtocolError, match="ended rows"):
        store.add_batch(TaskEventBatch(job=b"\x01", ended=[EndedRows(b"\x01", 0, encode_rows([]))]))
    assert store.list([], 10, False)["stored"] == 0 and store.list([], 10, False)["dropped"] == 0
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[_chunk([_ended(1)])]))
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[EndedRows(b"\x01", 2, b"\x92\xc1\xc1")]))
    with caplog.at_level("WARNING", logger="ember.gcs.task_events"):
        listed = store.list([], 10, False)
    assert [r["task_id"] for r in listed["result"]] == [_tid(1).hex()]
    assert listed["dropped"] == 2 and "unreadable" in caplog.text
    assert store.list([], 10, False)["stored"] == 1
    _submit(store, 2)  # with live rows kept, a chunk's task ids are read as it comes: refused then
    with pytest.raises(ProtocolError, match="ended rows"):
        store.add_batch(TaskEventBatch(job=b"\x01", ended=[EndedRows(b"\x01", 2, b"\x92\xc1\xc1")]))
    assert store.list([], 10, False)["stored"] == 2


def test_queries_that_no_ended_row_can_match_read_no_chunk():
    store = TaskEventStore(100)
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[_chunk([_ended(i) for i in range(2, 5)])]))
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[EndedRows(b"\x01", 2, b"\x92\xc1\xc1")]))  # unreadable
    _submit(store, 1)
    _run(store, 1, 2.5, 9)
    running = store.list([("state", "=", "running")], 10, False)
    assert [r["task_id"] for r in running["result"]] == [_tid(1).hex()]
    assert running["stored"] == 6 and running["dropped"] == 0, "the unreadable chunk was not read"
    assert store.list([("job_id", "=", "02")], 10, False) | {"result": []} == {
        "result": [], "total": 0, "num_after_truncation": 0, "num_filtered": 0, "dropped": 0, "stored": 6}
    assert store.list([("state", "=", "FINISHED")], 10, False)["total"] == 3  # read: now dropped, counted
    assert store.list([], 10, False)["dropped"] == 2


def test_executions_since_a_time_skip_chunks_that_came_well_before_it():
    store = TaskEventStore(100)
    rows = [_ended(i, pid=9) for i in range(3)]
    for row in rows:
        row.start, row.end = 999.0, 1001.0
    store.add_batch(TaskEventBatch(job=b"\x01", ended=[_chunk(rows)]))
    assert len(store.executions()) == 3
    (chunk,) = store.ended[b"\x01"]
    chunk.received = 1000.0
    assert len(store.executions(since=1000.0)) == 3, "within the clocks' allowance"
    assert store.executions(since=2000.0) == []
    assert len(store.executions(since=0.0, job=b"\x01")) == 3 and store.executions(job=b"\x02") == []

# ------------------------------------------------------------------ the recorder of one process
class _Info:
    worker_id = b"w" * 16
    node_id = b"n" * 16


def _recorder() -> TaskEventRecorder:
    context = TaskContext()
    context.driver_task_id = b"d" * 16
    return TaskEventRecorder(_Info(), context, None)  # type: ignore[arg-type]


def _entry(name: str = "f") -> TaskEntry:
    spec = {"tid": _tid(len(name)), "name": name, "job": b"\x01", "res": {"CPU": 1.0}}
    return TaskEntry(spec, name, [], 0, False, [], None, {"CPU": 1.0})


def _rows(batch: TaskEventBatch | None) -> tuple[list[TaskRow], list[RunRow]]:
    """The batch's task rows (live, then ended) and execution rows."""
    assert batch is not None
    return task_rows(batch) + [row for chunk in batch.ended for row in ended_rows(chunk)], run_rows(batch)


class _Lease:
    worker_id = b"x" * 16
    node_id = b"y" * 16
    pid = 77


def test_the_owner_sends_one_row_per_task_built_from_its_history():
    recorder = _recorder()
    entry = _entry()
    entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, "queued")
    entry.transition(TaskStatus.SUBMITTED_TO_WORKER, "pushed")
    entry.attempt = 1
    entry.lease = _Lease()
    entry.ran = [5.0, 6.0]  # what the reply said
    entry.transition(TaskStatus.FINISHED, "returned")
    recorder.task_finished(entry)
    (row,), runs = _rows(recorder.take_batch())
    assert runs == [] and (row.task_id, row.name, row.parent, row.resources) == (_tid(1), "f", b"d" * 16, {"CPU": 1.0})
    assert (row.start, row.end, row.worker, row.node, row.pid) == (5.0, 6.0, b"x" * 16, b"y" * 16, 77)
    assert [TASK_STATES[c] for c in row.states] == [s.value for _, _, s, _ in entry.history.steps]
    assert row.times == tuple(at for at, _, _, _ in entry.history.steps)
    assert recorder.take_batch() is None


def test_a_live_task_is_sent_once_its_state_is_older_than_the_last_batch():
    recorder = _recorder()
    entry = _entry()
    recorder.live_tasks = lambda: [entry]
    assert recorder.take_batch() is None  # it may end before the next batch: not sent yet
    (row,), _ = _rows(recorder.take_batch())
    assert [TASK_STATES[c] for c in row.states] == ["PENDING_ARGS_AVAIL"]
    assert recorder.take_batch() is None  # unchanged: not sent again
    entry.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, "queued")
    assert recorder.take_batch() is None
    (row,), _ = _rows(recorder.take_batch())
    assert [TASK_STATES[c] for c in row.states] == ["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT"]


def test_an_execution_is_sent_running_only_while_long_and_its_end_goes_in_the_reply():
    recorder = _recorder()
    spec = {"tid": _tid(1), "name": "f", "job": b"\x01", "attempt": 2}
    recorder.execution_started(spec, b"a" * 16)
    assert recorder.take_batch() is None
    batch = recorder.take_batch()
    _, (live,) = _rows(batch)
    assert batch is not None and (batch.worker, batch.pid) == (b"w" * 16, os.getpid())
    assert (live.attempt, live.actor) == (1, b"a" * 16)
    start, end = recorder.execution_ended(_tid(1)) or (None, None)
    assert start == live.start and end is not None and end >= start
    assert recorder.take_batch() is None, "the owner reports the end, with the task"
    recorder.execution_started({"tid": _tid(2), "name": "f", "job": b"\x01"}, None)
    assert recorder.execution_ended(_tid(2)) is not None
    assert recorder.take_batch() is None, "a short execution costs its worker no row"


def test_actor_calls_and_failures_are_rows_too():
    recorder = _recorder()
    spec = {"tid": _tid(2), "name": "A.f", "job": b"\x01", "aid": b"a" * 16}
    recorder.actor_call(spec, "PENDING_ARGS_AVAIL")
    recorder.actor_call(spec, "SUBMITTED_TO_WORKER")
    error = serialization.serialize_error(KeyError("lost key")).to_inline()
    recorder.actor_call_failed(spec, (INLINE, error), "failed", [3.0, 4.0], (b"x" * 16, b"y" * 16, 9))
    (row,), _ = _rows(recorder.take_batch())
    assert [TASK_STATES[c] for c in row.states] == ["PENDING_ARGS_AVAIL", "SUBMITTED_TO_WORKER", "FAILED"]
    assert (row.kind, row.actor, row.error_type) == (1, b"a" * 16, "TASK_EXECUTION_EXCEPTION")
    assert "lost key" in (row.error or "")
    assert (row.start, row.end, row.pid) == (3.0, 4.0, 9)


def test_a_full_buffer_drops_the_oldest_rows_and_counts_them(ember_env):
    ember_env(task_events_buffer_size=3)
    recorder = _recorder()
    for i in range(5):
        entry = _entry("f" * (i + 1))
        entry.transition(TaskStatus.FAILED, "cancelled")
        recorder.task_finished(entry)
    batch = recorder.take_batch()
    assert batch is not None and batch.dropped == 2
    assert [row.task_id for row in _rows(batch)[0]] == [_tid(3), _tid(4), _tid(5)]


def test_repeated_values_are_kept_once():
    store = TaskEventStore(100)
    for i in range(2):  # two batches: decoding made new objects for each row
        row = TaskRow(_tid(i), 0, "f", b"\x01", b"p" * 16, 0, None, {"CPU": 1.0}, (0,), (1.0,),
                      worker=b"w" * 16, node=b"n" * 16, pid=3)
        store.add_batch(TaskEventBatch(job=b"\x01", tasks=encode_rows([row, row])))
    kept = list(store.tasks.values())
    assert len(kept) == 2
    for field in ("name", "job", "parent", "resources", "worker", "node"):
        assert getattr(kept[0], field) is getattr(kept[1], field), field


def test_ended_rows_go_encoded_by_job_and_a_forgotten_history_goes_to_be_merged():
    recorder = _recorder()
    for name, job in (("f", b"\x01"), ("ff", b"\x02"), ("fff", b"\x01")):
        entry = _entry(name)
        entry.spec["job"] = job
        entry.transition(TaskStatus.FAILED, "cancelled")
        recorder.task_finished(entry)
    long = _entry("g" * 9)
    long.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, "queued")
    for _ in range(10):  # more steps than a task's history keeps
        long.transition(TaskStatus.SUBMITTED_TO_WORKER, "pushed")
        long.transition(TaskStatus.PENDING_NODE_ASSIGNMENT, "retried")
    long.transition(TaskStatus.FAILED, "cancelled")
    recorder.task_finished(long)
    batch = recorder.take_batch()
    assert batch is not None
    assert [row.task_id for row in task_rows(batch)] == [_tid(9)], "decoded on arrival, to be merged"
    by_job = {chunk.job: [row.task_id for row in ended_rows(chunk)] for chunk in batch.ended}
    assert by_job == {b"\x01": [_tid(1), _tid(3)], b"\x02": [_tid(2)]}
    assert [chunk.count for chunk in batch.ended] == [len(by_job[chunk.job]) for chunk in batch.ended]


def test_a_task_that_finished_in_four_steps_went_straight_through():
    """The owner's row takes this for granted (``_STRAIGHT_CODES``): check it against the table."""
    from ember.core.task_state import TASK_TRANSITIONS

    paths = [[TaskStatus.PENDING_ARGS_AVAIL]]
    for _ in range(3):
        paths = [path + [new] for path in paths for (old, new) in TASK_TRANSITIONS.edges if old is path[-1]]
    assert [path for path in paths if path[-1] is TaskStatus.FINISHED] == [[
        TaskStatus.PENDING_ARGS_AVAIL, TaskStatus.PENDING_NODE_ASSIGNMENT, TaskStatus.SUBMITTED_TO_WORKER,
        TaskStatus.FINISHED]]
