"""A caller's actor calls without a cluster: ordering, restarts, death, cancel (see offline_core.py).

The control service's ``wait_actor`` long-poll and the actor's connection are fake
connections whose answers the test gives, in the orders that matter: the actor dies
with calls in flight, restarts or not, a call is cancelled while queued or running.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ember._private import ids, serialization
from ember._private.object_ref import ObjectRef
from ember.core.actor_submitter import ActorView
from ember.exceptions import (
    ActorDiedError,
    ActorUnschedulableError,
    RayActorError,
    RayTaskError,
    TaskCancelledError,
)
from tests.offline_core import FakeConnection, OfflineCore

ACTOR_PORT = 48000


@pytest.fixture
def core(tmp_path: Any) -> Iterator[OfflineCore]:
    offline = OfflineCore(str(tmp_path))
    try:
        yield offline
    finally:
        offline.close()


def _call(core: OfflineCore, actor_id: bytes, *args: Any, retries: int = 0, method: str = "f") -> ObjectRef:
    (ref,) = core.worker.submit_actor_call(actor_id, method, args, {}, 1, None, f"A.{method}", retries)
    core.settle()
    return ref


def _alive(core: OfflineCore, incarnation: int = 1, port: int = ACTOR_PORT) -> FakeConnection:
    payload, fut = core.gcs.take("wait_actor")
    assert payload["after"] == incarnation - 1
    actor = core.peer(port)
    fut.set_result({"state": "ALIVE", "address": ["127.0.0.1", port, b"a" * 28], "incarnation": incarnation,
                    "node_address": ["127.0.0.1", 40000]})
    core.settle()
    return actor


def _ok(value: Any) -> dict[str, Any]:
    return {"s": "ok", "r": [[0, serialization.serialize(value).to_inline(), []]]}


def test_calls_wait_for_the_actor_then_go_in_order(core: OfflineCore) -> None:
    actor_id = ids.random_unique_id()
    refs = [_call(core, actor_id, i) for i in range(3)]
    client = core.worker.actor_submitter.clients[actor_id]
    assert client.state is ActorView.UNKNOWN and len(client.queue) == 3
    actor = _alive(core)
    specs = [actor.take("push_actor_task") for _ in range(3)]
    assert [s["seq"] for s, _ in specs] == [0, 1, 2]
    assert all(s["caller"] == core.worker.worker_id and s["seq_base"] == 0 for s, _ in specs)
    for index, (_spec, fut) in enumerate(specs):
        fut.set_result(_ok(index * 10))
    core.settle()
    assert core.worker.get(refs, 0) == [0, 10, 20]
    # The pending calls held the actor's handle count; released with them.
    assert not core.worker.reference_counter.has_reference(actor_id)


def test_a_call_waits_for_its_argument_and_later_calls_wait_behind_it(core: OfflineCore) -> None:
    actor_id = ids.random_unique_id()
    actor = _alive_after_first_call(core, actor_id)
    owner = core.peer(43600, {"add_borrowers": []})
    pending_arg = ObjectRef(ids.return_object_id(ids.new_task_id(core.worker.job_id), 1), ["127.0.0.1", 43600, b"o" * 28])
    blocked = _call(core, actor_id, pending_arg)
    behind = _call(core, actor_id, 1)
    assert [w[0] for w in actor.waiting] == ["push_actor_task"]  # only the first call
    _payload, fetch = owner.take("get_object")
    fetch.set_result([0, serialization.serialize("arg").to_inline()])
    core.settle()
    pushed = [actor.take("push_actor_task")[0] for _ in range(3)]
    assert [p["seq"] for p in pushed] == [0, 1, 2]
    del blocked, behind


def _alive_after_first_call(core: OfflineCore, actor_id: bytes) -> FakeConnection:
    _call(core, actor_id, "first")
    return _alive(core)


def test_actor_dies_with_calls_in_flight_they_are_resent_while_retries_allow(core: OfflineCore) -> None:
    actor_id = ids.random_unique_id()
    retried = _call(core, actor_id, retries=1)
    not_retried = _call(core, actor_id, retries=0, method="g")
    actor = _alive(core)
    first = actor.take("push_actor_task")[0]
    actor.take("push_actor_task")
    actor.close("actor process died")
    core.settle()
    client = core.worker.actor_submitter.clients[actor_id]
    assert client.state is ActorView.RESTARTING
    restarted = _alive(core, incarnation=2, port=ACTOR_PORT + 1)
    resent, fut = restarted.take("push_actor_task")
    assert resent["tid"] == first["tid"] and resent["seq"] == first["seq"]
    fut.set_result(_ok("again"))
    core.settle()
    assert core.worker.get([retried], 0) == ["again"]
    with pytest.raises(RayActorError, match="was restarted, but the call has no retries left"):
        core.worker.get([not_retried], 0)


def test_a_dead_actor_fails_queued_and_later_calls_with_its_cause(core: OfflineCore) -> None:
    actor_id = ids.random_unique_id()
    queued = _call(core, actor_id)
    _payload, fut = core.gcs.take("wait_actor")
    fut.set_result({"state": "DEAD", "death_cause": "its node was removed", "error_type": "ActorDiedError"})
    core.settle()
    with pytest.raises(ActorDiedError, match="its node was removed"):
        core.worker.get([queued], 0)
    later = _call(core, actor_id)
    with pytest.raises(ActorDiedError, match="its node was removed"):
        core.worker.get([later], 0)


def test_an_unschedulable_actor_fails_calls_with_that_error(core: OfflineCore) -> None:
    actor_id = ids.random_unique_id()
    queued = _call(core, actor_id)
    _payload, fut = core.gcs.take("wait_actor")
    creation_error = serialization.serialize_error(ValueError("no GPU")).to_inline()
    fut.set_result({"state": "DEAD", "death_cause": "infeasible", "error_type": "ActorUnschedulableError",
                    "creation_error": creation_error})
    core.settle()
    with pytest.raises(ActorUnschedulableError, match="no GPU"):
        core.worker.get([queued], 0)


def test_losing_the_control_service_while_polling_fails_the_calls(core: OfflineCore) -> None:
    from ember.exceptions import ConnectionLost

    actor_id = ids.random_unique_id()
    queued = _call(core, actor_id)
    _payload, fut = core.gcs.take("wait_actor")
    fut.set_exception(ConnectionLost("control service gone"))
    core.settle()
    with pytest.raises(ActorDiedError, match="could not be read from the control service"):
        core.worker.get([queued], 0)


@pytest.mark.parametrize("reply, error", [
    ({"s": "err", "e": serialization.serialize_error(RayTaskError("f", "tb", KeyError("k"))).to_inline()}, KeyError),
    ({"s": "cancelled"}, TaskCancelledError),
    ({"s": "exit"}, ActorDiedError),
    ({"s": "???"}, RayActorError),
])
def test_each_reply_kind_is_stored(core: OfflineCore, reply: dict[str, Any], error: type) -> None:
    actor_id = ids.random_unique_id()
    ref = _call(core, actor_id)
    actor = _alive(core)
    actor.take("push_actor_task")[1].set_result(reply)
    core.settle()
    with pytest.raises(error):
        core.worker.get([ref], 0)


def test_cancel_a_queued_call_and_a_running_one(core: OfflineCore) -> None:
    actor_id = ids.random_unique_id()
    running = _call(core, actor_id)
    actor = _alive(core)
    owner = core.peer(43700, {"add_borrowers": []})
    blocker = ObjectRef(ids.return_object_id(ids.new_task_id(core.worker.job_id), 1), ["127.0.0.1", 43700, b"o" * 28])
    queued = _call(core, actor_id, blocker)
    core.worker.cancel(queued, force=False)
    core.settle()
    with pytest.raises(TaskCancelledError):
        core.worker.get([queued], 0)
    core.worker.cancel(running, force=False)
    core.settle()
    spec, fut = actor.take("push_actor_task")
    assert actor.notified("cancel_task") == [{"tid": spec["tid"], "recursive": True}]
    fut.set_result({"s": "cancelled"})
    core.settle()
    with pytest.raises(TaskCancelledError):
        core.worker.get([running], 0)
    assert owner.take("get_object")


def test_an_actor_handle_count_kills_the_actor_when_the_last_ref_goes(core: OfflineCore) -> None:
    worker = core.worker
    actor_id = ids.random_unique_id()
    arg = worker.put(1)
    worker.register_owned_actor(actor_id, auto_destroy=True, creation_arg_ids=[arg._id])
    worker.reference_counter.add_submitted([arg._id], lambda _: None)
    handle = ObjectRef(actor_id, worker.address)  # what an ActorHandle holds
    del handle
    core.settle()
    assert core.gcs.notified("kill_actor") == [
        {"actor_id": actor_id, "no_restart": True, "cause": "all references to it were deleted"}]
    arg_id = arg._id
    del arg
    core.settle()
    assert not worker.reference_counter.has_reference(arg_id)  # the constructor's argument is released
