"""The five state machines (task, worker, actor, placement group, a caller's view of an actor)
and the shared transition-table helper, without a cluster."""

from __future__ import annotations

import heapq
import itertools
import subprocess

import pytest

from ember._private.state_machine import InvalidTransition, TransitionTable, story
from ember.core.actor_submitter import ActorClient, ActorView
from ember.core.task_state import TASK_TRANSITIONS, TaskEntry, TaskStatus
from ember.gcs.actor_manager import ACTOR_TRANSITIONS, ActorEntry, ActorState
from ember.gcs.placement_groups import PG_TRANSITIONS, PgEntry, PgState
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
    entry.state = status
    return entry


def test_new_task_waits_for_its_arguments():
    entry = _task()
    assert entry.state is T.PENDING_ARGS_AVAIL
    assert not entry.done


def test_happy_path_and_retry_path():
    entry = _task()
    for status in (T.PENDING_NODE_ASSIGNMENT, T.SUBMITTED_TO_WORKER, T.PENDING_NODE_ASSIGNMENT,
                   T.SUBMITTED_TO_WORKER, T.FINISHED):
        entry.transition(status, "test")
        assert entry.state is status
    assert entry.done


@pytest.mark.parametrize("old, new", list(itertools.product(TaskStatus, TaskStatus)),
                         ids=lambda s: s.value)
def test_every_task_transition_is_legal_or_raises(old, new):
    entry = _task(old)
    if (old, new) in LEGAL_TASK_MOVES:
        entry.transition(new, "test")
        assert entry.state is new
    else:
        with pytest.raises(InvalidTransition, match=f"illegal task transition {old.name} -> {new.name}"):
            entry.transition(new, "test")
        assert entry.state is old  # unchanged


@pytest.mark.parametrize("terminal", [T.FINISHED, T.FAILED])
def test_terminal_states_are_final(terminal):
    entry = _task(terminal)
    assert entry.done
    for status in TaskStatus:
        if (terminal, status) in LEGAL_TASK_MOVES:
            continue  # FINISHED -> PENDING_ARGS_AVAIL: only lineage reconstruction reopens a task
        with pytest.raises(InvalidTransition):
            entry.transition(status, "test")


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
        handle.transition(new, "test")
        assert handle.state is new
    else:
        with pytest.raises(InvalidTransition, match=f"illegal worker transition {old.name} -> {new.name}"):
            handle.transition(new, "test")
        assert handle.state is old


def test_idle_since_is_updated_when_the_worker_becomes_idle(exited_process):
    handle = _worker(exited_process, W.STARTING)
    before = handle.idle_since
    handle.transition(W.IDLE, "test")
    handle.transition(W.LEASED, "test")
    handle.transition(W.IDLE, "test")
    assert handle.idle_since >= before


def test_dead_is_final(exited_process):
    handle = _worker(exited_process, W.DEAD)
    for status in WorkerState:
        with pytest.raises(InvalidTransition):
            handle.transition(status, "test")


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
        client.transition(new, "test")
        assert client.state is new
    else:
        with pytest.raises(InvalidTransition, match=f"illegal actor view transition {old.name} -> {new.name}"):
            client.transition(new, "test")
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


# ============================================================================ actors and placement groups
A = ActorState
LEGAL_ACTOR_MOVES = {
    (A.PENDING_CREATION, A.ALIVE), (A.PENDING_CREATION, A.DEAD), (A.PENDING_CREATION, A.RESTARTING),
    (A.ALIVE, A.RESTARTING), (A.ALIVE, A.DEAD), (A.RESTARTING, A.ALIVE), (A.RESTARTING, A.DEAD),
    (A.RESTARTING, A.RESTARTING),
}


@pytest.mark.parametrize("old, new", list(itertools.product(ActorState, ActorState)), ids=lambda s: s.value)
def test_every_actor_transition_is_legal_or_raises(old, new):
    entry = ActorEntry({"actor_id": b"a" * 16, "class_name": "Counter", "name": "c"})
    entry.state = old
    if (old, new) in LEGAL_ACTOR_MOVES:
        entry.transition(new, "test")
        assert entry.state is new
    else:
        with pytest.raises(InvalidTransition, match=f"illegal actor transition {old.name} -> {new.name}"):
            entry.transition(new, "test")
        assert entry.state is old


P = PgState
LEGAL_PG_MOVES = {
    (P.PENDING, P.CREATED), (P.PENDING, P.REMOVED), (P.CREATED, P.RESCHEDULING), (P.CREATED, P.REMOVED),
    (P.RESCHEDULING, P.CREATED), (P.RESCHEDULING, P.REMOVED),
}


@pytest.mark.parametrize("old, new", list(itertools.product(PgState, PgState)), ids=lambda s: s.value)
def test_every_placement_group_transition_is_legal_or_raises(old, new):
    entry = PgEntry({"pg_id": b"p" * 18, "bundles": [{"CPU": 1}], "strategy": "PACK"})
    entry.state = old
    if (old, new) in LEGAL_PG_MOVES:
        entry.transition(new, "test")
        assert entry.state is new
    else:
        with pytest.raises(InvalidTransition, match=f"illegal placement group transition {old.name} -> {new.name}"):
            entry.transition(new, "test")
        assert entry.state is old


# ============================================================================ the shared helper
def test_each_table_describes_every_edge():
    for table in (TASK_TRANSITIONS, ACTOR_TRANSITIONS, PG_TRANSITIONS):
        lines = table.describe()
        assert len(lines) == len(table.edges)
        assert all(" -> " in line and ": " in line for line in lines)


def test_illegal_move_names_the_object_and_its_recent_history():
    entry = TaskEntry({"tid": b"t" * 16}, "f", [b"r" * 20], 3, False, [], (), {})
    entry.transition(T.PENDING_NODE_ASSIGNMENT, "every argument available")
    entry.transition(T.SUBMITTED_TO_WORKER, "pushed to worker pid 42")
    entry.transition(T.FINISHED, "returned")
    with pytest.raises(InvalidTransition) as info:
        entry.transition(T.SUBMITTED_TO_WORKER, "a stray reply")
    message = str(info.value)
    assert "illegal task transition FINISHED -> SUBMITTED_TO_WORKER" in message
    assert ("task f " + (b"t" * 16).hex()) in message
    assert "a stray reply" in message
    # The story so far, oldest first, with each step's reason.
    order = ["(new) -> PENDING_ARGS_AVAIL (submitted)", "PENDING_ARGS_AVAIL -> PENDING_NODE_ASSIGNMENT",
             "pushed to worker pid 42", "SUBMITTED_TO_WORKER -> FINISHED (returned)"]
    positions = [message.index(part) for part in order]
    assert positions == sorted(positions)
    assert entry.state is T.FINISHED


def test_story_tells_what_happened_and_history_is_bounded():
    entry = _task()
    for attempt in range(40):  # a task bounced many times: only the newest steps are kept
        entry.transition(T.PENDING_NODE_ASSIGNMENT, f"retry {attempt}")
        entry.transition(T.SUBMITTED_TO_WORKER, f"push {attempt}")
    text = story(entry)
    assert text.splitlines()[0].startswith("task f ") and "now SUBMITTED_TO_WORKER" in text
    assert "earlier steps forgotten" in text
    assert len(entry.history.steps) == TASK_TRANSITIONS.history_limit
    assert "push 39" in text and "retry 0" not in text


def test_observers_see_every_move_and_can_stop():
    class Color(__import__("enum").Enum):
        RED = 1
        GREEN = 2

    table = TransitionTable("light", {(Color.RED, Color.GREEN): "go", (Color.GREEN, Color.RED): "stop"})

    class Light:
        label = "light 1"

        def __init__(self):
            from ember._private.state_machine import History
            self.history = History()
            table.start(self, Color.RED, "installed")

    seen = []
    stop = table.observe(lambda obj, old, new, reason: seen.append((old, new, reason)))
    light = Light()
    table.move(light, Color.GREEN, "timer")
    stop()
    table.move(light, Color.RED, "timer")
    assert seen == [(None, Color.RED, "installed"), (Color.RED, Color.GREEN, "timer")]
    assert table.allows(Color.GREEN, Color.RED) and not table.allows(Color.RED, Color.RED)
    with pytest.raises(InvalidTransition):
        table.move(light, Color.RED, "again")
