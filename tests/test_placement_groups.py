"""Placement groups: atomic placement by strategy, scheduling into bundles, removal, rescheduling."""

from __future__ import annotations

import os

import pytest

import ember
from ember._private import resources as res
from ember._private.placement_policy import place
from ember._private.test_utils import wait_for_condition
from ember.cluster_utils import Cluster
from ember.exceptions import ActorDiedError, RayActorError
from ember.util.placement_group import (
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy

MiB = 1024 * 1024


@pytest.fixture
def three_nodes(monkeypatch):
    from conftest import _shared, _stop_shared

    if _shared:
        _stop_shared()  # this test needs its own multi-node cluster
    monkeypatch.setenv("EMBER_node_death_timeout_s", "2")
    monkeypatch.setenv("EMBER_resource_report_period_s", "0.1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 100 * MiB})
    try:
        nodes = [cluster.head_node] + [
            cluster.add_node(num_cpus=2, object_store_memory=100 * MiB) for _ in range(2)
        ]
        ember.init(address=cluster.address, _token=cluster.token)
        yield cluster, nodes
    finally:
        cluster.shutdown()


@ember.remote(num_cpus=1)
def node_of():
    return ember.get_runtime_context().get_node_id()


def _bundle_nodes(pg):
    table = placement_group_table(pg)
    return [table["bundles_to_node_id"][i] for i in range(len(table["bundles"]))]


# ----------------------------------------------------------------------------- pure policy
def _fixed(**kw):
    return res.to_fixed(kw)


def test_policy_strict_pack_needs_one_node():
    nodes = {b"a": _fixed(CPU=2), b"b": _fixed(CPU=2)}
    assert place([_fixed(CPU=1), _fixed(CPU=1)], "STRICT_PACK", nodes) in ([b"a", b"a"], [b"b", b"b"])
    assert place([_fixed(CPU=2), _fixed(CPU=1)], "STRICT_PACK", nodes) is None


def test_policy_pack_falls_back_to_few_nodes():
    nodes = {b"a": _fixed(CPU=2), b"b": _fixed(CPU=2)}
    result = place([_fixed(CPU=2), _fixed(CPU=1)], "PACK", nodes)
    assert result is not None and sorted(set(result)) == [b"a", b"b"]


def test_policy_strict_spread_needs_distinct_nodes():
    nodes = {b"a": _fixed(CPU=4), b"b": _fixed(CPU=4)}
    result = place([_fixed(CPU=1)] * 2, "STRICT_SPREAD", nodes)
    assert result is not None and len(set(result)) == 2
    assert place([_fixed(CPU=1)] * 3, "STRICT_SPREAD", nodes) is None


def test_policy_spread_shares_nodes_only_when_needed():
    nodes = {b"a": _fixed(CPU=4), b"b": _fixed(CPU=4)}
    result = place([_fixed(CPU=1)] * 3, "SPREAD", nodes)
    assert result is not None and len(set(result)) == 2


def test_policy_rejects_unknown_strategy():
    with pytest.raises(ValueError, match="unknown placement strategy"):
        place([_fixed(CPU=1)], "CLUSTER", {b"a": _fixed(CPU=1)})


# ----------------------------------------------------------------------------- validation
def test_bad_arguments_are_clear_errors(ember_shared):
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])
    with pytest.raises(ValueError, match="requests no resources"):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(ValueError, match=">= 0"):
        placement_group([{"CPU": -1}])


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
def test_strategies_place_bundles_and_tasks_run_in_them(three_nodes, strategy):
    _, nodes = three_nodes
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy=strategy)
    assert ember.get(pg.ready(), timeout=20) is True
    assert pg.wait(5)
    placed = _bundle_nodes(pg)
    if strategy in ("PACK", "STRICT_PACK"):
        assert len(set(placed)) == 1
    else:
        assert len(set(placed)) == 2
    for index in range(2):
        where = node_of.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, index)).remote()
        assert ember.get(where, timeout=20) == placed[index]
    assert placement_group_table(pg)["state"] == "CREATED"
    remove_placement_group(pg)
    wait_for_condition(lambda: placement_group_table(pg)["state"] == "REMOVED", timeout=10)


def test_reservation_is_atomic_and_resources_return(three_nodes):
    cluster, nodes = three_nodes
    total_cpu = ember.cluster_resources()["CPU"]
    # Three 2-CPU bundles fit the three nodes only if nothing else runs: placed whole.
    pg = placement_group([{"CPU": 2}] * 3, strategy="STRICT_SPREAD", name="all")
    assert pg.wait(20)
    wait_for_condition(lambda: ember.available_resources().get("CPU", 0) == 0, timeout=10)
    # A group that cannot fit now is not half-placed: it stays PENDING and reserves nothing.
    blocked = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert not blocked.wait(1)
    assert placement_group_table(blocked)["state"] == "PENDING"
    assert placement_group_table(blocked)["bundles_to_node_id"] == {}
    assert get_placement_group("all") == pg
    remove_placement_group(pg)
    # Once the first group is gone the second one is placed, and resources add up again.
    assert blocked.wait(20)
    remove_placement_group(blocked)
    wait_for_condition(lambda: ember.available_resources().get("CPU", 0) == total_cpu, timeout=10)


def test_infeasible_group_waits(three_nodes):
    pg = placement_group([{"CPU": 64}])
    assert not pg.wait(1)
    assert placement_group_table(pg)["state"] == "PENDING"
    remove_placement_group(pg)


def test_get_placement_group_unknown_name(three_nodes):
    with pytest.raises(ValueError, match="Failed to look up placement group"):
        get_placement_group("nope")


def test_removal_ends_tasks_and_actors_inside(three_nodes, tmp_path):
    pg = placement_group([{"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(20)

    @ember.remote(num_cpus=1)
    class Resident:
        def pid(self):
            return os.getpid()

    actor = Resident.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    pid = ember.get(actor.pid.remote(), timeout=20)
    remove_placement_group(pg)

    def actor_gone():
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True

    wait_for_condition(actor_gone, timeout=20)
    with pytest.raises((ActorDiedError, RayActorError)):
        ember.get(actor.pid.remote(), timeout=20)


def test_bundles_of_a_dead_node_are_placed_again(three_nodes):
    cluster, nodes = three_nodes
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(20)
    placed = _bundle_nodes(pg)
    victim = next(n for n in nodes if n.node_id in placed and not n.is_head)
    victim.kill_raylet()

    def moved():
        table = placement_group_table(pg)
        now = list(table["bundles_to_node_id"].values())
        return table["state"] == "CREATED" and victim.node_id not in now and len(set(now)) == 2

    wait_for_condition(moved, timeout=30)
    # And work can be placed into the moved bundle.
    index = placed.index(victim.node_id)
    where = node_of.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, index)).remote()
    assert ember.get(where, timeout=30) == _bundle_nodes(pg)[index]
