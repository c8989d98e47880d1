"""The core worker's components wired together, driven without a cluster (see offline_core.py).

put/get/wait through the memory store and a temporary object store, task submission
through leases and pushes answered by fake connections, ownership between two
processes' worth of state, and the task manager's invariants after each step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from protocol_helpers import via_wire

from ember._private import ids, serialization
from ember._private.object_ref import ObjectRef
from ember.core.memory_store import INLINE, PLASMA
from ember.core.task_manager import ARG_PLASMA, ARG_REF, ARG_VALUE
from ember.core.task_state import TaskEntry, TaskStatus
from ember.exceptions import (
    ErrorCode,
    GetTimeoutError,
    LocalRayletDiedError,
    ObjectLostError,
    ObjectStoreFullError,
    OwnerDiedError,
    RemoteError,
    TaskCancelledError,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from tests.offline_core import OfflineCore

BIG = 200 * 1024  # above the 100 KiB inline limit


@pytest.fixture
def core(tmp_path: Any) -> Iterator[OfflineCore]:
    offline = OfflineCore(str(tmp_path))
    try:
        yield offline
    finally:
        offline.close()


def _task(core: OfflineCore, args: tuple[Any, ...] = (), retries: int = 0, name: str = "f",
          nret: int = 1, parent: bytes | None = None, strategy: Any = None) -> tuple[TaskEntry, list[ObjectRef]]:
    """What ``f.remote(*args)`` hands the core worker."""
    worker = core.worker
    task_id = ids.new_task_id(worker.current_job_id)
    return_ids = [ids.return_object_id(task_id, i + 1) for i in range(nret)]
    wire, kw, arg_ids = worker.encode_args(args, {}, name)
    spec = {"tid": task_id, "job": worker.current_job_id, "fid": b"f" * 20, "name": name, "args": wire,
            "kw": kw, "nret": nret, "rids": return_ids, "owner": worker.address, "res": {"CPU": 1.0}}
    for rid in return_ids:
        worker.reference_counter.add_owned(rid, worker.address)
    refs = [ObjectRef(rid, worker.address) for rid in return_ids]
    entry = TaskEntry(spec, name, return_ids, retries, False, arg_ids, (("CPU", 1.0), strategy), {"CPU": 1.0})
    entry.parent = parent
    entry.strategy = strategy
    worker.submit_task(entry)
    return entry, refs


def _grant(core: OfflineCore, port: int = 41000, pid: int = 77, request: Any = None) -> Any:
    """Answer the pending lease request (the oldest, or ``request``: (payload, future)) with a worker at ``port``."""
    payload, fut = request or core.raylet.take("request_lease")
    peer = core.peer(port)
    fut.set_result({"address": ["127.0.0.1", port, b"x" * 28], "lease_id": b"L" + bytes([port % 256]),
                    "worker_id": b"W" * 28, "pid": pid})
    core.settle()
    return payload, peer


def _validate(core: OfflineCore) -> None:
    core.worker.task_manager.validate()


def _ok(value: Any) -> dict[str, Any]:
    return {"s": "ok", "r": [[0, serialization.serialize(value).to_inline(), []]]}


# ==================================================================== objects
def test_put_and_get_inline(core: OfflineCore) -> None:
    worker = core.worker
    ref = worker.put({"a": 1})
    assert worker.memory_store.get(ref._id)[0] == INLINE
    assert worker.get([ref], 0) == [{"a": 1}]
    assert worker.reference_counter.is_owned(ref._id)
    oid = ref._id
    del ref
    core.settle()
    assert not worker.memory_store.contains(oid)
    assert not worker.reference_counter.has_reference(oid)


def test_put_of_a_ref_is_refused(core: OfflineCore) -> None:
    ref = core.worker.put(1)
    with pytest.raises(TypeError, match="put\\(\\) on an ObjectRef"):
        core.worker.put(ref)


def test_put_of_an_unpicklable_value_names_it(core: OfflineCore) -> None:
    import threading

    with pytest.raises(TypeError, match="the value passed to put"):
        core.worker.put(threading.Lock())


def test_large_put_goes_to_the_object_store_and_is_read_back(core: OfflineCore) -> None:
    worker = core.worker
    value = b"z" * BIG
    ref = worker.put(value)
    kind, location = worker.memory_store.get(ref._id)
    assert kind == PLASMA and location[0] == core.worker.node_id
    assert os.path.exists(os.path.join(worker.store_dir, ref._id.hex()))
    create = core.raylet.waiting == [] and core.raylet.replies["create_object"] == {}
    assert create
    core.settle()
    assert core.raylet.notified("seal_object") == [{"object_id": ref._id}]
    assert worker.get([ref], 0) == [value]
    oid = ref._id
    del ref
    core.settle()
    assert {"object_ids": [oid]} in core.raylet.notified("free_objects")


def test_a_full_object_store_raises_object_store_full(core: OfflineCore) -> None:
    core.raylet.replies["create_object"] = RemoteError(ErrorCode.OBJECT_STORE_FULL, "store full: 10 objects hold 1 GiB")
    with pytest.raises(ObjectStoreFullError, match="store full"):
        core.worker.put(b"z" * BIG)


def test_a_copy_freed_under_a_reader_is_copy_lost(core: OfflineCore) -> None:
    from ember.core.object_access import CopyLost

    worker = core.worker
    ref = worker.put(b"y" * BIG)
    os.unlink(os.path.join(worker.store_dir, ref._id.hex()))
    core.raylet.replies["restore_object"] = False
    with pytest.raises(CopyLost):
        worker.objects.read_plasma_value(ref._id, worker.memory_store.get(ref._id)[1])


def test_get_times_out_and_wait_splits_ready_from_pending(core: OfflineCore) -> None:
    worker = core.worker
    ready = worker.put(1)
    _entry, (pending,) = _task(core)
    core.settle()
    with pytest.raises(GetTimeoutError):
        worker.get([pending], 0)
    assert worker.wait([pending, ready], 1, 0, True) == ([ready], [pending])
    assert worker.wait([ready, pending], 2, 0, True) == ([ready], [pending])


def test_get_raises_the_stored_error(core: OfflineCore) -> None:
    worker = core.worker
    oid = ids.put_object_id(worker.driver_task_id)
    worker.reference_counter.add_owned(oid, worker.address)
    ref = ObjectRef(oid, worker.address)
    error = ObjectLostError(oid.hex(), "gone")
    worker.memory_store.put(oid, (INLINE, serialization.serialize_error(error).to_inline()))
    with pytest.raises(ObjectLostError, match="gone"):
        worker.get([ref], 0)


def test_encode_args_inlines_small_values_and_stores_large_ones(core: OfflineCore) -> None:
    worker = core.worker
    held = worker.put(3)
    wire, kw, arg_ids = worker.encode_args((1, held, b"q" * BIG), {"k": [held]}, "f")
    assert kw == ["k"]
    assert wire[0][0] == ARG_VALUE and wire[1] == [ARG_REF, held._id, held._owner]
    assert wire[2][0] == ARG_REF  # stored first, then passed by ref
    assert wire[3][0] == ARG_VALUE  # a list containing a ref: inline, the ref counted as submitted
    assert arg_ids.count(held._id) == 2 and wire[2][1] in arg_ids
    counts = worker.reference_counter.snapshot()
    assert counts[held._id][1] == 2


def test_encode_args_names_an_unpicklable_argument(core: OfflineCore) -> None:
    import threading

    with pytest.raises(TypeError, match="keyword argument 'lock' of g"):
        core.worker.encode_args((), {"lock": threading.Lock()}, "g")


def test_get_future_and_object_from_coroutine(core: OfflineCore) -> None:
    worker = core.worker
    ref = worker.put(5)
    fut = worker.get_future(ref)
    core.settle()
    assert fut.result(0) == 5

    async def compute() -> int:
        return 6

    made = worker.object_from_coroutine(compute)
    core.settle()
    assert worker.get([made], 0) == [6]

    async def fail() -> int:
        raise KeyError("nope")

    failed = worker.object_from_coroutine(fail)
    core.settle()
    with pytest.raises(KeyError):
        worker.get([failed], 0)


# ==================================================================== tasks
def test_a_task_is_leased_pushed_and_its_value_stored(core: OfflineCore) -> None:
    worker = core.worker
    entry, (ref,) = _task(core)
    core.settle()
    request, peer = _grant(core)
    assert request["resources"] == {"CPU": 1.0} and request["retriable"] is False
    spec, reply = peer.take("push_task")
    assert spec["tid"] == entry.spec["tid"] and spec["attempt"] == 1
    assert entry.state is TaskStatus.SUBMITTED_TO_WORKER
    _validate(core)
    reply.set_result(_ok(42))
    core.settle()
    _validate(core)
    assert worker.get([ref], 0) == [42]
    assert worker.submitter.num_pending() == 0
    # A second task reuses the lease: no new request.
    entry2, (ref2,) = _task(core)
    core.settle()
    assert not [w for w in core.raylet.waiting if w[0] == "request_lease"]
    _spec, reply2 = peer.take("push_task")
    reply2.set_result(_ok(43))
    core.settle()
    assert worker.get([ref2], 0) == [43]
    worker.submitter.release_idle_leases()
    assert core.raylet.notified("return_lease")


def test_a_task_waits_for_its_ref_argument(core: OfflineCore) -> None:
    first, (dep,) = _task(core, name="producer")
    second, (out,) = _task(core, (dep,), name="consumer")
    core.settle()
    assert second.state is TaskStatus.PENDING_ARGS_AVAIL
    _validate(core)
    _, peer = _grant(core)
    _spec, reply = peer.take("push_task")
    reply.set_result(_ok("dep value"))
    core.settle()
    _validate(core)
    assert second.state is not TaskStatus.PENDING_ARGS_AVAIL
    spec, reply2 = peer.take("push_task")
    assert spec["args"][0][0] == ARG_VALUE
    reply2.set_result(_ok("done"))
    core.settle()
    assert core.worker.get([out], 0) == ["done"]


def test_a_stored_result_keeps_lineage_and_its_argument(core: OfflineCore) -> None:
    worker = core.worker
    arg = worker.put(b"a" * BIG)
    entry, (ref,) = _task(core, (arg,))
    core.settle()
    assert entry.spec["args"][0][0] == ARG_PLASMA
    _, peer = _grant(core)
    _spec, reply = peer.take("push_task")
    reply.set_result({"s": "ok", "r": [[1, [worker.node_id, 10, [*core.worker.raylet_location]], []]]})
    core.settle()
    _validate(core)
    assert entry.spec["tid"] in worker.task_manager.lineage
    arg_id = arg._id
    del arg
    core.settle()
    assert worker.reference_counter.has_reference(arg_id)  # held by the lineage
    del ref
    core.settle()
    _validate(core)
    assert worker.task_manager.lineage == {}
    assert not worker.reference_counter.has_reference(arg_id)


def test_worker_dies_before_reply_the_task_is_retried_on_a_new_lease(core: OfflineCore) -> None:
    worker = core.worker
    entry, (ref,) = _task(core, retries=1)
    core.settle()
    _, peer = _grant(core, 41000, pid=11)
    peer.take("push_task")
    peer.close("worker exited")
    core.settle()
    _validate(core)
    assert entry.retries_left == 0 and entry.state is TaskStatus.PENDING_NODE_ASSIGNMENT
    _, peer2 = _grant(core, 41001, pid=12)
    _spec, reply = peer2.take("push_task")
    peer2.close("worker exited again")
    core.settle()
    _validate(core)
    with pytest.raises(WorkerCrashedError, match="pid=12"):
        worker.get([ref], 0)


def test_an_idle_lease_is_kept_while_its_class_has_tasks_waiting(core: OfflineCore) -> None:
    # Tasks wait behind a running one on the first lease; the second lease went idle and is about
    # to take them (steal). A node daemon asking for idle leases back must not get it: the class's
    # own queued request would take the CPU again, possibly as a worker started since.
    worker = core.worker
    depth = worker.submitter._depth
    tasks = [_task(core, name=f"t{i}") for i in range(depth + 1)]
    core.settle()
    _, first = _grant(core, 41000)
    pushed = [first.take("push_task") for _ in range(depth)]
    _, second = _grant(core, 41001)
    _spec, reply = second.take("push_task")
    reply.set_result(_ok("last"))
    core.settle()
    assert first.notified("steal_tasks")  # the idle second lease is about to take them
    worker.submitter.release_idle_leases()
    assert core.raylet.notified("return_lease") == []
    for index, (_spec, running) in enumerate(pushed):
        running.set_result(_ok(index))
        core.settle()
    assert worker.get([ref for _, (ref,) in tasks], 0) == [*range(depth), "last"]
    worker.submitter.release_idle_leases()  # nothing waits any more: both go back
    assert sorted(p["lease_id"] for p in core.raylet.notified("return_lease")) == [
        b"L" + bytes([41000 % 256]), b"L" + bytes([41001 % 256])]
    _validate(core)


def test_a_spread_task_runs_on_the_lease_requested_for_it(core: OfflineCore) -> None:
    # Each SPREAD task gets a request of its own (the node daemon places each one), and the lease
    # that comes back runs that task, whichever lease comes first: the local node's fast grants
    # must not run every task.
    worker = core.worker
    tasks = [_task(core, name=f"t{i}", strategy="SPREAD") for i in range(3)]
    core.settle()
    requests = [core.raylet.take("request_lease") for _ in tasks]
    assert not [w for w in core.raylet.waiting if w[0] == "request_lease"]
    for index in (2, 0, 1):
        _, peer = _grant(core, 41000 + index, request=requests[index])
        spec, reply = peer.take("push_task")
        assert spec["tid"] == tasks[index][0].spec["tid"]
        assert not [w for w in peer.waiting if w[0] == "push_task"]
        reply.set_result(_ok(index))
        core.settle()
        assert peer.notified("return_lease") == [] and core.raylet.notified("return_lease")[-1]["lease_id"] == bytes(
            [ord("L"), (41000 + index) % 256])
    assert worker.get([ref for _, (ref,) in tasks], 0) == [0, 1, 2]
    _validate(core)


def test_a_spread_lease_whose_task_was_cancelled_runs_an_unasked_task_or_goes_back(core: OfflineCore) -> None:
    worker = core.worker
    limit = worker.submitter._max_requests
    tasks = [_task(core, name=f"t{i}", strategy="SPREAD") for i in range(limit + 1)]
    core.settle()
    requests = [core.raylet.take("request_lease") for _ in range(limit)]
    assert not [w for w in core.raylet.waiting if w[0] == "request_lease"]  # the last task waits for a slot
    worker.cancel(tasks[0][1][0], force=False)
    core.settle()
    # The lease asked for the cancelled task runs the one no request was made for yet.
    _, peer = _grant(core, 41000, request=requests[0])
    spec, reply = peer.take("push_task")
    assert spec["tid"] == tasks[limit][0].spec["tid"]
    reply.set_result(_ok("last"))
    core.settle()
    # With every queued task asked for, such a lease goes straight back (it must not hold a CPU
    # another task's request may be waiting for).
    worker.cancel(tasks[1][1][0], force=False)
    core.settle()
    _, idle_peer = _grant(core, 41001, request=requests[1])
    assert not idle_peer.waiting
    assert core.raylet.notified("return_lease")[-1]["lease_id"] == b"L" + bytes([41001 % 256])
    for index in range(2, limit):
        _, peer = _grant(core, 41000 + index, request=requests[index])
        spec, reply = peer.take("push_task")
        assert spec["tid"] == tasks[index][0].spec["tid"]
        reply.set_result(_ok(index))
        core.settle()
    assert worker.get([ref for _, (ref,) in tasks[2:]], 0) == [*range(2, limit), "last"]
    for cancelled in tasks[:2]:
        with pytest.raises(TaskCancelledError):
            worker.get(cancelled[1], 0)
    assert worker.submitter.num_pending() == 0
    _validate(core)


def test_late_frees_and_lease_replies_while_shutting_down_are_quiet(core: OfflineCore, caplog: Any) -> None:
    # Shutdown cancels the background tasks first; replies and dropped refs that arrive after
    # that (results of tasks still running, grants of requests still out) are dropped with a
    # debug line: no error, no "Exception in callback" from the loop.
    worker = core.worker
    loop_errors: list[dict[str, Any]] = []
    core.loop.set_exception_handler(lambda loop, context: loop_errors.append(context))
    far_node = ["127.0.0.1", 40001]
    stored, (far_value,) = _task(core, name="stored far")
    core.settle()
    _, peer = _grant(core)
    _spec, reply = peer.take("push_task")
    reply.set_result({"s": "ok", "r": [[1, [b"F" * 28, BIG, far_node], []]]})
    core.settle()
    tasks = [_task(core, name="late", strategy=strategy)[0] for strategy in (None, "SPREAD", "SPREAD")]
    core.settle()
    requests = [core.raylet.take("request_lease") for _ in range(2)]
    worker.background.cancel_all()  # as CoreWorker.shutdown does before the loop stops
    with caplog.at_level(logging.DEBUG):
        del far_value  # its copy on the other node is freed by a late flush
        core.settle()
        (_, granted), (_, spilled) = requests
        granted.set_result({"address": ["127.0.0.1", 41001, b"x" * 28], "lease_id": b"late", "worker_id": b"W" * 28})
        spilled.set_result({"spillback": {"node_id": b"F" * 28, "address": far_node}})
        core.settle()
    assert not loop_errors, loop_errors
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    dropped = " ".join(r.getMessage() for r in caplog.records if "dropped the late" in r.getMessage())
    assert "free remote copies" in dropped and "connect to a leased worker" in dropped and "connect after spillback" in dropped
    assert {"lease_id": b"late"} in core.raylet.notified("return_lease")
    assert all(not t.done for t in tasks)  # left for the process's exit, not failed by a late event
    worker.submitter.manager.fail_all(iter(tasks), RuntimeError("test over"))
    core.settle()


def test_unschedulable_lease_request_fails_the_queued_tasks(core: OfflineCore) -> None:
    _entry, (ref,) = _task(core)
    core.settle()
    _payload, fut = core.raylet.take("request_lease")
    fut.set_exception(RemoteError(ErrorCode.TASK_UNSCHEDULABLE, "no node has 1000 GPUs"))
    core.settle()
    with pytest.raises(TaskUnschedulableError, match="1000 GPUs"):
        core.worker.get([ref], 0)


def test_losing_the_node_daemon_fails_queued_tasks_with_local_raylet_died(core: OfflineCore) -> None:
    _entry, (ref,) = _task(core)
    core.settle()
    _payload, fut = core.raylet.take("request_lease")
    from ember.exceptions import ConnectionLost

    fut.set_exception(ConnectionLost("node daemon gone"))
    core.settle()
    with pytest.raises(LocalRayletDiedError):
        core.worker.get([ref], 0)


def test_infeasible_warning_then_timeout(core: OfflineCore, capsys: Any) -> None:
    entry, (ref,) = _task(core, name="huge")
    core.settle()
    payload, _fut = core.raylet.take("request_lease")
    via_wire(core.worker.handlers).rpc_infeasible(None, {"request_id": payload["request_id"], "message": "needs 64 CPUs"})  # type: ignore[attr-defined]
    assert "huge" in capsys.readouterr().err
    cls = core.worker.submitter.classes[entry.sched_key]
    assert cls.infeasible == "needs 64 CPUs"
    core.worker.submitter._infeasible_expired(cls)
    core.settle()
    with pytest.raises(TaskUnschedulableError, match="64 CPUs"):
        core.worker.get([ref], 0)


def test_cancel_queued_and_running_tasks(core: OfflineCore) -> None:
    worker = core.worker
    running, (r1,) = _task(core)
    core.settle()
    _, peer = _grant(core)
    peer.take("push_task")
    # A child still waiting for its argument (a borrowed ref whose owner has not answered yet).
    owner = core.peer(43500, {"add_borrowers": []})
    waiting_for = ObjectRef(ids.return_object_id(ids.new_task_id(worker.job_id), 1), ["127.0.0.1", 43500, b"o" * 28])
    queued, (r2,) = _task(core, (waiting_for,), name="g", parent=running.spec["tid"])
    core.settle()
    assert owner.take("get_object")[0] == {"object_id": waiting_for._id}
    # Cancel the running one (recursively): the worker is told.
    worker.cancel(r1, force=False, recursive=True)
    core.settle()
    assert peer.notified("cancel_task") == [{"tid": running.spec["tid"], "recursive": True}]
    worker.submitter.cancel_children(running.spec["tid"])
    core.settle()
    _validate(core)
    with pytest.raises(TaskCancelledError):
        worker.get([r2], 0)
    assert queued.state is TaskStatus.FAILED
    # Force: the node daemon kills the worker; its death reads as cancelled.
    worker.cancel(r1, force=True)
    core.settle()
    assert core.raylet.notified("kill_worker")
    peer.close("killed")
    core.settle()
    with pytest.raises(TaskCancelledError):
        worker.get([r1], 0)


def test_node_death_fails_the_lease_and_retries(core: OfflineCore) -> None:
    entry, (ref,) = _task(core, retries=1)
    core.settle()
    _, peer = _grant(core)
    peer.take("push_task")
    core.raylet.peer_info["node_id"] = b"dead" * 7
    via_wire(core.worker.handlers).rpc_pub(None, ["nodes", {  # type: ignore[attr-defined]
        "Alive": False, "NodeID": (b"dead" * 7).hex(), "NodeManagerAddress": "10.0.0.9",
        "NodeManagerPort": 1, "DeathReason": "test"}])
    core.settle()
    assert peer.closed and entry.retries_left == 0
    _validate(core)


# ==================================================================== ownership between processes
def test_borrower_registers_and_the_owner_counts_it(core: OfflineCore) -> None:
    worker = core.worker
    ref = worker.put(1)
    borrower = core.peer(42000)
    missing = via_wire(worker.handlers).rpc_add_borrowers(borrower, {"object_ids": [ref._id, b"\x01" * 28]})  # type: ignore[attr-defined]
    assert missing == [b"\x01" * 28]
    oid = ref._id
    del ref
    core.settle()
    assert worker.memory_store.contains(oid)  # the borrower keeps it
    via_wire(worker.handlers).rpc_remove_borrowers(borrower, {"object_ids": [oid]})  # type: ignore[attr-defined]
    core.settle()
    assert not worker.memory_store.contains(oid)


def test_a_borrower_that_dies_is_dropped(core: OfflineCore) -> None:
    worker = core.worker
    ref = worker.put(1)
    borrower = core.peer(42001)
    via_wire(worker.handlers).rpc_add_borrowers(borrower, {"object_ids": [ref._id]})  # type: ignore[attr-defined]
    oid = ref._id
    del ref
    core.settle()
    borrower.close("borrower died")
    core.settle()
    assert not worker.reference_counter.has_reference(oid)


def test_a_borrowed_ref_is_fetched_from_its_owner(core: OfflineCore) -> None:
    worker = core.worker
    owner = core.peer(43000, {"add_borrowers": []})
    oid = ids.return_object_id(ids.new_task_id(worker.job_id), 1)
    ref = ObjectRef(oid, ["127.0.0.1", 43000, b"o" * 28])
    worker.ownership.register_borrows()
    core.settle()
    assert owner.waiting == []
    payload, fut = owner.take("get_object") if owner.waiting else (None, None)
    assert payload is None  # nothing fetched until someone reads it
    fut_value = worker.get_future(ref)
    core.settle()
    payload, fut = owner.take("get_object")
    assert payload == {"object_id": oid}
    fut.set_result([INLINE, serialization.serialize("borrowed").to_inline()])
    core.settle()
    assert fut_value.result(0) == "borrowed"
    del ref, fut_value  # the future holds the ref until it is collected
    core.settle()
    assert owner.notified("remove_borrowers") == [{"object_ids": [oid]}]


def test_an_unreachable_owner_makes_the_value_owner_died(core: OfflineCore) -> None:
    worker = core.worker
    oid = ids.return_object_id(ids.new_task_id(worker.job_id), 1)
    ref = ObjectRef(oid, ["127.0.0.1", 43999, b"o" * 28])  # nobody listens there
    fut = worker.get_future(ref)
    core.settle()
    with pytest.raises(OwnerDiedError, match="unreachable"):
        fut.result(0)


def test_the_owner_answers_get_object_when_the_value_arrives(core: OfflineCore) -> None:
    worker = core.worker
    entry, (ref,) = _task(core)
    core.settle()
    answer = core.loop.create_task(via_wire(worker.handlers).rpc_get_object(None, {"object_id": ref._id}))  # type: ignore[attr-defined]
    core.settle()
    assert not answer.done()
    _, peer = _grant(core)
    _spec, reply = peer.take("push_task")
    reply.set_result(_ok("v"))
    core.settle()
    kind, data = answer.result()
    assert kind == INLINE and serialization.deserialize_inline(data)[1] == "v"
    lost = core.loop.run_until_complete(via_wire(worker.handlers).rpc_get_object(None, {"object_id": b"\x02" * 28}))  # type: ignore[attr-defined]
    assert isinstance(serialization.deserialize_inline(lost[1])[1], ObjectLostError)


def test_refs_nested_in_a_result_are_adopted_and_the_handoff_released(core: OfflineCore) -> None:
    worker = core.worker
    entry, (ref,) = _task(core)
    core.settle()
    _, peer = _grant(core)
    _spec, reply = peer.take("push_task")
    other = core.peer(43100, {"add_borrowers": []})
    nested_id = ids.return_object_id(ids.new_task_id(worker.job_id), 1)
    value = serialization.serialize(None).to_inline()
    reply.set_result({"s": "ok", "r": [[0, value, [[nested_id, ["127.0.0.1", 43100, b"o" * 28]]]]]})
    core.settle()
    assert worker.reference_counter.has_reference(nested_id)
    assert peer.notified("release_handoff") == [{"tid": entry.spec["tid"]}]
    del ref
    core.settle()
    assert not worker.reference_counter.has_reference(nested_id)
    assert other.notified("remove_borrowers") == [{"object_ids": [nested_id]}]


def test_memory_table_describes_each_reference(core: OfflineCore) -> None:
    worker = core.worker
    small = worker.put(1)
    big = worker.put(b"m" * BIG)
    _entry, (pending,) = _task(core, (small,))
    table = worker.ownership.memory_table()
    rows = {row["object_id"]: row for row in table["objects"]}
    assert rows[small.hex()]["reference_type"] == "USED_BY_PENDING_TASK"
    assert rows[big.hex()]["reference_type"] == "PINNED_IN_MEMORY" and rows[big.hex()]["size"] > BIG
    assert rows[pending.hex()]["reference_type"] == "LOCAL_REFERENCE"
    assert table["mode"] == "driver"
    assert via_wire(worker.handlers).rpc_owns_objects(None, None) is True  # type: ignore[attr-defined]


def test_a_dead_attempts_copies_are_freed_now_and_again_with_the_object(core: OfflineCore) -> None:
    worker = core.worker
    ref = worker.put(1)
    worker.ownership.note_dead_attempt([ref._id], ["127.0.0.1", 45000])
    remote_node = core.peer(45000)
    core.settle()
    assert remote_node.notified("free_objects") == [{"object_ids": [ref._id]}]
    del ref
    core.settle()
    assert len(remote_node.notified("free_objects")) == 2


def test_recover_object_of_a_put_value_says_why_not(core: OfflineCore) -> None:
    ref = core.worker.put(1)
    reply = via_wire(core.worker.handlers).rpc_recover_object(None, {"object_id": ref._id})  # type: ignore[attr-defined]
    assert isinstance(serialization.deserialize_inline(reply)[1], ObjectLostError)


def test_every_handler_is_registered_once() -> None:
    from ember.core.worker import RpcHandlers
    from ember.protocol import Service

    class A:
        def rpc_x(self, conn: Any, p: Any) -> int:
            return 1

    handlers = RpcHandlers(Service.CORE_WORKER)
    handlers.register(A())
    assert handlers.rpc_x(None, None) == 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="two components answer 'x'"):
        handlers.register(A())


# ==================================================================== the assembly's own duties
def test_logs_of_this_job_are_printed_with_their_origin(core: OfflineCore, capsys: Any) -> None:
    worker = core.worker
    handlers: Any = via_wire(worker.handlers)
    handlers.rpc_pub(None, ["logs", {"job": worker.job_id.hex(), "fn": "f", "pid": 12, "lines": ["hello"], "seq": 3, "gcs": "g"}])
    handlers.rpc_pub(None, ["logs", {"job": "ffffffff", "pid": 13, "lines": ["other job"], "err": True}])
    handlers.rpc_pub(None, ["logs", {"pid": 14, "lines": ["oops"], "err": True}])
    out = capsys.readouterr()
    assert out.out == "(f pid=12) hello\n"
    assert out.err == "(pid=14) oops\n"
    assert worker._last_log == ["g", 3]
    assert handlers.rpc_ping(None, None) == "pong"


def test_cancel_of_a_ref_owned_elsewhere_goes_to_its_owner(core: OfflineCore) -> None:
    owner = core.peer(44000)
    task_id = ids.new_task_id(core.worker.job_id)
    ref = ObjectRef(ids.return_object_id(task_id, 1), ["127.0.0.1", 44000, b"o" * 28], _count=False)
    core.worker.cancel(ref, force=True, recursive=False)
    assert owner.notified("cancel_owned_task") == [{"tid": task_id, "force": True, "recursive": False}]
    gone = ObjectRef(ids.return_object_id(task_id, 2), ["127.0.0.1", 44001, b"o" * 28], _count=False)
    core.worker.cancel(gone, force=False)  # an owner that is gone: nothing to do


def test_an_owner_cancels_on_request(core: OfflineCore) -> None:
    entry, (ref,) = _task(core)
    core.settle()
    handlers: Any = via_wire(core.worker.handlers)
    handlers.rpc_cancel_owned_task(None, {"tid": entry.spec["tid"], "force": False, "recursive": True})
    core.settle()
    with pytest.raises(TaskCancelledError):
        core.worker.get([ref], 0)
    handlers.rpc_cancel_owned_task(None, {"tid": b"\x00" * 24})  # unknown: ignored


def test_gpu_ids_follow_into_cuda_visible_devices(core: OfflineCore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    core.worker.set_gpu_ids([1, 3])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,3" and core.worker.gpu_ids == [1, 3]
    core.worker.set_gpu_ids(None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_gcs_request_waits_out_a_reconnection(core: OfflineCore) -> None:
    links = core.worker.links
    assert links.gcs_up is not None
    links.gcs_up.clear()
    request = core.loop.create_task(links.gcs_request("kv_get", {"key": b"k"}))
    core.settle()
    assert not request.done() and not core.gcs.waiting  # nothing sent while it is away
    links.gcs_up.set()
    core.settle()
    payload, fut = core.gcs.take("kv_get")
    fut.set_result(b"v")
    core.settle()
    assert request.result() == b"v"
    links.notify_gcs("add_task_events", {"events": []})
    assert core.gcs.notified("add_task_events") == [{"events": []}]


def test_the_task_context_and_put_ids(core: OfflineCore) -> None:
    worker = core.worker
    context = worker.context
    assert worker.current_task_id is None and worker.current_job_id == worker.job_id
    assert ids.task_id_of(context.new_put_id()) == worker.driver_task_id
    spec = {"tid": ids.new_task_id(worker.job_id), "job": worker.job_id, "name": "t", "pg_group": [b"p" * 18, True]}
    worker.set_task_context(spec)
    try:
        assert worker.current_task_id == spec["tid"] and worker.current_task_name == "t"
        assert worker.current_placement_group == b"p" * 18 and worker.captured_placement_group == b"p" * 18
        assert ids.task_id_of(context.new_put_id()) == spec["tid"]
    finally:
        worker.clear_task_context()
    assert worker.current_placement_group is None and worker.current_task_id is None
