"""The worker pool's bookkeeping with a fake launcher (no processes): states, idle list, caps, reaping."""

from __future__ import annotations

from pathlib import Path

import pytest
from raylet_fakes import FakeConn, FakeLauncher, make_pool, start_idle_worker

from ember._private.state_machine import InvalidTransition, story
from ember.exceptions import InvariantViolation
from ember.raylet.worker_pool import WorkerPool, WorkerState


@pytest.fixture
def pool(tmp_path: Path) -> WorkerPool:
    return make_pool(str(tmp_path), max_workers=3)


def test_a_worker_starts_registers_and_moves_between_idle_and_leased(pool: WorkerPool) -> None:
    handle = pool.start_worker()
    pool.validate()
    assert handle.state is WorkerState.STARTING and pool.num_starting() == 1
    assert handle.out_path.endswith(".out") and handle.err_path.endswith(".err")
    assert pool.register(FakeConn(), b"unknown", ["h", 1]) is None  # type: ignore[arg-type]
    assert pool.register(FakeConn(), handle.worker_id, ["h", 1]) is handle  # type: ignore[arg-type]
    pool.validate()
    assert pool.register(FakeConn(), handle.worker_id, ["h", 1]) is None, "registers once"  # type: ignore[arg-type]
    pool.validate()
    assert handle.state is WorkerState.IDLE and pool.idle == [handle]
    assert pool.pop_idle() is handle and pool.idle == []
    pool.lease_worker(handle, b"L" * 28, dedicated=True)
    pool.validate()
    assert handle.state is WorkerState.LEASED and handle.lease_id == b"L" * 28
    assert pool.num_dedicated() == 1 and pool.leased_workers() == [handle]
    pool.return_worker(handle)
    pool.validate()
    assert handle.state is WorkerState.IDLE and handle.lease_id is None and pool.idle == [handle]
    assert "LEASED -> IDLE (lease returned)" in story(handle)


def test_an_illegal_move_raises_with_the_story(pool: WorkerPool) -> None:
    handle = pool.start_worker()
    pool.validate()
    with pytest.raises(InvalidTransition, match="STARTING -> LEASED"):
        pool.lease_worker(handle, b"L" * 28, dedicated=False)


def test_pop_idle_takes_the_newest_of_the_env_and_skips_dead_and_killed(pool: WorkerPool) -> None:
    first, second = start_idle_worker(pool), start_idle_worker(pool)
    pool.validate()
    other_env = start_idle_worker(pool, "env-a")
    pool.validate()
    assert pool.pop_idle("env-b") is None
    assert pool.pop_idle("env-a") is other_env
    pool.lease_worker(other_env, b"L" * 28, dedicated=False)  # taken from the idle list to be leased
    pool.kill(second)
    pool.validate()
    assert second.killed and second.proc.poll() == -9
    assert pool.pop_idle() is first, "a killed worker is never handed out"
    assert pool.pop_idle() is None


def test_a_killed_leased_worker_does_not_return_to_the_idle_pool(pool: WorkerPool) -> None:
    handle = start_idle_worker(pool)
    pool.validate()
    pool.pop_idle()
    pool.lease_worker(handle, b"L" * 28, dedicated=False)
    pool.validate()
    pool.kill(handle, "the process holding its lease disconnected")
    pool.validate()
    pool.return_worker(handle)
    pool.validate()
    assert handle.state is WorkerState.LEASED and handle not in pool.idle
    assert handle.end_reason == "the process holding its lease disconnected"
    pool.kill(handle, "another reason")
    pool.validate()
    assert handle.end_reason == "the process holding its lease disconnected", "the first reason stays"


def test_the_task_worker_cap_ignores_blocked_actor_and_evicted_workers(pool: WorkerPool) -> None:
    workers = [start_idle_worker(pool) for _ in range(3)]
    pool.validate()
    assert not pool.can_start()
    assert pool.can_start(blocked=1), "a blocked worker does not count"
    workers[0].dedicated = True
    assert pool.can_start(), "an actor's worker does not count"
    workers[0].dedicated = False
    assert pool.evict_idle("env-a"), "an idle worker of another env makes room"
    pool.validate()
    assert pool.can_start()
    assert sum(w.evicted for w in workers) == 1
    assert not pool.evict_idle("")  # only workers of the same env are left
    pool.validate()


def test_launch_ready_bounds_concurrent_starts_and_waits_for_the_fork_server(pool: WorkerPool) -> None:
    pool.startup_concurrency = 2
    pool.start_worker()
    pool.validate()
    assert pool.launch_ready()
    pool.start_worker()
    pool.validate()
    assert not pool.launch_ready(), "two are starting already"
    pool.startup_concurrency = 8
    warming = FakeLauncher()
    warming.ready = False
    pool.launcher = warming
    assert not pool.launch_ready(), "no worker starts while the fork server warms up"
    warming.ready = True
    assert pool.launch_ready(), "its ready line releases them"
    warming.ready = False
    warming.dead = True
    assert pool.launch_ready(), "a fork server that died warming up: fresh interpreters start"


def test_death_reaping_and_failed_starts(pool: WorkerPool) -> None:
    idle = start_idle_worker(pool)
    pool.validate()
    idle.proc.returncode = 0
    pool.mark_dead(idle)
    pool.validate()
    assert idle.state is WorkerState.DEAD and idle not in pool.idle and idle.exit_detail == "exit code 0"
    pool.mark_dead(idle)  # twice: nothing more
    pool.validate()
    lingering = start_idle_worker(pool)
    pool.validate()
    pool.mark_dead(lingering)  # its connection dropped; the process is still there
    pool.validate()
    assert lingering.exit_detail == "connection closed"
    crashed = pool.start_worker("env-a")
    pool.validate()
    crashed.proc.returncode = 1
    pool.reap()
    pool.validate()
    assert idle.worker_id not in pool.workers, "dead and exited: forgotten"
    assert lingering.killed, "dead but still running: killed"
    assert crashed.state is WorkerState.DEAD and crashed.worker_id not in pool.workers
    assert pool.failed_starts == {"env-a": [crashed.err_path]}
    # It registers once a worker of the env manages to.
    start_idle_worker(pool, "env-a")
    pool.validate()
    assert pool.failed_starts == {}


def test_validate_finds_an_idle_worker_missing_from_the_idle_list(pool: WorkerPool) -> None:
    handle = start_idle_worker(pool)
    pool.validate()
    pool.idle.remove(handle)
    with pytest.raises(InvariantViolation, match="IDLE but not on the idle list"):
        pool.validate()
    pool.idle += [handle, handle]
    with pytest.raises(InvariantViolation, match="twice"):
        pool.validate()
    pool.idle.pop()
    handle.lease_id = b"L" * 28
    with pytest.raises(InvariantViolation, match="holds lease"):
        pool.validate()


def test_stop_all_ends_every_process_and_the_launcher(pool: WorkerPool) -> None:
    workers = [start_idle_worker(pool) for _ in range(2)]
    pool.validate()
    pool.stop_all(timeout=1)
    assert all(w.proc.poll() is not None for w in workers)
    assert pool.launcher.stopped
