"""The control service's actor lifecycle core, driven by events (no processes, sockets or sleeps).

Every step is followed by ``validate()``; failure orders (a worker dying before its
constructor replies, a reply after a kill, a node dying with a lease request pending,
late grants) are played explicitly and in random order.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from ember.exceptions import InvariantViolation
from ember.gcs.actor_lifecycle import (
    ActorLifecycle,
    ActorState,
    CancelLeaseRequest,
    KillWorker,
    LeaseFailure,
    NodeView,
    Persist,
    PushCreation,
    RequestLease,
    ReturnLease,
    Stage,
    Wake,
    WarnUnplaceable,
)

NODE_A, NODE_B, NODE_C = b"A" * 28, b"B" * 28, b"C" * 28
JOB = b"\x01\x00\x00\x00"


def node(node_id: bytes, cpus: float = 4, available: float | None = None, **extra: float) -> NodeView:
    total = {"CPU": cpus, **extra}
    return NodeView(node_id, total, {**total, "CPU": cpus if available is None else available})


def spec(n: int, **options: Any) -> dict[str, Any]:
    return {"actor_id": n.to_bytes(2, "big") * 8, "class_name": "Counter", "place": {"CPU": 1},
            "job": JOB, "owner": ["127.0.0.1", 1, b"driver"], **options}


class Driver:
    """Feeds events to an ActorLifecycle, validating after each, and plays the nodes' part."""

    def __init__(self) -> None:
        self.core = ActorLifecycle(request_nonce=b"n0")
        self.workers = 0

    def __getattr__(self, event: str) -> Any:
        method = getattr(self.core, event)

        def step(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            self.core.validate()
            return result

        return step

    def actions(self) -> list[Any]:
        return self.core.take_actions()

    def entry(self, actor_id: bytes) -> Any:
        return self.core.actors[actor_id]

    def lease(self, nodes: list[NodeView]) -> RequestLease:
        """Place, and return the one lease request made."""
        self.place(nodes)
        requests = [a for a in self.actions() if isinstance(a, RequestLease)]
        assert len(requests) == 1, requests
        return requests[0]

    def grant(self, request: RequestLease) -> PushCreation:
        self.workers += 1
        worker = b"w%03d" % self.workers
        self.lease_granted(request.actor_id, request.request_id, {
            "worker_id": worker, "node_id": request.node_id, "lease_id": b"l" + worker,
            "address": ["127.0.0.1", 7000 + self.workers, worker], "pid": 100 + self.workers, "gpu_ids": [0],
        })
        pushes = [a for a in self.actions() if isinstance(a, PushCreation)]
        assert len(pushes) == 1
        return pushes[0]

    def create(self, s: dict[str, Any], nodes: list[NodeView] | None = None) -> PushCreation:
        """Register, place, grant and run the constructor: the actor is ALIVE."""
        self.register(s)
        push = self.grant(self.lease(nodes or [node(NODE_A)]))
        self.creation_replied(push.actor_id, push.worker_id, {"s": "ok"})
        assert self.entry(push.actor_id).state is ActorState.ALIVE
        self.actions()
        return push


@pytest.fixture
def d() -> Driver:
    return Driver()


# ============================================================================ the happy path
def test_register_place_lease_create(d: Driver) -> None:
    s = spec(1, renv=["key", {"env_vars": {"A": "1"}}])
    assert d.register(s) == {"actor_id": s["actor_id"], "existing": False}
    assert d.actions() == [Persist(s["actor_id"])]
    entry = d.entry(s["actor_id"])
    assert entry.state is ActorState.PENDING_CREATION and entry.stage is Stage.PLACING

    request = d.lease([node(NODE_A)])
    assert request.node_id == NODE_A and entry.stage is Stage.LEASING
    assert request.request == {"resources": {"CPU": 1}, "hold": {}, "request_id": request.request_id,
                               "strategy": None, "spilled": False, "actor": True, "renv": s["renv"]}
    push = d.grant(request)
    assert entry.stage is Stage.CREATING and d.core.by_worker == {push.worker_id: s["actor_id"]}
    assert push.payload["incarnation"] == 1 and push.payload["gpus"] == [0]
    assert push.address == ["127.0.0.1", 7001, push.worker_id]

    d.creation_replied(s["actor_id"], push.worker_id, {"s": "ok"})
    assert entry.state is ActorState.ALIVE and entry.stage is None
    assert entry.address == push.address and entry.incarnation == 1 and entry.pid == 101
    assert d.actions() == [Persist(s["actor_id"]), Wake(s["actor_id"])]
    assert entry.public()["state"] == "ALIVE" and entry.public()["node_id"] == NODE_A


def test_registration_is_idempotent_and_names_are_unique(d: Driver) -> None:
    first = spec(1, name="counter", namespace="ns")
    d.register(first)
    assert d.register(first) == {"actor_id": first["actor_id"], "existing": False}
    assert len(d.core.actors) == 1
    with pytest.raises(ValueError, match="already exists in namespace 'ns'"):
        d.register(spec(2, name="counter", namespace="ns"))
    reused = d.register(spec(3, name="counter", namespace="ns", get_if_exists=True, meta={"m": 1}))
    assert reused["existing"] is True and reused["actor_id"] == first["actor_id"]
    d.register(spec(4, name="counter", namespace="other"))  # another namespace: fine
    assert d.core.get_named("counter", "ns") is d.entry(first["actor_id"])

    d.kill(first["actor_id"], True, "killed by the test")
    assert d.core.get_named("counter", "ns") is None
    d.register(spec(5, name="counter", namespace="ns"))  # the name is free again
    assert d.core.named[("ns", "counter")] == spec(5)["actor_id"]


def test_an_unplaceable_actor_warns_once_and_waits_for_a_node(d: Driver) -> None:
    s = spec(1, place={"GPU": 1})
    d.register(s)
    d.actions()
    d.place([node(NODE_A)])
    assert d.actions() == [WarnUnplaceable(s["actor_id"])]
    d.place([node(NODE_A)])
    assert d.actions() == [] and d.entry(s["actor_id"]).stage is Stage.PLACING
    request = d.lease([node(NODE_A), node(NODE_B, GPU=1)])
    assert request.node_id == NODE_B


def test_placement_prefers_the_asked_node_and_spreads_spread_actors(d: Driver) -> None:
    d.register(spec(1, node_id=NODE_B))
    assert d.lease([node(NODE_A), node(NODE_B), node(NODE_C)]).node_id == NODE_B
    chosen = []
    for n in range(2, 8):
        d.register(spec(n, strategy="SPREAD"))
        request = d.lease([node(NODE_A), node(NODE_B), node(NODE_C, available=0)])
        assert request.request["spilled"] is True  # this node must host it
        chosen.append(request.node_id)
    assert chosen.count(NODE_A) == 3 and chosen.count(NODE_B) == 3  # C has no room now


# ============================================================================ lease answers
def test_spillback_asks_the_other_node_with_a_fresh_request_id(d: Driver) -> None:
    s = spec(1)
    d.register(s)
    first = d.lease([node(NODE_A)])
    d.lease_spilled(s["actor_id"], first.request_id, node(NODE_B))
    (second,) = d.actions()
    assert isinstance(second, RequestLease) and second.node_id == NODE_B
    assert second.request["spilled"] is True and second.request_id != first.request_id
    # The first request's late answers change nothing.
    d.lease_failed(s["actor_id"], first.request_id, LeaseFailure.NODE_LOST, "gone")
    assert d.entry(s["actor_id"]).lease_request == (NODE_B, second.request_id)
    # A spillback to a node that is not alive here: placed again.
    d.lease_spilled(s["actor_id"], second.request_id, None)
    assert d.entry(s["actor_id"]).stage is Stage.PLACING


@pytest.mark.parametrize("failure, error_type, cause", [
    (LeaseFailure.UNSCHEDULABLE, "ActorUnschedulableError", "it cannot be scheduled: too big"),
    (LeaseFailure.RUNTIME_ENV, "RuntimeEnvSetupError", "its runtime_env could not be set up. too big"),
    (LeaseFailure.ERROR, "", "the control service could not create it: too big"),
])
def test_a_failed_lease_kills_the_actor_with_the_reason(d: Driver, failure: LeaseFailure, error_type: str,
                                                        cause: str) -> None:
    s = spec(1)
    d.register(s)
    request = d.lease([node(NODE_A)])
    d.lease_failed(s["actor_id"], request.request_id, failure, "too big")
    entry = d.entry(s["actor_id"])
    assert entry.state is ActorState.DEAD and entry.error_type == error_type and entry.death_cause == cause
    assert Wake(s["actor_id"]) in d.actions()


def test_a_lost_node_during_the_lease_places_the_actor_again(d: Driver) -> None:
    s = spec(1)
    d.register(s)
    request = d.lease([node(NODE_A)])
    d.lease_failed(s["actor_id"], request.request_id, LeaseFailure.NODE_LOST, "its node went away")
    assert d.entry(s["actor_id"]).stage is Stage.PLACING
    assert d.lease([node(NODE_B)]).node_id == NODE_B


# ============================================================================ kills and late answers
def test_kill_while_placing(d: Driver) -> None:
    s = spec(1)
    d.register(s)
    d.actions()
    assert d.kill(s["actor_id"], True) is True
    assert d.actions() == [Persist(s["actor_id"]), Wake(s["actor_id"])]
    entry = d.entry(s["actor_id"])
    assert entry.state is ActorState.DEAD and entry.death_cause == "it was killed with ember.kill()"
    assert not d.core.placing
    assert d.kill(s["actor_id"], True) is True and d.actions() == []  # killing the dead: a no-op
    assert d.kill(b"x" * 16, True) is False


def test_kill_while_leasing_cancels_the_request_and_returns_a_late_grant(d: Driver) -> None:
    s = spec(1)
    d.register(s)
    request = d.lease([node(NODE_A)])
    d.kill(s["actor_id"], True)
    assert CancelLeaseRequest(NODE_A, request.request_id) in d.actions()
    # The grant won the race with the cancellation: it goes back, ending its worker.
    d.lease_granted(s["actor_id"], request.request_id, {"worker_id": b"w", "node_id": NODE_A, "lease_id": b"l",
                                                        "address": ["h", 1, b"w"]})
    assert d.actions() == [ReturnLease(NODE_A, b"l")]
    assert d.core.by_worker == {}
    d.lease_cancelled(s["actor_id"], request.request_id)  # or the cancellation's answer: nothing
    assert d.actions() == []


def test_a_creation_reply_after_a_kill_is_dropped(d: Driver) -> None:
    s = spec(1)
    d.register(s)
    push = d.grant(d.lease([node(NODE_A)]))
    d.kill(s["actor_id"], True, "killed while its constructor ran")
    assert KillWorker(NODE_A, push.worker_id) in d.actions()
    d.creation_replied(s["actor_id"], push.worker_id, {"s": "ok"})
    entry = d.entry(s["actor_id"])
    assert entry.state is ActorState.DEAD and entry.address is None and d.actions() == []
    d.worker_died(push.worker_id, "killed")  # its death report: nothing more happens
    assert entry.state is ActorState.DEAD and d.actions() == []


def test_a_constructor_that_raises_kills_the_actor_and_its_worker(d: Driver) -> None:
    s = spec(1, max_restarts=3)
    d.register(s)
    push = d.grant(d.lease([node(NODE_A)]))
    d.creation_replied(s["actor_id"], push.worker_id, {"s": "err", "e": ["pickled error"]})
    entry = d.entry(s["actor_id"])
    assert entry.state is ActorState.DEAD and entry.creation_error == ["pickled error"]
    assert entry.death_cause == "its constructor (__init__) raised an exception"
    assert KillWorker(NODE_A, push.worker_id) in d.actions()


def test_a_failed_push_kills_the_actor(d: Driver) -> None:
    s = spec(1)
    d.register(s)
    push = d.grant(d.lease([node(NODE_A)]))
    d.creation_error(s["actor_id"], push.worker_id, "bad frame")
    assert d.entry(s["actor_id"]).death_cause == "the control service could not create it: bad frame"


# ============================================================================ deaths and restarts
def test_worker_dies_before_the_constructor_replies(d: Driver) -> None:
    s = spec(1, max_restarts=1)
    d.register(s)
    push = d.grant(d.lease([node(NODE_A)]))
    d.worker_died(push.worker_id, "exit code 1")
    entry = d.entry(s["actor_id"])
    assert entry.state is ActorState.RESTARTING and entry.stage is Stage.PLACING and entry.num_restarts == 1
    assert entry.worker_id is None and d.core.by_worker == {}
    # The dead worker's reply arrives late: dropped.
    d.creation_replied(s["actor_id"], push.worker_id, {"s": "ok"})
    assert entry.state is ActorState.RESTARTING
    second = d.grant(d.lease([node(NODE_B)]))
    assert second.payload["incarnation"] == 1
    d.creation_replied(s["actor_id"], second.worker_id, {"s": "ok"})
    assert entry.state is ActorState.ALIVE and entry.node_id == NODE_B
    d.worker_died(second.worker_id, "exit code 9")  # out of restarts now
    assert entry.state is ActorState.DEAD
    assert entry.death_cause == "its worker process (pid 102) died: exit code 9 and it has used all 1 restarts (max_restarts)"


def test_restart_budget(d: Driver) -> None:
    never = spec(1)
    forever = spec(2, max_restarts=-1)
    d.create(never)
    d.create(forever)
    d.worker_died(d.entry(never["actor_id"]).worker_id, "crash")
    assert d.entry(never["actor_id"]).state is ActorState.DEAD
    for incarnation in range(2, 7):
        d.worker_died(d.entry(forever["actor_id"]).worker_id, "crash")
        assert d.entry(forever["actor_id"]).state is ActorState.RESTARTING
        push = d.grant(d.lease([node(NODE_A)]))
        d.creation_replied(push.actor_id, push.worker_id, {"s": "ok"})
        assert d.entry(forever["actor_id"]).incarnation == incarnation
    assert d.entry(forever["actor_id"]).num_restarts == 5


def test_kill_with_restart_ends_the_worker_and_the_death_restarts_it(d: Driver) -> None:
    s = spec(1, max_restarts=1)
    push = d.create(s)
    assert d.kill(s["actor_id"], False) is True
    assert d.actions() == [KillWorker(NODE_A, push.worker_id)]
    assert d.entry(s["actor_id"]).state is ActorState.ALIVE  # until the node reports the death
    d.worker_died(push.worker_id, "killed")
    assert d.entry(s["actor_id"]).state is ActorState.RESTARTING


def test_node_death_restarts_its_actors_and_replaces_pending_requests(d: Driver) -> None:
    alive = spec(1, max_restarts=2)
    leasing = spec(2)
    elsewhere = spec(3)
    d.create(alive)
    d.create(elsewhere, [node(NODE_B)])
    d.register(leasing)
    request = d.lease([node(NODE_A)])
    d.node_died(NODE_A, "no heartbeat")
    assert d.entry(alive["actor_id"]).state is ActorState.RESTARTING
    assert d.entry(leasing["actor_id"]).stage is Stage.PLACING
    assert d.entry(elsewhere["actor_id"]).state is ActorState.ALIVE
    # The dead node's answers come late: a failure is dropped, a grant returned.
    d.lease_failed(leasing["actor_id"], request.request_id, LeaseFailure.NODE_LOST, "gone")
    d.lease_granted(leasing["actor_id"], request.request_id, {"worker_id": b"w", "node_id": NODE_A,
                                                              "lease_id": b"late", "address": ["h", 1, b"w"]})
    assert ReturnLease(NODE_A, b"late") in d.actions()
    assert d.entry(leasing["actor_id"]).stage is Stage.PLACING


def test_a_node_dying_after_its_worker_does_not_spend_a_second_restart(d: Driver) -> None:
    s = spec(1, max_restarts=5)
    push = d.create(s)
    d.worker_died(push.worker_id, "crash")
    d.node_died(NODE_A, "no heartbeat")  # the old worker's node: not the actor's any more
    assert d.entry(s["actor_id"]).num_restarts == 1


def test_owned_actors_die_with_their_owner_and_job_unless_detached(d: Driver) -> None:
    owner = d.create(spec(1))
    child = spec(2, owner=["h", 1, owner.worker_id])
    detached_child = spec(3, owner=["h", 1, owner.worker_id], detached=True)
    of_job = spec(4, job=b"\x02\x00\x00\x00")
    detached_of_job = spec(5, job=b"\x02\x00\x00\x00", detached=True)
    for s in (child, detached_child, of_job, detached_of_job):
        d.create(s)
    d.worker_died(owner.worker_id, "exit")
    assert d.entry(child["actor_id"]).death_cause == "its owner (a worker process) died"
    assert d.entry(detached_child["actor_id"]).state is ActorState.ALIVE
    d.job_finished(b"\x02\x00\x00\x00")
    assert d.entry(of_job["actor_id"]).death_cause == "its owner (the driver of its job) exited"
    assert d.entry(detached_of_job["actor_id"]).state is ActorState.ALIVE


def test_every_transition_wakes_waiters(d: Driver) -> None:
    s = spec(1, max_restarts=1)
    push = d.create(s)
    d.worker_died(push.worker_id, "crash")
    assert Wake(s["actor_id"]) in d.actions()
    d.kill(s["actor_id"], True)
    assert d.actions()[-1] == Wake(s["actor_id"])
    story = [step[3] for step in d.entry(s["actor_id"]).history.steps]
    assert story[0] == "registered" and story[-1] == "it was killed with ember.kill()"


# ============================================================================ restarts of the service
def test_restore_resumes_every_actor(d: Driver) -> None:
    alive, pending, dead = spec(1, name="a"), spec(2, name="p", max_restarts=2), spec(3, name="d")
    records = [
        {"spec": alive, "state": "ALIVE", "address": ["h", 1, b"w1"], "worker_id": b"w1", "node_id": NODE_A,
         "lease_id": b"l1", "pid": 5, "incarnation": 1},
        {"spec": pending, "state": "RESTARTING", "worker_id": b"w2", "node_id": NODE_A, "num_restarts": 1},
        {"spec": dead, "state": "DEAD", "death_cause": "killed"},
        {"spec": spec(4), "state": "ALIVE"},  # a damaged record: no worker
    ]
    d.restore(records)
    assert d.entry(alive["actor_id"]).state is ActorState.ALIVE and d.core.by_worker == {b"w1": alive["actor_id"]}
    assert d.entry(pending["actor_id"]).stage is Stage.PLACING and d.entry(pending["actor_id"]).worker_id is None
    assert set(d.core.named) == {("", "a"), ("", "p")}
    assert d.entry(spec(4)["actor_id"]).state is ActorState.DEAD
    # The node comes back holding leases granted before: only the live actor's stays.
    assert d.core.leases_to_release(NODE_A, [[b"l1", b"w1"], [b"l2", b"w2"]]) == [b"l2"]


# ============================================================================ validate() itself
@pytest.mark.parametrize("corrupt", [
    lambda c, e: c.queues[Stage.LEASING].__setitem__(e.actor_id, None),  # in two queues
    lambda c, e: setattr(e, "address", None),  # ALIVE without an address
    lambda c, e: c.by_worker.clear(),  # ALIVE without its worker
    lambda c, e: setattr(e, "num_restarts", 9),  # past max_restarts
    lambda c, e: c.named.__setitem__(("", "ghost"), e.actor_id),  # a name of another actor
    lambda c, e: setattr(e, "stage", Stage.PLACING),  # ALIVE yet in a stage
])
def test_validate_finds_broken_invariants(d: Driver, corrupt: Any) -> None:
    push = d.create(spec(1))
    corrupt(d.core, d.entry(push.actor_id))
    with pytest.raises(InvariantViolation, match="actor lifecycle"):
        d.core.validate()


# ============================================================================ random orders
@pytest.mark.parametrize("seed", range(12))
def test_random_event_orders_keep_the_invariants(seed: int) -> None:
    """Events in random orders, late answers included; validate() after every one."""
    rng = random.Random(seed)
    d = Driver()
    nodes = [node(NODE_A), node(NODE_B)]
    requests: list[RequestLease] = []
    pushes: list[PushCreation] = []
    for step in range(300):
        choice = rng.random()
        actors = list(d.core.actors)
        if choice < 0.12 or not actors:
            d.register(spec(step + 1, max_restarts=rng.choice([0, 1, 3, -1]), detached=rng.random() < 0.5,
                            name=rng.choice([None, "x", "y"]), get_if_exists=True))
        elif choice < 0.25:
            d.place(nodes)
        elif choice < 0.45 and requests:
            r = requests.pop(rng.randrange(len(requests)))
            kind = rng.random()
            if kind < 0.6:
                d.workers += 1
                worker = b"w%04d" % d.workers
                d.lease_granted(r.actor_id, r.request_id, {"worker_id": worker, "node_id": r.node_id,
                                                           "lease_id": b"l" + worker, "address": ["h", 1, worker]})
            elif kind < 0.75:
                d.lease_spilled(r.actor_id, r.request_id, rng.choice([None, *nodes]))
            elif kind < 0.85:
                d.lease_cancelled(r.actor_id, r.request_id)
            else:
                failure = LeaseFailure.NODE_LOST if rng.random() < 0.7 else rng.choice(list(LeaseFailure))
                d.lease_failed(r.actor_id, r.request_id, failure, "no")
        elif choice < 0.65 and pushes:
            p = pushes.pop(rng.randrange(len(pushes)))
            if rng.random() < 0.8:
                d.creation_replied(p.actor_id, p.worker_id, {"s": "ok" if rng.random() < 0.9 else "err"})
            else:
                d.creation_error(p.actor_id, p.worker_id, "broken")
        elif choice < 0.74:
            workers = list(d.core.by_worker) + [p.worker_id for p in pushes]
            if workers:
                d.worker_died(rng.choice(workers), "crash")
        elif choice < 0.85:
            d.kill(rng.choice(actors), rng.random() < 0.5)
        elif choice < 0.88:
            d.node_died(rng.choice([NODE_A, NODE_B]), "test")  # node ids are reused: stale answers
        elif choice < 0.89:
            d.job_finished(JOB)
        else:
            d.place(nodes)
        for action in d.actions():
            if isinstance(action, RequestLease):
                requests.append(action)
            elif isinstance(action, PushCreation):
                pushes.append(action)
    states = {e.state for e in d.core.actors.values()}
    assert ActorState.DEAD in states
