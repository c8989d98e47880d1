"""Placement groups as Ray programs use them: captured child tasks, the
``placement_group=None`` escape, the reserved ``bundle`` resource, and demands
that fit no bundle failing at ``.remote()``.
"""

from __future__ import annotations

import pytest

import ember
from ember.util.placement_group import (
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup


def _group_of_this_task() -> str | None:
    group = get_current_placement_group()
    return None if group is None else group.id.hex()


@ember.remote(num_cpus=1)
def child() -> str | None:
    return _group_of_this_task()


@ember.remote(num_cpus=1)
def parent() -> tuple[str | None, str | None, str | None]:
    captured = ember.get(child.remote(), timeout=30)
    escaped = ember.get(child.options(scheduling_strategy=InGroup(placement_group=None)).remote(), timeout=30)
    return _group_of_this_task(), captured, escaped


@ember.remote(num_cpus=0)
class Spawner:
    def run(self) -> tuple[str | None, str | None]:
        return _group_of_this_task(), ember.get(child.remote(), timeout=30)


@pytest.fixture
def group_of_two_cpus(ember_start):
    """A 3-CPU node with a group that takes 2 of them: a child outside the group fits only on the third."""
    ember_start(num_cpus=3, object_store_memory=100 * 1024 * 1024)
    pg = placement_group([{"CPU": 2}])
    ember.get(pg.ready(), timeout=30)
    yield pg
    remove_placement_group(pg)


def test_children_of_a_capturing_task_run_in_its_group(group_of_two_cpus):
    pg = group_of_two_cpus
    strategy = InGroup(placement_group=pg, placement_group_capture_child_tasks=True)
    mine, captured, escaped = ember.get(parent.options(scheduling_strategy=strategy).remote(), timeout=60)
    assert mine == captured == pg.id.hex()
    assert escaped is None  # placement_group=None: scheduled outside any group


def test_children_are_not_captured_by_default(group_of_two_cpus):
    pg = group_of_two_cpus
    mine, child_group, _ = ember.get(parent.options(scheduling_strategy=InGroup(pg)).remote(), timeout=60)
    assert mine == pg.id.hex()
    assert child_group is None


def test_legacy_options_and_actors_capture_too(group_of_two_cpus):
    pg = group_of_two_cpus
    mine, captured, _ = ember.get(
        parent.options(placement_group=pg, placement_group_capture_child_tasks=True).remote(), timeout=60
    )
    assert mine == captured == pg.id.hex()
    spawner = Spawner.options(scheduling_strategy=InGroup(pg, placement_group_capture_child_tasks=True)).remote()
    assert ember.get(spawner.run.remote(), timeout=60) == (pg.id.hex(), pg.id.hex())
    assert _group_of_this_task() is None  # the driver is in no group


def test_the_bundle_resource_is_reserved(ember_shared):
    with pytest.raises(ValueError, match="reserved"):
        placement_group([{"CPU": 1, "bundle": 1}])
    with pytest.raises(ValueError, match="reserved"):
        child.options(resources={"bundle": 1})


def test_a_demand_that_fits_no_bundle_fails_at_remote(ember_start):
    ember_start(num_cpus=2, resources={"a": 1}, object_store_memory=100 * 1024 * 1024)
    pg = placement_group([{"a": 1}])
    ember.get(pg.ready(), timeout=30)

    @ember.remote
    class Default:
        def ready(self) -> bool:
            return True

    @ember.remote
    def task() -> bool:
        return True

    # An actor needs 1 CPU to be placed and a task 1 CPU to run: the group has none.
    with pytest.raises(ValueError, match="cannot fit into any bundle"):
        Default.options(scheduling_strategy=InGroup(pg)).remote()
    with pytest.raises(ValueError, match="cannot fit"):
        task.options(scheduling_strategy=InGroup(pg)).remote()
    with pytest.raises(ValueError, match="cannot fit into bundle 0"):
        task.options(num_cpus=0, resources={"a": 2}, scheduling_strategy=InGroup(pg, 0)).remote()
    with pytest.raises(ValueError, match="placement_group_bundle_index"):
        task.options(num_cpus=0, scheduling_strategy=InGroup(pg, 3)).remote()
    # What fits runs.
    actor = Default.options(num_cpus=0, resources={"a": 1}, scheduling_strategy=InGroup(pg)).remote()
    assert ember.get(actor.ready.remote(), timeout=30)
    ember.kill(actor)
    assert ember.get(task.options(num_cpus=0, scheduling_strategy=InGroup(pg)).remote(), timeout=30)
    remove_placement_group(pg)
