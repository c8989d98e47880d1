"""Executing pushed work in a worker, without a cluster: tasks, actor calls, generator streams.

The worker is an ``OfflineCore`` in worker mode; pushes go through ``TaskExecutor.push``
as the RPC handler would, and replies come back on its loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from protocol_helpers import valid_payload, via_wire

from ember._private import ids, serialization
from ember._private.object_ref import ObjectRef
from ember.core.actor_runtime import ActorRuntime
from ember.core.generator_stream import (
    DynamicObjectRefGenerator,
    ObjectRefGenerator,
    generator_mode,
    item_id,
    run_generator,
    start_stream,
)
from ember.core.links import WORKER
from ember.core.memory_store import INLINE
from ember.core.task_executor import ACTOR_CALL, CREATE_ACTOR, TASK, _split_returns
from ember.core.task_manager import ARG_PLASMA, ARG_REF, ARG_VALUE
from ember.exceptions import RayTaskError, TaskCancelledError
from ember.protocol.core_worker import ActorCreationPush, TaskSpec
from tests.offline_core import OfflineCore

CALLER = ["127.0.0.1", 46000, b"c" * 28]


@pytest.fixture
def node(tmp_path: Any) -> Iterator[OfflineCore]:
    offline = OfflineCore(str(tmp_path), mode=WORKER)
    try:
        yield offline
    finally:
        offline.close()


def _register(core: OfflineCore, fn: Any) -> bytes:
    fid = os.urandom(20)
    manager = core.worker.function_manager
    manager._cache[fid] = fn
    manager._jobs_seen.add(core.worker.job_id)
    return fid


def _spec(core: OfflineCore, fid: bytes, *args: Any, nret: int = 1, **extra: Any) -> dict[str, Any]:
    task_id = ids.new_task_id(core.worker.job_id)
    return {"tid": task_id, "job": core.worker.job_id, "fid": fid, "name": "fn",
            "args": [[ARG_VALUE, serialization.serialize(a).to_inline()] for a in args], "kw": [],
            "nret": nret, "rids": [ids.return_object_id(task_id, i + 1) for i in range(nret)],
            "owner": CALLER, **extra}


def _value(ret: list[Any]) -> Any:
    assert ret[0] == 0
    return serialization.deserialize_inline(ret[1])[1]


def _error(reply: dict[str, Any]) -> BaseException:
    assert reply["s"] == "err", reply
    return serialization.deserialize_inline(reply["e"])[1]


# ==================================================================== tasks
def test_execute_returns_values_and_sets_the_task_context(node: OfflineCore, capsys: Any) -> None:
    seen: list[Any] = []

    def fn(a: int, b: int) -> tuple[int, int]:
        seen.append((node.worker.current_task_id, node.worker.current_task_name))
        return a + b, a * b

    spec = _spec(node, _register(node, fn), 3, 4, nret=2)
    before = time.time()
    reply = node.worker.executor.execute(spec)  # type: ignore[union-attr]
    assert reply["s"] == "ok" and [_value(r) for r in reply["r"]] == [7, 12]
    assert seen == [(spec["tid"], "fn")]
    start, end = reply["t"]  # when it ran, for the owner's task event
    assert before <= start <= end <= time.time()
    assert node.worker.current_task_id is None
    assert f":ember_task:{node.worker.job_id.hex()}:fn" in capsys.readouterr().out


def test_execute_wraps_the_users_exception_without_ember_frames(node: OfflineCore) -> None:
    def fn() -> None:
        raise KeyError("missing")

    error = _error(node.worker.executor.execute(_spec(node, _register(node, fn))))  # type: ignore[union-attr]
    assert isinstance(error, RayTaskError) and isinstance(error.cause, KeyError)
    assert "ember/core" not in error.traceback_str if hasattr(error, "traceback_str") else True


@pytest.mark.parametrize("result, nret, message", [
    (1, 2, "not a sequence"),
    ((1, 2, 3), 2, "returned 3 values"),
])
def test_wrong_number_of_returns_is_a_clear_error(node: OfflineCore, result: Any, nret: int, message: str) -> None:
    error = _error(node.worker.executor.execute(_spec(node, _register(node, lambda: result), nret=nret)))  # type: ignore[union-attr]
    assert message in str(error)


def test_split_returns_of_generators_and_zero_returns() -> None:
    assert _split_returns((x for x in [5]), 1, "f") == [5]
    assert _split_returns((x for x in [1, 2]), 2, "f") == [1, 2]
    assert _split_returns(None, 0, "f") == []
    with pytest.raises(ValueError, match="yielded 2 values"):
        _split_returns((x for x in [1, 2]), 1, "f")


def test_an_argument_that_is_an_error_fails_the_task(node: OfflineCore) -> None:
    spec = _spec(node, _register(node, lambda x: x))
    spec["args"] = [[ARG_VALUE, serialization.serialize_error(ValueError("upstream")).to_inline()]]
    assert "upstream" in str(_error(node.worker.executor.execute(spec)))  # type: ignore[union-attr]


def test_a_stored_argument_whose_copy_is_gone_replies_arg_lost(node: OfflineCore) -> None:
    node.raylet.replies["restore_object"] = False
    spec = _spec(node, _register(node, lambda x: x))
    missing = ids.put_object_id(ids.new_task_id(node.worker.job_id))
    spec["args"] = [[ARG_PLASMA, missing, CALLER, [node.worker.node_id, 100, [*node.worker.raylet_location]]]]
    reply = node.worker.executor.execute(spec)  # type: ignore[union-attr]
    assert {k: v for k, v in reply.items() if k != "t"} == {"s": "arg_lost", "oid": missing, "owner": CALLER}


def test_a_stored_argument_is_read_from_the_store(node: OfflineCore) -> None:
    worker = node.worker
    value = b"v" * (200 * 1024)
    ref = worker.put(value)
    spec = _spec(node, _register(node, len))
    spec["args"] = [[ARG_PLASMA, ref._id, ref._owner, worker.memory_store.get(ref._id)[1]]]
    reply = worker.executor.execute(spec)  # type: ignore[union-attr]
    assert _value(reply["r"][0]) == len(value)


def test_a_ref_argument_is_read_with_get(node: OfflineCore) -> None:
    worker = node.worker
    ref = worker.put(9)
    spec = _spec(node, _register(node, lambda x: x + 1))
    spec["args"] = [[ARG_REF, ref._id, ref._owner]]
    assert _value(worker.executor.execute(spec)["r"][0]) == 10  # type: ignore[union-attr]


def test_push_deduplicates_resent_pushes_and_cancel_drops_queued_work(node: OfflineCore) -> None:
    executor = node.worker.executor
    assert executor is not None
    spec = _spec(node, _register(node, lambda: 1), attempt=1)
    first = executor.push(TASK, spec)
    assert executor.push(TASK, dict(spec)) is first  # the same push resent
    retry = executor.push(TASK, {**spec, "attempt": 2})
    assert retry is not first
    executor.cancel(spec["tid"])
    assert first.result() == {"s": "cancelled"} or retry.result() == {"s": "cancelled"}
    assert executor.was_cancelled(spec["tid"])


def test_bounce_queued_hands_tasks_back(node: OfflineCore) -> None:
    executor = node.worker.executor
    assert executor is not None
    futures = [executor.push(TASK, _spec(node, _register(node, lambda: 1))) for _ in range(3)]
    executor.bounce_queued()
    node.settle()
    assert [f.result() for f in futures] == [{"s": "requeue"}] * 3


def test_run_forever_runs_queued_tasks_until_stopped(node: OfflineCore) -> None:
    import signal

    executor = node.worker.executor
    assert executor is not None
    fut = executor.push(TASK, _spec(node, _register(node, lambda: "ran")))
    not_actor = executor.push(ACTOR_CALL, {**_spec(node, b""), "m": "f"})
    executor.stop()
    previous = signal.getsignal(signal.SIGINT)
    try:
        executor.run_forever()
    finally:
        signal.signal(signal.SIGINT, previous)
    node.settle()
    assert _value(fut.result()["r"][0]) == "ran"
    assert "does not host an actor" in str(serialization.deserialize_inline(not_actor.result()["e"])[1])


def test_actor_calls_from_one_caller_run_in_sequence_order(node: OfflineCore) -> None:
    executor = node.worker.executor
    assert executor is not None
    specs = [{**_spec(node, b""), "m": "f", "caller": b"A", "seq": i, "seq_base": 0} for i in range(3)]
    executor.push(ACTOR_CALL, specs[2])
    executor.push(ACTOR_CALL, specs[1])
    assert len(executor._queue) == 0  # held until seq 0 arrives
    executor.push(ACTOR_CALL, specs[0])
    assert [item[1]["seq"] for item in executor._queue] == [0, 1, 2]


# ==================================================================== actors
class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def add(self, n: int) -> int:
        self.value += n
        return self.value

    def fail(self) -> None:
        raise ValueError("actor method failed")


def _actor_spec(node: OfflineCore, cls: Any, *args: Any, **extra: Any) -> dict[str, Any]:
    spec = _spec(node, _register(node, cls), *args)
    spec.update(actor_id=ids.random_unique_id(), class_name=cls.__name__, **extra)
    return spec


def _call(node: OfflineCore, actor: dict[str, Any], method: str, *args: Any) -> dict[str, Any]:
    return {**_spec(node, b"", *args), "m": method, "aid": actor["actor_id"], "name": f"Counter.{method}"}


def test_a_sync_actor_is_constructed_and_runs_its_calls(node: OfflineCore) -> None:
    executor = node.worker.executor
    assert executor is not None
    spec = _actor_spec(node, Counter, 10)
    runtime = ActorRuntime(executor, spec)
    assert runtime.construct() == {"s": "ok"}
    assert node.worker.actor_id == spec["actor_id"]
    assert _value(runtime._invoke(_call(node, spec, "add", 5))["r"][0]) == 15
    assert "actor method failed" in str(_error(runtime._invoke(_call(node, spec, "fail"))))
    assert _value(runtime._invoke(_call(node, spec, "__ray_ready__"))["r"][0]) is True
    cancelled = _call(node, spec, "add", 1)
    executor.cancel(cancelled["tid"])
    assert runtime._invoke(cancelled) == {"s": "cancelled"}


def test_a_constructor_that_raises_is_an_error_reply(node: OfflineCore) -> None:
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("cannot build")

    runtime = ActorRuntime(node.worker.executor, _actor_spec(node, Broken))  # type: ignore[arg-type]
    assert "cannot build" in str(_error(runtime.construct()))


def test_an_async_actor_runs_coroutines_on_its_loop(node: OfflineCore) -> None:
    class Async:
        async def hello(self, name: str) -> str:
            await asyncio.sleep(0)
            return f"hi {name}"

    executor = node.worker.executor
    assert executor is not None
    spec = _actor_spec(node, Async, is_async=True)
    runtime = ActorRuntime(executor, spec)
    assert runtime.construct() == {"s": "ok"}
    assert runtime.mode == "async"
    runtime._semaphores = {group: asyncio.Semaphore(size) for group, size in runtime._group_sizes.items()}
    loop = runtime._event_loop()
    try:
        fut = node.loop.create_future()
        loop.run_until_complete(runtime._invoke_async(_call(node, spec, "hello", "ember"), fut))
        node.settle()
        assert _value(fut.result()["r"][0]) == "hi ember"
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_create_actor_is_refused_twice_and_by_a_driver(node: OfflineCore, tmp_path: Any) -> None:
    executor = node.worker.executor
    assert executor is not None
    executor.actor = object()  # type: ignore[assignment]  # this worker hosts one already
    with pytest.raises(ValueError, match="cannot host an actor"):
        via_wire(node.worker.handlers).rpc_create_actor(None, valid_payload(ActorCreationPush))  # type: ignore[attr-defined]
    executor.actor = None
    driver = OfflineCore(str(tmp_path / "driver"))
    try:
        with pytest.raises(ValueError, match="does not execute tasks"):
            via_wire(driver.worker.handlers).rpc_push_task(None, valid_payload(TaskSpec))  # type: ignore[attr-defined]
    finally:
        driver.close()
        from ember._private import runtime

        runtime.set_core_worker(node.worker)
    assert CREATE_ACTOR != TASK


# ==================================================================== generators
def test_a_generator_task_streams_its_items_to_the_owner(node: OfflineCore) -> None:
    owner = node.peer(CALLER[1], {"generator_item": True})
    spec = _spec(node, b"", gen="streaming")
    final = run_generator(node.worker, spec, iter(["a", "b"]))
    assert final is None
    items = owner.notified("generator_item")
    assert items == []  # items are requests (calls), answered before the next is made
    payloads = [p for p in owner._futures]
    assert len(payloads) == 2
    dynamic = run_generator(node.worker, {**spec, "gen": "dynamic"}, iter([1, 2, 3]))
    assert isinstance(dynamic, DynamicObjectRefGenerator) and len(dynamic) == 3
    with pytest.raises(TypeError, match="not an iterator"):
        run_generator(node.worker, spec, 5)


def test_the_owner_records_items_and_hands_them_out_in_order(tmp_path: Any) -> None:
    core = OfflineCore(str(tmp_path))
    try:
        worker = core.worker
        task_id = ids.new_task_id(worker.job_id)
        completion_id = ids.return_object_id(task_id, 1)
        worker.reference_counter.add_owned(completion_id, worker.address)
        completion = ObjectRef(completion_id, worker.address)
        assert generator_mode("streaming") == "streaming" and generator_mode(2) is None
        gen = start_stream(worker, task_id, completion, "streaming", 2)
        assert isinstance(gen, ObjectRefGenerator)
        sender = core.peer(47000)
        for index, value in enumerate(["x", "y"]):
            ret = [0, serialization.serialize(value).to_inline(), []]
            answer = via_wire(worker.handlers).rpc_generator_item(sender, {"tid": task_id, "i": index, "r": ret})  # type: ignore[attr-defined]
            if index == 0:
                assert answer is True
            else:
                assert isinstance(answer, asyncio.Future) and not answer.done()  # backpressure: 2 items not taken
        # A duplicate of item 0 (a retried attempt) is ignored.
        via_wire(worker.handlers).rpc_generator_item(sender, {"tid": task_id, "i": 0, "r": [0, serialization.serialize("dup").to_inline(), []]})  # type: ignore[attr-defined]
        assert gen.next_ready()
        first = next(gen)
        assert first._id == item_id(task_id, 0) and worker.get([first], 0) == ["x"]
        core.settle()
        assert answer.done()  # the consumer caught up: the held answer is released
        assert worker.get([next(gen)], 0) == ["y"]
        worker.memory_store.put(completion_id, (INLINE, serialization.serialize(None).to_inline()))
        with pytest.raises(StopIteration):
            next(gen)
        assert gen.is_finished()
        core.settle()
        assert task_id not in worker.generators
        # An item for a stream nobody consumes is dropped.
        assert via_wire(worker.handlers).rpc_generator_item(sender, {"tid": task_id, "i": 5, "r": [0, b"", []]}) is True  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="cannot be passed"):
            gen.__reduce__()
    finally:
        core.close()


def test_a_generator_that_raised_gives_its_error_once(tmp_path: Any) -> None:
    core = OfflineCore(str(tmp_path))
    try:
        worker = core.worker
        task_id = ids.new_task_id(worker.job_id)
        completion_id = ids.return_object_id(task_id, 1)
        worker.reference_counter.add_owned(completion_id, worker.address)
        gen = start_stream(worker, task_id, ObjectRef(completion_id, worker.address), "streaming", 0)
        error = RayTaskError("gen", "tb", ValueError("broke at 0"))
        worker.memory_store.put(completion_id, (INLINE, serialization.serialize_error(error).to_inline()))
        ref = next(gen)
        with pytest.raises(ValueError, match="ValueError raised in gen"):
            worker.get([ref], 0)
        with pytest.raises(StopIteration):
            next(gen)
    finally:
        core.close()


def test_cancelled_tasks_read_as_cancelled(node: OfflineCore) -> None:
    executor = node.worker.executor
    assert executor is not None
    spec = _spec(node, _register(node, lambda: 1))
    fut = executor.push(TASK, spec)
    via_wire(node.worker.handlers).rpc_cancel_task(None, {"tid": spec["tid"], "recursive": True})  # type: ignore[attr-defined]
    assert fut.result() == {"s": "cancelled"}
    assert TaskCancelledError  # the owner turns this reply into TaskCancelledError
