"""The lease table and resource accounting of a node, driven by events (no processes, no sockets).

``validate()`` runs after every step: available + leased + reserved = total (+ overcommit),
nothing negative, every lease has its LEASED worker, every queued request queued once.
Failure orders are covered: a worker dying before its lease reply is read, a lease returned
after its request was cancelled, a holder leaving, a bundle removed under running leases.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
from raylet_fakes import FakeConn, make_pool, start_idle_worker

from ember._private import resources as res
from ember.exceptions import ActorUnschedulableError, InvariantViolation, RuntimeEnvSetupError
from ember.protocol.raylet import RequestLease
from ember.raylet.lease_table import (
    Abandoned,
    Cancelled,
    DefaultEnvironmentOnly,
    Grant,
    KillWorker,
    LeaseTable,
    NeedWorkers,
    Reject,
    ReleaseIdleLeases,
    ResourcesChanged,
    SpillBack,
)
from ember.raylet.leases import LeaseRequest, RequestState
from ember.raylet.worker_pool import WorkerPool, WorkerState

NODE = b"n" * 28
PG = bytes.fromhex("ab" * 18)
U = res.UNIT


class Envs:
    """Runtime envs as the test says: ready ones, failed ones."""

    def __init__(self) -> None:
        self.ready_keys: set[str] = set()
        self.failures: dict[str, str] = {}

    def take_failures(self) -> dict[str, str]:
        failures, self.failures = self.failures, {}
        return failures

    def ready(self, env_key: str, env: dict[str, Any] | None) -> bool:
        return env_key in self.ready_keys


class Node:
    """A lease table over a fake worker pool, with helpers that validate after every step."""

    def __init__(self, tmp: Path, total: dict[str, float], workers: int = 2, **kw: Any) -> None:
        self.pool: WorkerPool = make_pool(str(tmp))
        counter = itertools.count(1)
        self.table = LeaseTable(NODE, res.to_fixed(total), self.pool,
                                new_lease_id=lambda: next(counter).to_bytes(28, "big"), **kw)
        self.workers = [start_idle_worker(self.pool) for _ in range(workers)]
        self.envs: Any = DefaultEnvironmentOnly()
        self.ids = itertools.count(1)
        self.table.validate()

    def request(self, holder: FakeConn, resources: dict[str, float], **payload: Any) -> LeaseRequest:
        hold = payload.pop("hold", None)
        request_id = next(self.ids)
        req = LeaseRequest(request_id, holder, res.to_fixed(resources),
                           RequestLease(request_id=request_id, resources=resources, **payload),
                           None if hold is None else res.to_fixed(hold))
        self.table.submit(req)
        self.table.validate()
        return req

    def schedule(self) -> list[Any]:
        actions = self.table.schedule(self.envs)
        self.table.validate()
        return actions

    def step(self, actions: list[Any]) -> list[Any]:
        self.table.validate()
        return actions

    def available(self, name: str = "CPU") -> float:
        return self.table.available.get(name, 0) / U


def grants(actions: list[Any]) -> list[Grant]:
    return [a for a in actions if isinstance(a, Grant)]


@pytest.fixture
def holder() -> FakeConn:
    return FakeConn("driver")


# ---------------------------------------------------------------------------- granting and returning

def test_a_request_is_granted_an_idle_worker_and_its_resources(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 2})
    req = node.request(holder, {"CPU": 1})
    (grant,) = grants(node.schedule())
    assert grant.request is req and req.state is RequestState.GRANTED
    lease = grant.lease
    assert lease.worker.state is WorkerState.LEASED and lease.worker.lease_id == lease.lease_id
    assert node.available() == 1
    actions = node.step(node.table.return_lease(lease.lease_id, holder))
    assert actions == [ResourcesChanged()]
    assert node.available() == 2
    assert lease.worker.state is WorkerState.IDLE and lease.worker in node.pool.idle
    assert not node.table.leases


def test_requests_are_granted_in_arrival_order_and_waiters_ask_holders_to_release_idle_leases(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1}, workers=3)
    first, second, third = (node.request(holder, {"CPU": 1}) for _ in range(3))
    actions = node.schedule()
    (grant,) = grants(actions)
    assert grant.request is first
    release = [a for a in actions if isinstance(a, ReleaseIdleLeases)]
    assert release and release[0].holders == [holder]
    assert list(node.table.queue) == [second, third]
    node.step(node.table.return_lease(grant.lease.lease_id, holder))
    (grant,) = grants(node.schedule())
    assert grant.request is second and list(node.table.queue) == [third]


def test_an_actor_lease_holds_what_it_says_and_dedicates_its_worker(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1})
    node.request(holder, {"CPU": 1}, hold={}, actor=True)
    (grant,) = grants(node.schedule())
    assert node.available() == 1, "an actor is placed with 1 CPU and holds none while it lives"
    assert grant.lease.worker.dedicated and node.pool.num_dedicated() == 1


def test_no_idle_worker_asks_for_workers_and_a_registered_one_is_granted(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 4}, workers=0)
    req = node.request(holder, {"CPU": 1})
    actions = node.schedule()
    assert actions == [NeedWorkers("", [req])]
    assert req.state is RequestState.QUEUED
    start_idle_worker(node.pool)
    (grant,) = grants(node.schedule())
    assert grant.request is req


def test_a_request_no_resources_of_this_node_can_hold_waits_without_blocking_others(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 2})
    too_big = node.request(holder, {"CPU": 8})
    small = node.request(holder, {"CPU": 1})
    (grant,) = grants(node.schedule())
    assert grant.request is small and list(node.table.queue) == [too_big]
    assert node.table.committed_available() == {"CPU": 1 * U}, "the infeasible one reserves nothing"


def test_committed_available_counts_queued_requests(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 4}, workers=0)
    node.request(holder, {"CPU": 1})
    node.request(holder, {"CPU": 2})
    assert node.table.committed_available() == {"CPU": 1 * U}
    node.request(holder, {"CPU": 3})
    assert node.table.committed_available() == {"CPU": 0}, "never below zero"


# ---------------------------------------------------------------------------- failure orders

def test_worker_dies_before_the_lease_reply_then_the_late_return_is_ignored(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 2})
    node.request(holder, {"CPU": 1})
    (grant,) = grants(node.schedule())
    worker = grant.lease.worker
    # The reply is on its way; the worker's connection drops first.
    assert node.step(node.table.worker_died(worker)) == [ResourcesChanged()]
    node.pool.mark_dead(worker)
    node.table.validate()
    assert node.available() == 2 and not node.table.leases
    # The holder read the reply, pushed a task, saw the worker die and returns the lease.
    assert node.step(node.table.return_lease(grant.lease.lease_id, holder)) == []
    assert node.available() == 2, "the late return gives nothing back twice"
    assert node.step(node.table.worker_died(worker)) == [], "a second death report changes nothing"


def test_lease_returned_after_its_request_was_cancelled(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1})
    req = node.request(holder, {"CPU": 1})
    (grant,) = grants(node.schedule())
    # The holder gave up on the request while the grant was on its way: too late to cancel.
    assert node.step(node.table.cancel(holder, req.request_id)) == []
    assert req.state is RequestState.GRANTED
    node.step(node.table.return_lease(grant.lease.lease_id, holder))
    assert node.available() == 1 and grant.lease.worker in node.pool.idle


def test_a_cancelled_request_is_never_granted(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1}, workers=0)
    req = node.request(holder, {"CPU": 1})
    other = FakeConn("other driver")
    assert node.step(node.table.cancel(other, req.request_id)) == [], "only its holder may cancel it"
    assert node.step(node.table.cancel(holder, req.request_id)) == [Cancelled(req)]
    assert req.state is RequestState.CANCELLED and not node.table.queue
    start_idle_worker(node.pool)
    assert node.schedule() == []


def test_a_holder_that_leaves_loses_its_requests_and_its_workers_are_killed(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1}, workers=2)
    node.request(holder, {"CPU": 1})
    waiting = node.request(holder, {"CPU": 1})
    (grant,) = grants(node.schedule())
    worker = grant.lease.worker
    actions = node.step(node.table.holder_gone(holder))
    assert Abandoned(waiting) in actions and waiting.state is RequestState.ABANDONED
    kills = [a for a in actions if isinstance(a, KillWorker)]
    assert [k.worker for k in kills] == [worker] and "disconnected" in kills[0].reason
    assert node.available() == 1 and not node.table.queue
    # Until its death is seen, the worker is LEASED to nobody and never handed out again.
    node.pool.kill(worker, kills[0].reason)
    node.table.validate()
    assert worker.state is WorkerState.LEASED and worker.lease_id is None and worker.killed
    node.request(FakeConn("next driver"), {"CPU": 1})
    (grant2,) = grants(node.schedule())
    assert grant2.lease.worker is not worker
    node.step(node.table.worker_died(worker))
    node.pool.mark_dead(worker)
    node.table.validate()


def test_a_lease_returned_with_kill_does_not_go_back_to_the_idle_pool(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1}, workers=1)
    node.request(holder, {"CPU": 1})
    (grant,) = grants(node.schedule())
    actions = node.step(node.table.return_lease(grant.lease.lease_id, holder, kill=True))
    assert KillWorker(grant.lease.worker, "") in actions
    node.pool.kill(grant.lease.worker)
    assert node.pool.pop_idle() is None
    assert node.available() == 1


def test_a_lease_returned_by_someone_else_is_ignored(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1})
    node.request(holder, {"CPU": 1})
    (grant,) = grants(node.schedule())
    assert node.step(node.table.return_lease(grant.lease.lease_id, FakeConn("stranger"))) == []
    assert grant.lease.lease_id in node.table.leases


# ---------------------------------------------------------------------------- blocked workers

def test_a_blocked_worker_lends_its_cpu_and_taking_it_back_may_overcommit(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1}, workers=2)
    node.request(holder, {"CPU": 1})
    (parent,) = grants(node.schedule())
    assert node.step(node.table.set_blocked(parent.lease.worker, True)) == [ResourcesChanged()]
    assert node.step(node.table.set_blocked(parent.lease.worker, True)) == [], "blocked twice: one loan"
    assert node.available() == 1
    node.request(holder, {"CPU": 1})
    (child,) = grants(node.schedule())
    assert node.available() == 0
    # The parent's get returns while the child still runs: both run, the node is overcommitted.
    node.step(node.table.set_blocked(parent.lease.worker, False))
    assert node.available() == 0 and node.table.overcommit == {"CPU": 1 * U}
    node.step(node.table.return_lease(child.lease.lease_id, holder))
    assert node.available() == 0 and node.table.overcommit == {}, "the debt is paid first"
    node.step(node.table.return_lease(parent.lease.lease_id, holder))
    assert node.available() == 1


def test_a_blocked_lease_that_ends_gives_back_only_what_it_still_holds(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 2, "memory": 10})
    node.request(holder, {"CPU": 1, "memory": 4})
    (grant,) = grants(node.schedule())
    node.step(node.table.set_blocked(grant.lease.worker, True))
    node.step(node.table.return_lease(grant.lease.lease_id, holder))
    assert node.table.available == {"CPU": 2 * U, "memory": 10 * U}


# ---------------------------------------------------------------------------- placement-group bundles

def test_bundle_reserve_commit_use_and_remove_under_running_leases(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 2}, workers=3)
    node.table.prepare_bundle(PG, 0, {"CPU": 1})
    node.table.validate()
    assert node.available() == 1, "a prepared bundle takes its resources out of the free pool"
    with pytest.raises(ValueError, match="not enough free resources"):
        node.table.prepare_bundle(PG, 1, {"CPU": 2})
    node.table.validate()
    node.step(node.table.commit_bundle(PG, 0))
    group_cpu = f"CPU_group_0_{PG.hex()}"
    assert node.table.total[group_cpu] == 1 * U and node.available(group_cpu) == 1
    node.step(node.table.commit_bundle(PG, 0))  # committed twice (a resent commit): once
    node.request(holder, {group_cpu: 1})
    outside = node.request(holder, {"CPU": 1})
    in_group, plain = grants(node.schedule())
    assert plain.request is outside and node.available() == 0
    # The group is removed while its task runs: the task's worker ends, the CPU comes back.
    actions = node.step(node.table.remove_bundle(PG, 0))
    assert [a.worker for a in actions if isinstance(a, KillWorker)] == [in_group.lease.worker]
    assert group_cpu not in node.table.total and group_cpu not in node.table.available
    assert node.available() == 1
    node.step(node.table.return_lease(in_group.lease.lease_id, holder))  # its late return: ignored
    assert node.available() == 1


def test_bundle_cancel_and_commit_of_an_unknown_bundle(tmp_path: Path) -> None:
    node = Node(tmp_path, {"CPU": 2})
    node.table.prepare_bundle(PG, 0, {"CPU": 2})
    node.table.prepare_bundle(PG, 0, {"CPU": 2})  # a resent prepare reserves once
    node.table.validate()
    node.table.cancel_bundle(PG, 0)
    node.table.validate()
    assert node.available() == 2
    with pytest.raises(ValueError, match="was not prepared here"):
        node.table.commit_bundle(PG, 1)
    node.step(node.table.remove_bundle(PG, 3))  # nothing there: nothing happens
    assert node.available() == 2


# ---------------------------------------------------------------------------- GPUs, actors, envs

def test_gpus_are_shared_by_fractions_and_given_whole_exclusively(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 8, "GPU": 2}, workers=4)
    node.request(holder, {"GPU": 0.5})
    node.request(holder, {"GPU": 0.5})
    half1, half2 = grants(node.schedule())
    assert half1.lease.gpu_ids == half2.lease.gpu_ids == [0]
    node.request(holder, {"GPU": 1})
    (whole,) = grants(node.schedule())
    assert whole.lease.gpu_ids == [1]
    node.step(node.table.return_lease(half1.lease.lease_id, holder))
    node.step(node.table.return_lease(whole.lease.lease_id, holder))
    assert node.table.gpus.free == {0: U // 2, 1: U}


def test_actors_beyond_max_actor_workers_are_rejected_with_the_reason(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 4}, workers=3, max_actor_workers=1)
    node.request(holder, {"CPU": 1}, actor=True)
    second = node.request(holder, {"CPU": 1}, actor=True)
    task = node.request(holder, {"CPU": 1})
    actions = node.schedule()
    rejected = [a for a in actions if isinstance(a, Reject)]
    assert [r.request for r in rejected] == [second] and second.state is RequestState.REJECTED
    assert isinstance(rejected[0].error, ActorUnschedulableError)
    assert "EMBER_max_actor_workers=1" in str(rejected[0].error)
    assert task in [g.request for g in grants(actions)], "tasks are not limited by it"


def test_requests_wait_for_their_runtime_env_and_fail_with_its_error(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 4}, workers=1)
    node.envs = Envs()
    building = node.request(holder, {"CPU": 1}, renv=["env-a", {"pip": ["x"]}])
    broken = node.request(holder, {"CPU": 1}, renv=["env-b", {"pip": ["y"]}])
    assert building.env_key == "env-a" and building.env == {"pip": ["x"]}
    assert node.schedule() == []
    node.envs.failures["env-b"] = "pip failed"
    node.envs.ready_keys.add("env-a")
    actions = node.schedule()
    (reject,) = [a for a in actions if isinstance(a, Reject)]
    assert reject.request is broken and isinstance(reject.error, RuntimeEnvSetupError)
    assert "pip failed" in str(reject.error)
    # The idle worker runs the default env: env-a needs its own.
    assert NeedWorkers("env-a", [building]) in actions
    start_idle_worker(node.pool, "env-a")
    (grant,) = grants(node.schedule())
    assert grant.request is building and grant.lease.worker.env_key == "env-a"


def test_reject_from_outside_only_fails_queued_requests(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1}, workers=0)
    req = node.request(holder, {"CPU": 1}, actor=True)
    error = node.table.actor_refusal("no file descriptors left")
    assert node.step(node.table.reject(req, error)) == [Reject(req, error)]
    assert node.step(node.table.reject(req, error)) == []
    assert "cannot start another actor process: no file descriptors left" in str(error)


def test_spill_back_moves_a_queued_request_to_another_node(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 1}, workers=0)
    req = node.request(holder, {"CPU": 1})
    other = b"o" * 28
    assert node.step(node.table.spill_back(req, other, ["10.0.0.2", 7000])) == [SpillBack(req, other, ["10.0.0.2", 7000])]
    assert req.state is RequestState.SPILLED and not node.table.queue
    assert node.step(node.table.spill_back(req, other, ["10.0.0.2", 7000])) == []


def test_leases_of_a_restarted_control_service_move_or_end(tmp_path: Path) -> None:
    old, new = FakeConn("old gcs"), FakeConn("new gcs")
    node = Node(tmp_path, {"CPU": 2})
    node.request(old, {"CPU": 1}, actor=True)
    node.request(old, {"CPU": 1}, actor=True)
    kept, released = grants(node.schedule())
    actions = node.step(node.table.rebind_holder(old, new, {released.lease.lease_id}))
    assert [a.worker for a in actions if isinstance(a, KillWorker)] == [released.lease.worker]
    assert kept.lease.holder is new and list(node.table.leases) == [kept.lease.lease_id]


# ---------------------------------------------------------------------------- validate() catches what is wrong

def test_validate_names_each_broken_invariant(tmp_path: Path, holder: FakeConn) -> None:
    node = Node(tmp_path, {"CPU": 2})
    node.request(holder, {"CPU": 1})
    (grant,) = grants(node.schedule())
    node.table.available["CPU"] += U
    with pytest.raises(InvariantViolation, match="CPU: available 20000 \\+ leased 10000"):
        node.table.validate()
    node.table.available["CPU"] = -10000
    with pytest.raises(InvariantViolation, match="negative"):
        node.table.validate()
    node.table.available["CPU"] = 10000
    node.table.validate()
    grant.lease.worker.lease_id = b"x" * 28
    with pytest.raises(InvariantViolation, match="serving lease"):
        node.table.validate()
    grant.lease.worker.lease_id = grant.lease.lease_id
    node.table.queue.append(node.table.queue[0] if node.table.queue else grant.request)
    with pytest.raises(InvariantViolation, match="queued in state GRANTED"):
        node.table.validate()
    node.table.queue.clear()
    node.table.gpus.free[7] = 3
    with pytest.raises(InvariantViolation, match="GPU 7"):
        node.table.validate()


# ---------------------------------------------------------------------------- random event orders

@pytest.mark.parametrize("seed", range(6))
def test_random_event_orders_keep_every_invariant(tmp_path: Path, seed: int) -> None:
    """Requests, grants, returns, kills, deaths, blocks, cancels, holders leaving and bundles in
    a random order: the accounting balances after every single event."""
    rng = random.Random(seed)
    node = Node(tmp_path / str(seed), {"CPU": 4, "GPU": 2, "memory": 8}, workers=3)
    holders = [FakeConn(f"driver {i}") for i in range(3)]
    shapes = [{"CPU": 1}, {"CPU": 0.5}, {"GPU": 0.5}, {"GPU": 1, "CPU": 1}, {"memory": 3}, {"CPU": 2}]
    bundles: list[int] = []
    seen: set[type] = set()
    for _ in range(400):
        event = rng.randrange(11)
        leases = list(node.table.leases.values())
        if event <= 2:
            payload = {"actor": True} if rng.random() < 0.2 else {}
            node.request(rng.choice(holders), rng.choice(shapes), **payload)
        elif event == 3:
            for action in node.schedule():
                seen.add(type(action))
                if isinstance(action, NeedWorkers) and len(node.pool.alive()) < 8:
                    start_idle_worker(node.pool)
        elif event == 4 and leases:
            lease = rng.choice(leases)
            for action in node.step(node.table.return_lease(lease.lease_id, lease.holder, kill=rng.random() < 0.2)):
                if isinstance(action, KillWorker):
                    node.pool.kill(action.worker)
        elif event == 5 and leases:
            worker = rng.choice(leases).worker
            node.step(node.table.worker_died(worker))
            node.pool.mark_dead(worker)
        elif event == 6 and leases:
            node.step(node.table.set_blocked(rng.choice(leases).worker, rng.random() < 0.6))
        elif event == 7 and node.table.queue:
            req = rng.choice(list(node.table.queue))
            node.step(node.table.cancel(req.holder, req.request_id))
        elif event == 8 and rng.random() < 0.2:
            for action in node.step(node.table.holder_gone(rng.choice(holders))):
                if isinstance(action, KillWorker):
                    node.pool.kill(action.worker)
        elif event == 9:
            index = rng.randrange(3)
            try:
                node.table.prepare_bundle(PG, index, {"CPU": 1})
                node.table.commit_bundle(PG, index)
                bundles.append(index)
            except ValueError:
                pass
        elif event == 10 and bundles:
            for action in node.step(node.table.remove_bundle(PG, bundles.pop(rng.randrange(len(bundles))))):
                if isinstance(action, KillWorker):
                    node.pool.kill(action.worker)
        # Killed workers die some time later.
        for worker in [w for w in node.pool.alive() if w.killed and rng.random() < 0.5]:
            node.step(node.table.worker_died(worker))
            node.pool.mark_dead(worker)
        node.table.validate()
    assert {Grant, NeedWorkers, ReleaseIdleLeases} <= seen, "the random run reached the interesting states"
    # Everything returned: the node is whole again.
    for lease in list(node.table.leases.values()):
        node.step(node.table.return_lease(lease.lease_id, lease.holder))
    for index in list(bundles):
        node.step(node.table.remove_bundle(PG, index))
    for req in list(node.table.queue):
        node.step(node.table.cancel(req.holder, req.request_id))
    assert node.table.available == node.table.total == res.to_fixed({"CPU": 4, "GPU": 2, "memory": 8})
    assert node.table.overcommit == {}
