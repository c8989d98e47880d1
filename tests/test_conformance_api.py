"""Ray API conformance: names and behaviours Ray programs and Ray's test suites rely on.

Runtime context, async constructors, refs returned by actor methods, ActorPool with
several returns, init's argument checks, and the modules libraries import.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import ember
from ember._private.test_utils import wait_for_condition, wait_for_file, write_file_atomic


# ---------------------------------------------------------------- bad input at the API
def test_remote_on_an_async_function_raises_value_error():
    async def fetch() -> int:
        return 1

    with pytest.raises(ValueError, match="'async def' should not be used for remote tasks"):
        ember.remote(fetch)
    with pytest.raises(ValueError, match="async def"):
        ember.remote(num_cpus=1)(fetch)


@pytest.mark.parametrize("bad", [123, b"ns", ["a"]])
def test_init_rejects_a_namespace_that_is_not_a_string(bad):
    with pytest.raises(TypeError, match="namespace must be None or a string"):
        ember.init(namespace=bad)
    assert not ember.is_initialized()


def test_init_rejects_an_empty_namespace():
    with pytest.raises(ValueError, match="not a valid namespace"):
        ember.init(namespace="")
    assert not ember.is_initialized()


def test_job_config_namespace_and_default_lifetime(ember_start):
    from ember.job_config import JobConfig

    with pytest.raises(ValueError, match="lifetime"):
        JobConfig(default_actor_lifetime="forever")
    with pytest.raises(TypeError, match="namespace"):
        JobConfig(ray_namespace=5)
    ember_start(num_cpus=2, job_config=JobConfig(ray_namespace="from-job-config", metadata={"k": "v"}))
    assert ember.get_runtime_context().namespace == "from-job-config"


def test_init_rejects_a_job_config_of_another_type():
    with pytest.raises(TypeError, match="JobConfig"):
        ember.init(job_config={"ray_namespace": "x"})
    assert not ember.is_initialized()


# ---------------------------------------------------------------- runtime context
def test_runtime_context_in_the_driver_matches_ray_keys(ember_shared):
    ctx = ember.get_runtime_context()
    info = ctx.get()
    assert set(info) == {"job_id", "node_id", "namespace"}
    assert isinstance(info["job_id"], ember.JobID) and info["job_id"].hex() == ctx.get_job_id()
    assert isinstance(ctx.node_id, ember.NodeID) and ctx.node_id.hex() == ctx.get_node_id()
    assert ctx.get_task_id() is None and ctx.get_actor_id() is None
    with pytest.raises(AssertionError):
        ctx.task_id  # noqa: B018  (Ray: worker-only)
    with pytest.raises(RuntimeError, match="only available when the process is a worker"):
        ctx.is_canceled()
    with pytest.raises(RuntimeError, match="only available in an actor"):
        ctx.current_actor  # noqa: B018


def test_runtime_context_in_a_task(ember_shared):
    @ember.remote(num_cpus=0.5, resources={})
    def where():
        ctx = ember.get_runtime_context()
        info = ctx.get()
        return (
            {k: v.hex() if hasattr(v, "hex") else v for k, v in info.items()},
            ctx.task_id.hex(), ctx.get_task_id(), ctx.actor_id, ctx.get_assigned_resources(), ctx.is_canceled(),
        )

    info, task_id, task_hex, actor_id, assigned, cancelled = ember.get(where.remote())
    assert set(info) == {"job_id", "node_id", "namespace", "task_id"}
    assert info["task_id"] == task_id == task_hex
    assert actor_id is None
    assert assigned == {"CPU": 0.5}
    assert cancelled is False

    @ember.remote
    def default_task():
        return ember.get_runtime_context().get_assigned_resources()

    assert ember.get(default_task.remote()) == {"CPU": 1.0}


def test_assigned_resources_of_actors_and_placement_group_tasks(ember_shared):
    @ember.remote
    class Holder:
        def assigned(self):
            return ember.get_runtime_context().get_assigned_resources()

    assert ember.get(Holder.remote().assigned.remote()) == {}  # as in Ray: an actor holds no CPU by default
    assert ember.get(Holder.options(num_cpus=0.25).remote().assigned.remote()) == {"CPU": 0.25}

    from ember.util.placement_group import placement_group, remove_placement_group
    from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 1}])
    ember.get(pg.ready(), timeout=30)
    try:
        @ember.remote(num_cpus=0.5)
        def in_group():
            return ember.get_runtime_context().get_assigned_resources()

        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        assert ember.get(in_group.options(scheduling_strategy=strategy).remote()) == {"CPU": 0.5}
    finally:
        remove_placement_group(pg)


def test_runtime_context_in_an_actor(ember_shared):
    @ember.remote
    class Me:
        def __init__(self):
            self.handle_in_init = ember.get_runtime_context().current_actor

        def info(self):
            ctx = ember.get_runtime_context()
            return (ctx.actor_id.hex(), ctx.get_actor_id(), set(ctx.get()), ctx.current_actor,
                    self.handle_in_init, ctx.was_current_actor_reconstructed, ctx.get_actor_name())

        def echo(self, x):
            return x

    actor = Me.options(name="me-actor").remote()
    actor_hex, actor_hex2, keys, handle, handle_in_init, reconstructed, name = ember.get(actor.info.remote())
    assert actor_hex == actor_hex2 == actor._actor_id.hex()
    assert keys == {"job_id", "node_id", "namespace", "task_id", "actor_id"}
    assert handle == actor and handle_in_init == actor
    assert ember.get(handle.echo.remote(3)) == 3  # the handle works from the driver
    assert reconstructed is False
    assert name == "me-actor"


def test_was_current_actor_reconstructed_after_a_restart(ember_shared):
    @ember.remote(max_restarts=1)
    class Phoenix:
        def state(self):
            return os.getpid(), ember.get_runtime_context().was_current_actor_reconstructed

    actor = Phoenix.remote()
    pid, reconstructed = ember.get(actor.state.remote())
    assert reconstructed is False
    os.kill(pid, 9)

    def restarted():
        try:
            new_pid, again = ember.get(actor.state.remote(), timeout=10)
        except ember.exceptions.RayActorError:
            return None
        return new_pid != pid and again

    assert wait_for_condition(restarted, timeout=30)


def test_is_canceled_is_true_in_a_cancelled_task_that_handles_it(ember_shared, tmp_path):
    flag = str(tmp_path / "started")
    seen = str(tmp_path / "seen")

    @ember.remote(max_retries=0)
    def stubborn(flag, seen):
        from ember.core.task_executor import Cancelled

        write_file_atomic(flag, "1")
        try:
            import time

            while True:
                time.sleep(0.01)
        except Cancelled:
            write_file_atomic(seen, str(ember.get_runtime_context().is_canceled()))
            raise

    ref = stubborn.remote(flag, seen)
    wait_for_file(flag)
    ember.cancel(ref)
    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(ref, timeout=30)
    assert wait_for_file(seen) == "True"


# ---------------------------------------------------------------- actors
def test_async_init_may_await(ember_shared):
    @ember.remote
    class Loaded:
        async def __init__(self, value):
            await asyncio.sleep(0)
            self.value = value
            self.loop_id = id(asyncio.get_running_loop())

        async def get(self):
            return self.value, self.loop_id == id(asyncio.get_running_loop())

    assert ember.get(Loaded.remote(41).get.remote()) == (41, True)


def test_async_init_with_sync_methods_and_a_failing_async_init(ember_shared):
    @ember.remote
    class Mixed:
        async def __init__(self):
            await asyncio.sleep(0)
            self.ready = True

        def get(self):
            return self.ready

    assert ember.get(Mixed.remote().get.remote()) is True

    @ember.remote
    class Broken:
        async def __init__(self):
            await asyncio.sleep(0)
            raise KeyError("no config")

        def get(self):
            return 1

    with pytest.raises(ember.exceptions.RayActorError, match="no config"):
        ember.get(Broken.remote().get.remote(), timeout=30)


def test_a_sync_actor_method_may_return_an_object_ref(ember_shared):
    @ember.remote
    class Maker:
        def make(self, value):
            return ember.put(value)

        def make_list(self, value):
            return [ember.put(value)]

    maker = Maker.remote()
    inner = ember.get(maker.make.remote("payload"))
    assert isinstance(inner, ember.ObjectRef)  # as in Ray: the caller gets the ref, not its value
    assert ember.get(inner) == "payload"
    refs = ember.get(maker.make_list.remote(5))
    assert ember.get(refs[0]) == 5

    @ember.remote
    class AsyncMaker:
        async def make(self, value):
            return ember.put(value)

    async_maker = AsyncMaker.remote()  # the actor owns the value: keep it alive while reading it
    inner = ember.get(async_maker.make.remote("async"))
    assert isinstance(inner, ember.ObjectRef) and ember.get(inner) == "async"


def test_actor_pool_with_methods_of_two_returns(ember_shared):
    from ember.util import ActorPool

    @ember.remote
    class Pair:
        @ember.method(num_returns=2)
        def two(self, x):
            return x, x * 10

    pool = ActorPool([Pair.remote(), Pair.remote()])
    assert list(pool.map(lambda a, v: a.two.remote(v), [1, 2, 3])) == [[1, 10], [2, 20], [3, 30]]
    assert sorted(pool.map_unordered(lambda a, v: a.two.remote(v), [4, 5, 6])) == [[4, 40], [5, 50], [6, 60]]
    pool.submit(lambda a, v: a.two.remote(v), 7)
    assert pool.get_next() == [7, 70]
    with pytest.raises(TypeError, match="ObjectRef or a list of them"):
        pool.submit(lambda a, v: [1, 2], 8)


# ---------------------------------------------------------------- names libraries import
def test_modules_and_names_libraries_import(ember_shared):
    import ember._private.ray_constants as private_constants
    import ember.ray_constants as constants
    from ember import state, worker
    from ember.util import get_node_ip_address, list_named_actors

    assert constants.NODE_ID_PREFIX == private_constants.NODE_ID_PREFIX == "node:"
    assert constants.env_integer("EMBER_TEST_UNSET_VARIABLE", 7) == 7
    assert worker.global_worker.mode == worker.SCRIPT_MODE
    assert worker.global_worker.connected
    assert get_node_ip_address() == ember.nodes()[0]["NodeManagerAddress"]

    @ember.remote
    class Named:
        def ids(self):
            from ember import worker as w

            return w.get_resource_ids(), w.global_worker.mode == w.WORKER_MODE

    actor = Named.options(name="conf-named", num_cpus=0.5).remote()
    resource_ids, in_worker = ember.get(actor.ids.remote())
    assert resource_ids == {"CPU": [(0, 0.5)]} and in_worker
    assert "conf-named" in list_named_actors()
    everywhere = list_named_actors(all_namespaces=True)
    assert {"name": "conf-named", "namespace": ember.get_runtime_context().namespace} in everywhere

    table = state.actors()
    entry = table[actor._actor_id.hex()]
    assert entry["State"] == "ALIVE" and entry["ActorClassName"] == "Named" and entry["Name"] == "conf-named"
    assert state.actors(actor_id=actor._actor_id.hex())["ActorID"] == actor._actor_id.hex()
    assert state.actors(actor_id="00" * 16) == {}
    assert actor._actor_id.hex() in state.actors(actor_state_name="ALIVE")
    with pytest.raises(ValueError, match="actor_state_name"):
        state.actors(actor_state_name="SLEEPING")
    ember.kill(actor)


def test_object_ref_on_completed(ember_shared):
    import threading

    @ember.remote
    def value(x):
        if x < 0:
            raise ValueError("negative")
        return x * 2

    got: list = []
    done = threading.Event()

    def callback(result):
        got.append(result)
        if len(got) == 2:
            done.set()

    value.remote(21)._on_completed(callback)
    value.remote(-1)._on_completed(callback)
    assert done.wait(30)
    assert 42 in got
    errors = [g for g in got if isinstance(g, Exception)]
    assert len(errors) == 1 and "negative" in str(errors[0])


# ---------------------------------------------------------------- test helpers
def test_signal_actor_and_semaphore(ember_shared):
    from ember._private.test_utils import Semaphore, SignalActor

    signal = SignalActor.remote()

    @ember.remote
    def waits(signal):
        ember.get(signal.wait.remote())
        return "released"

    ref = waits.remote(signal)
    wait_for_condition(lambda: ember.get(signal.cur_num_waiters.remote()) == 1, timeout=30)
    ready, _ = ember.wait([ref], timeout=0.1)
    assert not ready
    ember.get(signal.send.remote())
    assert ember.get(ref, timeout=30) == "released"

    sema = Semaphore.remote(value=1)
    ember.get(sema.acquire.remote())
    assert ember.get(sema.locked.remote()) is True
    ember.get(sema.release.remote())
    assert ember.get(sema.locked.remote()) is False


def test_batch_queue(ember_shared):
    from ember._common.test_utils import BatchQueue
    from ember.util.queue import Empty

    queue = BatchQueue()
    for i in range(5):
        queue.put(i)
    assert queue.get_batch(3) == [0, 1, 2]
    assert queue.get_batch(None, total_timeout=0) == [3, 4]
    with pytest.raises(Empty):
        queue.get_batch(2, first_timeout=0.05)


def test_drivers_pids_and_actor_kills(ember_shared, tmp_path):
    from ember._common.test_utils import (
        kill_actor_and_wait_for_failure,
        placement_group_assert_no_leak,
        run_string_as_driver,
        run_string_as_driver_nonblocking,
        wait_for_pid_to_exit,
    )

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert run_string_as_driver("print('hello from', 'a driver')", env=env).strip() == "hello from a driver"
    with pytest.raises(subprocess.CalledProcessError) as info:
        run_string_as_driver("import sys; print('bad'); sys.exit(3)", env=env)
    assert info.value.returncode == 3 and "bad" in info.value.output

    proc = run_string_as_driver_nonblocking("import sys; print(sys.stdin.closed)", env=env)
    try:
        out, _ = proc.communicate(timeout=60)
        assert out.decode().strip() == "True"
        wait_for_pid_to_exit(proc.pid, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(TimeoutError):
        wait_for_pid_to_exit(os.getpid(), timeout=0.1)

    @ember.remote
    class Victim:
        def pid(self):
            return os.getpid()

    victim = Victim.remote()
    pid = ember.get(victim.pid.remote())
    kill_actor_and_wait_for_failure(victim)
    wait_for_pid_to_exit(pid, timeout=30)

    from ember.util.placement_group import placement_group

    pg = placement_group([{"CPU": 1}])
    ember.get(pg.ready(), timeout=30)
    placement_group_assert_no_leak([pg])


def test_cancel_actor_calls_as_ray(ember_shared, tmp_path):
    release = str(tmp_path / "release")
    started = str(tmp_path / "started")

    @ember.remote
    class Worker:
        def slow(self, release, started):
            import time

            write_file_atomic(started, "1")
            while not os.path.exists(release) and not ember.get_runtime_context().is_canceled():
                time.sleep(0.01)
            return "finished"

        def quick(self):
            return 1

    actor = Worker.remote()
    running = actor.slow.remote(release, started)
    queued = actor.quick.remote()
    wait_for_file(started)
    ember.cancel(queued)
    ember.cancel(running)
    # A sync actor's running call is not interrupted, but it reads as cancelled (as in Ray);
    # the queued one never runs.
    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(running, timeout=30)
    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(queued, timeout=30)
    assert ember.get(actor.quick.remote()) == 1

    seen = str(tmp_path / "seen")

    @ember.remote
    class Sleeper:
        async def sleep(self, seen):
            try:
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                write_file_atomic(seen, "cancelled")
                raise

        async def ping(self):
            return "pong"

    sleeper = Sleeper.remote()
    ref = sleeper.sleep.remote(seen)
    ember.get(sleeper.ping.remote())
    ember.cancel(ref)
    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(ref, timeout=30)
    assert wait_for_file(seen) == "cancelled"
    assert ember.get(sleeper.ping.remote()) == "pong"
