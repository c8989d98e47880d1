"""The placement policy as a pure function: every branch without processes."""

from __future__ import annotations

import random

import pytest

from ember._private import resources as res
from ember.raylet import scheduling_policy as policy

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def node(node_id: bytes, total: dict[str, float], used: dict[str, float] | None = None, alive: bool = True) -> policy.NodeView:
    fixed = res.to_fixed(total)
    available = dict(fixed)
    res.subtract(available, res.to_fixed(used or {}))
    return policy.NodeView(node_id, ["127.0.0.1", 1], fixed, available, alive)


def decide(request: dict[str, float], nodes: list[policy.NodeView], strategy=None, local: bytes = A,
           state: policy.PolicyState | None = None) -> policy.Decision:
    return policy.decide(res.to_fixed(request), strategy, local, {n.node_id: n for n in nodes},
                         policy.PolicyConfig(), state or policy.PolicyState(rng=random.Random(0)))


def test_utilization_is_that_of_the_most_used_resource_and_ignores_node_labels():
    n = node(A, {"CPU": 4, "GPU": 2, "node:127.0.0.1": 1}, {"CPU": 1, "GPU": 2, "node:127.0.0.1": 1})
    assert n.utilization() == 1.0
    assert node(A, {"CPU": 4, "node:x": 1}, {"CPU": 1, "node:x": 1}).utilization() == 0.25


def test_hybrid_stays_local_below_the_threshold():
    d = decide({"CPU": 1}, [node(A, {"CPU": 4}, {"CPU": 1}), node(B, {"CPU": 4})])
    assert (d.kind, d.node_id) == (policy.LOCAL, A)


def test_hybrid_spills_to_the_least_used_node_at_the_threshold():
    d = decide({"CPU": 1}, [node(A, {"CPU": 2}, {"CPU": 1}), node(B, {"CPU": 2}), node(C, {"CPU": 2}, {"CPU": 1})])
    assert (d.kind, d.node_id) == (policy.SPILLBACK, B)


def test_hybrid_keeps_a_busy_local_node_when_it_is_among_the_least_used():
    d = decide({"CPU": 1}, [node(A, {"CPU": 4}, {"CPU": 2}), node(B, {"CPU": 4}, {"CPU": 3})])
    assert (d.kind, d.node_id) == (policy.LOCAL, A)


def test_when_nothing_is_free_the_request_queues_locally_if_it_can_ever_run_there():
    full = [node(A, {"CPU": 1}, {"CPU": 1}), node(B, {"CPU": 1}, {"CPU": 1})]
    assert decide({"CPU": 1}, full).kind == policy.LOCAL
    # Not feasible here: it queues on the least-used node that can ever run it.
    d = decide({"GPU": 1}, [node(A, {"CPU": 1}), node(B, {"GPU": 1}, {"GPU": 1})])
    assert (d.kind, d.node_id) == (policy.SPILLBACK, B)


def test_a_request_no_live_node_can_ever_hold_is_infeasible():
    nodes = [node(A, {"CPU": 2}), node(B, {"CPU": 64}, alive=False)]
    assert decide({"CPU": 8}, nodes).kind == policy.INFEASIBLE
    assert decide({"custom": 1}, nodes).kind == policy.INFEASIBLE


def test_spread_round_robins_over_nodes_with_room():
    state = policy.PolicyState(rng=random.Random(0))
    nodes = [node(A, {"CPU": 2}), node(B, {"CPU": 2}), node(C, {"CPU": 2}, {"CPU": 2})]
    picks = [decide({"CPU": 1}, nodes, "SPREAD", state=state).node_id for _ in range(4)]
    assert picks == [A, B, A, B]  # C has no room now


def test_spread_owes_nothing_to_a_node_that_had_no_room():
    # C was full for a while: A and B took turns. Once C has room again the next requests go
    # round all three, not all to C until it has caught up with A and B.
    state = policy.PolicyState(rng=random.Random(0))
    busy = [node(A, {"CPU": 9}), node(B, {"CPU": 9}), node(C, {"CPU": 2}, {"CPU": 2})]
    for _ in range(6):
        decide({"CPU": 1}, busy, "SPREAD", state=state)
    free = [node(A, {"CPU": 9}), node(B, {"CPU": 9}), node(C, {"CPU": 2})]
    picks = [decide({"CPU": 1}, free, "SPREAD", state=state).node_id for _ in range(6)]
    assert sorted(picks[:3]) == [A, B, C] and sorted(picks[3:]) == [A, B, C], picks


def test_spread_falls_back_to_feasible_nodes_when_none_has_room():
    state = policy.PolicyState(rng=random.Random(0))
    nodes = [node(A, {"CPU": 1}, {"CPU": 1}), node(B, {"CPU": 1}, {"CPU": 1})]
    picks = {decide({"CPU": 1}, nodes, "SPREAD", state=state).node_id for _ in range(2)}
    assert picks == {A, B}


@pytest.mark.parametrize("soft", [False, True])
def test_node_affinity_to_a_live_node_goes_there_even_when_busy(soft):
    nodes = [node(A, {"CPU": 1}), node(B, {"CPU": 1}, {"CPU": 1})]
    d = decide({"CPU": 1}, nodes, {"type": "node_affinity", "node_id": B, "soft": soft})
    assert (d.kind, d.node_id) == (policy.SPILLBACK, B)
    d = decide({"CPU": 1}, nodes, {"type": "node_affinity", "node_id": A, "soft": soft})
    assert (d.kind, d.node_id) == (policy.LOCAL, A)


def test_hard_node_affinity_to_a_dead_unknown_or_too_small_node_says_which_and_why():
    nodes = [node(A, {"CPU": 1}), node(B, {"CPU": 1}, alive=False)]
    dead = decide({"CPU": 1}, nodes, {"type": "node_affinity", "node_id": B, "soft": False})
    assert dead.kind == policy.UNSCHEDULABLE and B.hex()[:12] in dead.reason and "is dead" in dead.reason
    unknown = decide({"CPU": 1}, nodes, {"type": "node_affinity", "node_id": C, "soft": False})
    assert unknown.kind == policy.UNSCHEDULABLE and "not part of the cluster" in unknown.reason
    small = decide({"CPU": 2}, nodes, {"type": "node_affinity", "node_id": A, "soft": False})
    assert small.kind == policy.UNSCHEDULABLE and "cannot fit it" in small.reason


def test_soft_node_affinity_to_a_dead_node_falls_back_to_the_default_policy():
    nodes = [node(A, {"CPU": 1}), node(B, {"CPU": 1}, alive=False)]
    d = decide({"CPU": 1}, nodes, {"type": "node_affinity", "node_id": B, "soft": True})
    assert (d.kind, d.node_id) == (policy.LOCAL, A)
