"""Actors are not limited by the task-worker cap (``max_workers``).

An actor holds a process for its life; as in Ray, a 2-CPU node runs far more
than ``4 x CPUs + 8`` of them. Real limits (a configured maximum, file
descriptors, memory) fail the creation with the reason instead of a silent
wait. ``benchmarks/many_actors.py`` runs the 1,000-actor version.
"""

from __future__ import annotations

import os

import psutil
import pytest

import ember
from ember._private.test_utils import wait_for_condition
from ember.exceptions import ActorUnschedulableError
from ember.raylet import worker_limits

MiB = 1024 * 1024


@ember.remote(num_cpus=0)
class Idle:
    def pid(self) -> int:
        return os.getpid()


@ember.remote
def square(x: int) -> int:
    return x * x


def test_a_hundred_zero_cpu_actors_on_a_two_cpu_node(ember_start, ember_env):
    ember_env(max_workers=4)  # a small task-worker cap: actors must not count against it
    ember_start(num_cpus=2, object_store_memory=100 * MiB)
    actors = [Idle.remote() for _ in range(100)]
    pids = ember.get([a.pid.remote() for a in actors], timeout=120)
    assert len(set(pids)) == 100  # a process each
    # Tasks still get workers of their own while the actors live.
    assert ember.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]
    assert ember.get([a.pid.remote() for a in actors], timeout=60) == pids
    wait_for_condition(lambda: ember.available_resources().get("CPU") == 2.0, timeout=10)


def test_the_configured_maximum_fails_the_next_actor_with_the_reason(ember_start, ember_env):
    ember_env(max_actor_workers=3)
    ember_start(num_cpus=2, object_store_memory=100 * MiB)
    first = [Idle.remote() for _ in range(3)]
    assert len(set(ember.get([a.pid.remote() for a in first], timeout=60))) == 3
    extra = Idle.remote()
    with pytest.raises(ActorUnschedulableError, match="EMBER_max_actor_workers=3"):
        ember.get(extra.pid.remote(), timeout=60)
    # The others are unaffected, and a slot freed by a killed actor is usable again.
    killed_pid = ember.get(first[0].pid.remote())
    ember.kill(first[0])
    wait_for_condition(lambda: not psutil.pid_exists(killed_pid), timeout=20)

    def a_new_actor_starts() -> bool:
        try:
            return ember.get(Idle.remote().pid.remote(), timeout=60) > 0
        except ActorUnschedulableError:
            return False  # the node daemon has not yet seen the killed one go

    wait_for_condition(a_new_actor_starts, timeout=20)
    assert len(ember.get([a.pid.remote() for a in first[1:]], timeout=60)) == 2


# ----------------------------------------------------------------------------- the limits themselves
def room(wanted: int, **kw: object) -> worker_limits.Room:
    args = dict(actor_workers=0, max_actor_workers=0, fds_open=50, fd_limit=20000, memory_fraction=0.3, memory_threshold=0.95)
    args.update(kw)
    return worker_limits.actor_worker_room(wanted, **args)  # type: ignore[arg-type]


def test_room_is_unlimited_by_default():
    assert room(1000) == worker_limits.Room(1000, "")


def test_room_is_bounded_by_file_descriptors_with_the_remedy():
    limit = 1024
    got = room(1000, fds_open=500, fd_limit=limit)
    assert got.count == (limit - worker_limits.FD_HEADROOM - 500) // worker_limits.FDS_PER_WORKER
    assert "500 of its 1024 file descriptors" in got.reason and "ulimit -n" in got.reason
    assert room(10, fds_open=limit, fd_limit=limit).count == 0


def test_room_is_zero_above_the_memory_threshold():
    got = room(5, memory_fraction=0.97, memory_threshold=0.95)
    assert got.count == 0 and "97% used" in got.reason
    assert room(5, memory_fraction=0.97, memory_threshold=1.0).count == 5  # monitor off


def test_room_respects_the_configured_maximum():
    got = room(10, actor_workers=7, max_actor_workers=8)
    assert got.count == 1 and "EMBER_max_actor_workers=8" in got.reason
