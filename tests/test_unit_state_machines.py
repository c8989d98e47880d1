"""Task (owner side) and worker (node daemon side) state machines (no cluster)."""

from __future__ import annotations

import heapq
import itertools
import subprocess

import pytest

from ember.core.actor_submitter import ActorClient, ActorView
from ember.core.task_state import TaskEntry, TaskStatus
from ember.raylet.worker_pool import WorkerHandle, WorkerState

T = TaskStatus
LEGAL_TASK_MOVES = {
    (T.PENDING_ARGS_AVAIL, T.PENDING_NODE_ASSIGNMENT),
    (T.PENDING_ARGS_AVAIL, T.FAILED),
    (T.PENDING_NODE_ASSIGNMENT, T.SUBMITTED_TO_WORKER),
    (T.PENDING_NODE_ASSIGNMENT, T.FAILED),
    (T.SUBMITTED_TO_WORKER, T.FINISHED),
    (T.SUBMITTED_TO_WORKER, T.FAILED),
    (T.SUBMITTED_TO_WORKER, T.PENDING_NODE_ASSIGNMENT),
    (T.SUBMITTED_TO_WORKER, T.PENDING_ARGS_AVAIL),  # a lost argument is being recovered
    (T.FINISHED, T.PENDING_ARGS_AVAIL),  # lineage reconstruction
}


def _task(status=T.PENDING_ARGS_AVAIL):
    entry = TaskEntry({"tid": b"t" * 16}, "f", [b"r" * 20], 3, False, [], (), {})
    entry.status = status
    return entry


def test_new_task_waits_for_its_arguments():
    entry = _task()
    assert entry.status is T.PENDING_ARGS_AVAIL
    assert not entry.done


def test_happy_path_and_retry_path():
    entry = _task()
    for status in (T.PENDING_NODE_ASSIGNMENT, T.SUBMITTED_TO_WORKER, T.PENDING_NODE_ASSIGNMENT,
                   T.SUBMITTED_TO_WORKER, T.FINISHED):
        entry.transition(status)
        assert entry.status is status
    assert entry.done


@pytest.mark.parametrize("old, new", list(itertools.product(TaskStatus, TaskStatus)),
                         ids=lambda s: s.value)
def test_every_task_transition_is_legal_or_raises(old, new):
    entry = _task(old)
    if (old, new) in LEGAL_TASK_MOVES:
        entry.transition(new)
        assert entry.status is new
    else:
        with pytest.raises(RuntimeError, match=f"illegal task transition {old.value} -> {new.value}"):
            entry.transition(new)
        assert entry.status is old  # unchanged


@pytest.mark.parametrize("terminal", [T.FINISHED, T.FAILED])
def test_terminal_states_are_final(terminal):
    entry = _task(terminal)
    assert entry.done
    for status in TaskStatus:
        if (terminal, status) in LEGAL_TASK_MOVES:
            continue  # FINISHED -> PENDING_ARGS_AVAIL: only lineage reconstruction reopens a task
        with pytest.raises(RuntimeError):
            entry.transition(status)


# ----------------------------------------------------------------------------- workers
W = WorkerState
LEGAL_WORKER_MOVES = {
    (W.STARTING, W.IDLE),
    (W.STARTING, W.DEAD),
    (W.IDLE, W.LEASED),
    (W.IDLE, W.DEAD),
    (W.LEASED, W.IDLE),
    (W.LEASED, W.DEAD),
}


@pytest.fixture(scope="module")
def exited_process():
    """A real (already finished) process for the handle to describe."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc


def _worker(proc, status=W.STARTING):
    handle = WorkerHandle(b"w" * 16, proc, "/dev/null", "/dev/null")
    handle.state = status
    return handle


def test_worker_starts_in_starting(exited_process):
    handle = WorkerHandle(b"w" * 16, exited_process, "/dev/null", "/dev/null")
    assert handle.state is W.STARTING
    assert handle.pid == exited_process.pid


@pytest.mark.parametrize("old, new", list(itertools.product(WorkerState, WorkerState)),
                         ids=lambda s: s.value)
def test_every_worker_transition_is_legal_or_raises(exited_process, old, new):
    handle = _worker(exited_process, old)
    if (old, new) in LEGAL_WORKER_MOVES:
        handle.transition(new)
        assert handle.state is new
    else:
        with pytest.raises(RuntimeError, match=f"illegal worker transition {old.value} -> {new.value}"):
            handle.transition(new)
        assert handle.state is old


def test_idle_since_is_updated_when_the_worker_becomes_idle(exited_process):
    handle = _worker(exited_process, W.STARTING)
    before = handle.idle_since
    handle.transition(W.IDLE)
    handle.transition(W.LEASED)
    handle.transition(W.IDLE)
    assert handle.idle_since >= before


def test_dead_is_final(exited_process):
    handle = _worker(exited_process, W.DEAD)
    for status in WorkerState:
        with pytest.raises(RuntimeError):
            handle.transition(status)


# ============================================================================ a caller's view of an actor
V = ActorView
LEGAL_ACTOR_VIEW_MOVES = {
    (V.UNKNOWN, V.ALIVE), (V.UNKNOWN, V.DEAD), (V.ALIVE, V.ALIVE), (V.ALIVE, V.RESTARTING),
    (V.ALIVE, V.DEAD), (V.RESTARTING, V.ALIVE), (V.RESTARTING, V.DEAD),
}


@pytest.mark.parametrize("old, new", list(itertools.product(ActorView, ActorView)), ids=lambda s: s.value)
def test_every_actor_view_transition_is_legal_or_raises(old, new):
    client = ActorClient(b"a" * 16)
    client.state = old
    if (old, new) in LEGAL_ACTOR_VIEW_MOVES:
        client.transition(new)
        assert client.state is new
    else:
        with pytest.raises(RuntimeError, match=f"illegal actor view transition {old.value} -> {new.value}"):
            client.transition(new)
        assert client.state is old


def test_oldest_call_in_flight_skips_finished_and_resent_calls():
    class Call:
        def __init__(self, seq):
            self.spec = {"seq": seq, "tid": bytes([seq]) * 16}

    client = ActorClient(b"a" * 16)
    assert client.oldest_in_flight() is None
    calls = [Call(i) for i in range(5)]
    for call in calls:
        client.in_flight[call.spec["tid"]] = call
        heapq.heappush(client.in_flight_seqs, (call.spec["seq"], call.spec["tid"]))
    assert client.oldest_in_flight() == 0
    del client.in_flight[calls[0].spec["tid"]]
    del client.in_flight[calls[2].spec["tid"]]  # finished out of order: the oldest is still 1
    assert client.oldest_in_flight() == 1
    del client.in_flight[calls[1].spec["tid"]]
    assert client.oldest_in_flight() == 3
    for tid in list(client.in_flight):
        del client.in_flight[tid]
    assert client.oldest_in_flight() is None and client.in_flight_seqs == []
