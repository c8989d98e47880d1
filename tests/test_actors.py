"""Actors: definition and options, resources, execution order and concurrency, handles, failures and restarts.

Named actors, namespaces and detached lifetimes are in ``test_actor_lifetimes.py``;
``ActorPool`` and ``Queue`` in ``test_actor_utils.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import psutil
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition, wait_for_file
from ember.exceptions import ActorDiedError, RayActorError, RayTaskError


# ============================================================================ helpers
def pid_gone(pid: int) -> bool:
    """The process has exited (a zombie that is not reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sigkill(pid: int) -> None:
    """SIGKILL an actor's worker by pid and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    wait_for_condition(lambda: pid_gone(pid), timeout=10)


def available(name: str) -> float:
    return ember.available_resources().get(name, 0.0)


@ember.remote
class Counter:
    def __init__(self, start=0, step=1):
        self.value = start
        self.step = step

    def incr(self, by=None):
        self.value += self.step if by is None else by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()

    def fail(self, message):
        raise KeyError(message)


@ember.remote
class Recorder:
    """Remembers how often ``__init__`` ran (in a file) and with which arguments; calls can block."""

    def __init__(self, init_log, value):
        self.value = value
        with open(init_log, "a") as f:
            f.write(f"{os.getpid()} {value}\n")

    def pid(self):
        return os.getpid()

    def get_value(self):
        return self.value

    def wait_for(self, gate):
        wait_for_file(gate, timeout=60)
        return os.getpid()

    def block(self, path):
        """Report this attempt in ``path.<n>``, then sleep on the first attempt only (the test kills it)."""
        attempt = 0
        while os.path.exists(f"{path}.{attempt}"):
            attempt += 1
        with open(f"{path}.{attempt}", "w") as f:
            f.write(str(os.getpid()))
        if attempt == 0:
            time.sleep(60)  # the test SIGKILLs the process while this call runs
        return (attempt, os.getpid())


# ============================================================================ definition and options
def test_instantiating_an_actor_class_directly_raises_type_error():
    with pytest.raises(TypeError, match=r"Counter\.remote\(\)"):
        Counter()


def test_calling_an_actor_method_directly_raises_type_error(ember_shared):
    c = Counter.remote()
    with pytest.raises(TypeError, match=r"incr\.remote\(\)"):
        c.incr()
    with pytest.raises(AttributeError, match="no_such_method"):
        c.no_such_method.remote()
    ember.kill(c)


def test_constructor_args_values_kwargs_and_object_refs(ember_shared):
    @ember.remote
    class Holder:
        def __init__(self, a, b, *, c=0, d=None):
            self.args = (a, b, c, d)

        def get(self):
            return self.args

        def nested(self):
            # A ref nested in a container stays a ref (as in Ray); it can be fetched in the actor.
            return [ember.get(r) for r in self.args[3]]

    ref_a = ember.put(41)
    ref_c = ember.put({"x": [1, 2]})
    ref_nested = ember.put("inside")
    h = Holder.remote(ref_a, "plain", c=ref_c, d=[ref_nested])
    a, b, c, d = ember.get(h.get.remote())
    assert (a, b, c) == (41, "plain", {"x": [1, 2]})
    assert isinstance(d[0], ember.ObjectRef)
    assert ember.get(h.nested.remote()) == ["inside"]

    # A ref returned by a task is also resolved before __init__ runs.
    @ember.remote
    def make():
        return "from a task"

    h2 = Holder.remote(make.remote(), 2)
    assert ember.get(h2.get.remote())[:2] == ("from a task", 2)

    # Method arguments: refs arrive as values too.
    c2 = Counter.remote(ember.put(10), step=ember.put(5))
    assert ember.get(c2.incr.remote()) == 15
    assert ember.get(c2.incr.remote(ember.put(100))) == 115
    for handle in (h, h2, c2):
        ember.kill(handle)


@pytest.mark.parametrize(
    "options, exc_type, option_name",
    [
        ({"num_cpus": -1}, ValueError, "num_cpus"),
        ({"num_cpus": "one"}, ValueError, "num_cpus"),
        ({"num_gpus": -0.5}, ValueError, "num_gpus"),
        ({"memory": -1}, ValueError, "memory"),
        ({"resources": {"disk": -1}}, ValueError, "disk"),
        ({"resources": {"CPU": 1}}, ValueError, "num_cpus"),
        ({"resources": ["disk"]}, TypeError, "resources"),
        ({"max_restarts": -2}, ValueError, "max_restarts"),
        ({"max_restarts": 1.5}, ValueError, "max_restarts"),
        ({"max_task_retries": -2}, ValueError, "max_task_retries"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"concurrency_groups": {"io": 0}}, ValueError, "concurrency_groups"),
        ({"concurrency_groups": ["io"]}, ValueError, "concurrency_groups"),
        ({"lifetime": "forever"}, ValueError, "lifetime"),
        ({"name": 5}, TypeError, "name"),
        ({"name": ""}, TypeError, "name"),
        ({"namespace": 5}, TypeError, "namespace"),
        ({"get_if_exists": "yes"}, TypeError, "get_if_exists"),
        ({"get_if_exists": True}, ValueError, "get_if_exists"),
        ({"num_returns": 2}, ValueError, "num_returns"),
        ({"not_an_option": 1}, ValueError, "not_an_option"),
    ],
)
def test_invalid_actor_options_raise_naming_the_option(options, exc_type, option_name):
    with pytest.raises(exc_type, match=option_name):
        Counter.options(**options)
    with pytest.raises(exc_type, match=option_name):
        ember.remote(**options)(type("Fresh", (), {}))


def test_concurrency_group_of_a_method_must_be_defined(ember_shared):
    @ember.remote
    class Grouped:
        @ember.method(concurrency_group="io")
        def read(self):
            return 1

    with pytest.raises(ValueError, match="io"):
        Grouped.remote()


def test_method_decorator_rejects_bad_use():
    with pytest.raises(ValueError, match="num_returns"):
        ember.method(bad=1)
    with pytest.raises(ValueError):
        ember.method(lambda self: None)


def test_all_options_together(ember_start):
    ember_start(num_cpus=2, num_gpus=1, resources={"disk": 4})

    @ember.remote
    class Worker:
        def __init__(self):
            self.pid = os.getpid()

        def info(self):
            return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")

        @ember.method(concurrency_group="io")
        def io(self):
            return "io"

    a = Worker.options(
        name="everything", namespace="opts", lifetime="detached", get_if_exists=True,
        num_cpus=1, num_gpus=1, memory=100 * 1024 * 1024, resources={"disk": 2},
        max_restarts=2, max_task_retries=1, max_concurrency=3, concurrency_groups={"io": 2},
    ).remote()
    assert ember.get(a.__ray_ready__.remote()) is True
    assert ember.get(a.io.remote()) == "io"
    # get_if_exists: the same actor again, not a second one.
    b = Worker.options(
        name="everything", namespace="opts", get_if_exists=True, concurrency_groups={"io": 1}
    ).remote()
    assert ember.get(b.info.remote())[0] == ember.get(a.info.remote())[0]
    assert ember.get_actor("everything", namespace="opts") == a

    total_memory = ember.cluster_resources()["memory"]
    wait_for_condition(
        lambda: available("CPU") == 1.0 and available("GPU") == 0.0 and available("disk") == 2.0
        and abs(available("memory") - (total_memory - 100 * 1024 * 1024)) < 1.0,
        timeout=10,
    )
    ember.kill(a)
    wait_for_condition(
        lambda: available("CPU") == 2.0 and available("GPU") == 1.0 and available("disk") == 4.0
        and available("memory") == total_memory,
        timeout=10,
    )


def test_default_actor_holds_no_cpu_while_alive(ember_local):
    wait_for_condition(lambda: available("CPU") == 2.0, timeout=10)
    actors = [Counter.remote() for _ in range(4)]  # more actors than CPUs: they hold none
    assert ember.get([a.incr.remote() for a in actors]) == [1, 1, 1, 1]
    wait_for_condition(lambda: available("CPU") == 2.0, timeout=10)

    # With num_cpus given, the actor holds it for its whole life.
    big = Counter.options(num_cpus=2).remote()
    assert ember.get(big.incr.remote()) == 1
    wait_for_condition(lambda: available("CPU") == 0.0, timeout=10)
    ember.kill(big)
    wait_for_condition(lambda: available("CPU") == 2.0, timeout=10)
    # Fractional amounts, and the class default stays unchanged by options().
    half = Counter.options(num_cpus=0.5).remote()
    assert ember.get(half.incr.remote()) == 1
    wait_for_condition(lambda: available("CPU") == 1.5, timeout=10)
    ember.kill(half)
    assert Counter._default_options["num_cpus"] is None
    wait_for_condition(lambda: available("CPU") == 2.0, timeout=10)
    for a in actors:
        ember.kill(a)


def test_default_actor_needs_one_cpu_to_be_placed(ember_start):
    ember_start(num_cpus=0)
    pending = Counter.remote()
    ready, _ = ember.wait([pending.__ray_ready__.remote()], timeout=1.0)
    assert ready == []  # no node has a CPU to place it on
    zero = Counter.options(num_cpus=0).remote()
    assert ember.get(zero.incr.remote()) == 1
    ember.kill(pending)
    ember.kill(zero)


def test_method_num_returns_and_method_options(ember_shared):
    @ember.remote
    class Splitter:
        @ember.method(num_returns=2)
        def split(self, x):
            return x, -x

        def pair(self):
            return 1, 2

        @ember.method(num_returns=0)
        def nothing(self):
            return None

    s = Splitter.remote()
    pos, neg = s.split.remote(3)
    assert isinstance(pos, ember.ObjectRef) and isinstance(neg, ember.ObjectRef)
    assert ember.get([pos, neg]) == [3, -3]
    assert ember.get(s.pair.remote()) == (1, 2)
    one, two = s.pair.options(num_returns=2).remote()
    assert ember.get([one, two]) == [1, 2]
    assert s.nothing.remote() is None
    with pytest.raises(ValueError, match="not_a_method_option"):
        s.pair.options(not_a_method_option=1)
    with pytest.raises(RayTaskError, match="num_returns=3"):
        ember.get(s.pair.options(num_returns=3).remote()[0])
    ember.kill(s)


def test_ray_ready(ember_shared):
    c = Counter.remote(5)
    assert ember.get(c.__ray_ready__.remote(), timeout=30) is True
    assert ember.get(c.get.remote()) == 5
    ember.kill(c)


def test_method_exception_is_raised_and_actor_keeps_working(ember_shared):
    c = Counter.remote()
    with pytest.raises(KeyError) as info:
        ember.get(c.fail.remote("boom"))
    assert isinstance(info.value, RayTaskError)
    assert "boom" in str(info.value) and "Counter.fail" in str(info.value)
    assert ember.get(c.incr.remote()) == 1
    ember.kill(c)


# ============================================================================ execution
def test_ten_thousand_calls_arrive_in_submission_order(ember_shared):
    @ember.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, i):
            self.items.append(i)

        def items_(self):
            return self.items

    log = Log.remote()
    refs = [log.add.remote(i) for i in range(10_000)]
    ember.get(refs, timeout=120)
    assert ember.get(log.items_.remote()) == list(range(10_000))
    ember.kill(log)


def test_each_caller_keeps_its_order_with_several_callers(ember_shared):
    @ember.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, caller, i):
            self.items.append((caller, i))

        def items_(self):
            return self.items

    @ember.remote
    def caller(log, name, n):
        ember.get([log.add.remote(name, i) for i in range(n)])
        return name

    log = Log.remote()
    tasks = [caller.remote(log, name, 1000) for name in ("a", "b")]
    driver_refs = [log.add.remote("driver", i) for i in range(1000)]
    ember.get(tasks + driver_refs, timeout=120)
    items = ember.get(log.items_.remote())
    assert len(items) == 3000
    for name in ("a", "b", "driver"):
        assert [i for c, i in items if c == name] == list(range(1000))
    ember.kill(log)


def test_calls_with_pending_ref_arguments_keep_order(ember_shared):
    @ember.remote
    def slow_value(path, v):
        wait_for_file(path, timeout=30)
        return v

    @ember.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, i):
            self.items.append(i)

        def items_(self):
            return self.items

    import tempfile

    gate = os.path.join(tempfile.mkdtemp(dir=os.environ["EMBER_TMPDIR"]), "gate")
    log = Log.remote()
    refs = [log.add.remote(0), log.add.remote(slow_value.remote(gate, 1)), log.add.remote(2)]
    with open(gate, "w") as f:
        f.write("go")
    ember.get(refs, timeout=60)
    assert ember.get(log.items_.remote()) == [0, 1, 2]
    ember.kill(log)


def test_sync_actor_runs_one_call_at_a_time(ember_shared):
    @ember.remote
    class Serial:
        def __init__(self):
            self.running = 0
            self.max_running = 0

        def work(self):
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            time.sleep(0.005)  # work, so overlapping calls would be seen
            self.running -= 1

        def peak(self):
            return self.max_running

    s = Serial.remote()
    ember.get([s.work.remote() for _ in range(20)])
    assert ember.get(s.peak.remote()) == 1
    ember.kill(s)


@ember.remote
class AsyncGauge:
    """Each call waits (up to 20 s) until ``target`` calls run at once, so the peak is deterministic."""

    def __init__(self, target):
        self.target = target
        self.running = 0
        self.max_running = 0

    async def work(self, seconds):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        deadline = time.monotonic() + 20
        while self.max_running < self.target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(seconds)
        self.running -= 1
        return self.running

    async def peak(self):
        return self.max_running


def test_async_actor_runs_calls_concurrently(ember_shared):
    gauge = AsyncGauge.remote(50)
    ember.get([gauge.work.remote(0.2) for _ in range(50)], timeout=60)
    assert ember.get(gauge.peak.remote()) == 50
    ember.kill(gauge)


def test_async_actor_max_concurrency_limits_calls(ember_shared):
    gauge = AsyncGauge.options(max_concurrency=4).remote(4)
    ember.get([gauge.work.remote(0.05) for _ in range(16)], timeout=60)
    assert ember.get(gauge.peak.remote()) == 4
    ember.kill(gauge)


@ember.remote
class ThreadGauge:
    """Per-group counters; each call waits (up to 20 s) until its group's ``target`` calls run at once."""

    def __init__(self, targets):
        self.targets = targets
        self.cond = threading.Condition()
        self.running = {}
        self.peaks = {}
        self.threads = set()

    def _work(self, group):
        with self.cond:
            self.threads.add(threading.get_ident())
            self.running[group] = self.running.get(group, 0) + 1
            self.peaks[group] = max(self.peaks.get(group, 0), self.running[group])
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.peaks[group] >= self.targets[group], timeout=20)
        time.sleep(0.02)  # stay inside the call a little, so a too-large group would show
        with self.cond:
            self.running[group] -= 1
        return group

    def work(self, label="default"):
        return self._work(label)

    @ember.method(concurrency_group="io")
    def io(self):
        return self._work("io")

    @ember.method(concurrency_group="compute")
    def compute(self):
        return self._work("compute")

    def peaks_(self):
        return self.peaks

    def num_threads(self):
        return len(self.threads)


def test_threaded_actor_runs_up_to_max_concurrency_calls_at_once(ember_shared):
    gauge = ThreadGauge.options(max_concurrency=4, concurrency_groups={"io": 1, "compute": 1}).remote(
        {"default": 4}
    )
    ember.get([gauge.work.remote() for _ in range(16)], timeout=60)
    assert ember.get(gauge.peaks_.remote()) == {"default": 4}
    assert ember.get(gauge.num_threads.remote()) >= 4  # calls ran on several threads
    ember.kill(gauge)


def test_concurrency_groups_limit_each_group_separately(ember_shared):
    gauge = ThreadGauge.options(concurrency_groups={"io": 3, "compute": 2}).remote(
        {"default": 1, "io": 3, "compute": 2}
    )
    refs = []
    for _ in range(6):
        refs += [gauge.io.remote(), gauge.compute.remote(), gauge.work.remote()]
    # A call can be put in a group per call, too.
    refs += [gauge.work.options(concurrency_group="io").remote("io") for _ in range(3)]
    ember.get(refs, timeout=60)
    assert ember.get(gauge.peaks_.remote()) == {"io": 3, "compute": 2, "default": 1}
    ember.kill(gauge)


def test_a_busy_group_does_not_block_another(ember_shared):
    @ember.remote(concurrency_groups={"blocked": 1, "free": 1})
    class Gate:
        def __init__(self):
            self.event = threading.Event()

        @ember.method(concurrency_group="blocked")
        def wait(self):
            return self.event.wait(30)

        @ember.method(concurrency_group="free")
        def open(self):
            self.event.set()
            return "opened"

    g = Gate.remote()
    waiting = g.wait.remote()
    assert ember.get(g.open.remote(), timeout=30) == "opened"
    assert ember.get(waiting, timeout=30) is True
    ember.kill(g)


def test_async_actor_concurrency_groups(ember_shared):
    @ember.remote(concurrency_groups={"io": 2})
    class AsyncGroups:
        def __init__(self):
            self.running = {"io": 0, "default": 0}
            self.peaks = {"io": 0, "default": 0}

        async def _work(self, group, target):
            self.running[group] += 1
            self.peaks[group] = max(self.peaks[group], self.running[group])
            deadline = time.monotonic() + 20
            while self.peaks[group] < target and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.02)
            self.running[group] -= 1

        @ember.method(concurrency_group="io")
        async def io(self):
            await self._work("io", 2)

        async def other(self):
            await self._work("default", 10)

        async def peaks_(self):
            return self.peaks

    a = AsyncGroups.remote()
    ember.get([a.io.remote() for _ in range(8)] + [a.other.remote() for _ in range(10)], timeout=60)
    assert ember.get(a.peaks_.remote()) == {"io": 2, "default": 10}
    ember.kill(a)


def test_handles_passed_to_tasks_and_actors(ember_shared):
    counter = Counter.remote()

    @ember.remote
    def bump(handle, times):
        return ember.get([handle.incr.remote() for _ in range(times)])[-1]

    @ember.remote
    class Forwarder:
        def __init__(self, target):
            self.target = target

        def forward(self, n):
            return ember.get([self.target.incr.remote() for _ in range(n)])[-1]

        def via_arg(self, handles):
            return ember.get(handles[0].get.remote())

    assert ember.get(bump.remote(counter, 5)) == 5
    fwd = Forwarder.remote(counter)
    assert ember.get(fwd.forward.remote(3)) == 8
    assert ember.get(fwd.via_arg.remote([counter])) == 8  # handle nested in a list
    assert ember.get(counter.get.remote()) == 8
    ember.kill(fwd)
    ember.kill(counter)


def test_actor_can_create_actors_and_submit_tasks(ember_shared):
    @ember.remote
    def square(x):
        return x * x

    @ember.remote
    class Parent:
        def __init__(self):
            self.child = Counter.remote(100)

        def run(self):
            return ember.get(square.remote(7)) + ember.get(self.child.incr.remote())

    p = Parent.remote()
    assert ember.get(p.run.remote(), timeout=60) == 49 + 101
    ember.kill(p)


def test_anonymous_actor_is_destroyed_when_its_handles_are_gone(ember_shared):
    c = Counter.remote()
    pid = ember.get(c.pid.remote())
    copy = c
    del c
    assert ember.get(copy.incr.remote()) == 1  # one handle is still alive
    del copy
    wait_for_condition(lambda: pid_gone(pid), timeout=20)


def test_pending_calls_keep_an_unreferenced_actor_alive(ember_shared, files):
    # The common idiom: the handle is gone before the call runs.
    assert ember.get([Counter.remote(i).incr.remote() for i in range(3)], timeout=60) == [1, 2, 3]
    # The actor lives until its last pending call is done, then it is destroyed.
    a = Recorder.remote(str(files / "init.log"), 0)
    actor_id = a._actor_id
    gate = str(files / "gate")
    ref = a.wait_for.remote(gate)
    counter = runtime.core_worker().reference_counter
    del a
    # Once the handle's release is processed, only the pending call holds the actor ...
    wait_for_condition(lambda: counter.snapshot().get(actor_id, (1,))[0] == 0, timeout=10)
    ember.nodes()  # a round trip to the control service, after any kill the release could have sent
    with open(gate, "w") as f:
        f.write("go")
    pid = ember.get(ref, timeout=30)  # ... and the call completes
    wait_for_condition(lambda: pid_gone(pid), timeout=20)  # then the actor is destroyed


def test_unreferenced_actor_is_destroyed_after_its_last_call(ember_shared):
    c = Counter.remote()
    pid_ref = c.pid.remote()
    del c
    pid = ember.get(pid_ref, timeout=30)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)


def test_an_actor_kept_by_a_live_handle_is_not_destroyed(ember_shared):
    c = Counter.remote()
    pid = ember.get(c.pid.remote())
    refs = [c.incr.remote() for _ in range(3)]
    ember.get(refs)
    del refs
    assert not pid_gone(pid)
    assert ember.get(c.get.remote()) == 3
    ember.kill(c)


@ember.remote
class HandleHolder:
    """Keeps actor handles it is given (in a list, so they are nested in the argument)."""

    def __init__(self):
        self.held = []

    def keep(self, handles):
        self.held.extend(handles)
        return len(self.held)

    def drop(self):
        self.held.clear()
        return True

    def call_held(self):
        return ember.get([h.incr.remote() for h in self.held])


@ember.remote
def use_handles(handles):
    return ember.get([h.incr.remote() for h in handles])


@ember.remote
def make_counter():
    # Created inside a task: owned by this worker; the caller borrows the returned handle.
    c = Counter.remote(100)
    ember.get(c.incr.remote())
    return [c]


def test_handle_borrowed_by_another_actor_keeps_the_actor_alive_until_released(ember_shared):
    c = Counter.remote()
    pid = ember.get(c.pid.remote())
    holder = HandleHolder.remote()
    assert ember.get(holder.keep.remote([c])) == 1
    del c  # the creator's handle is gone: the holder's copy still counts
    assert ember.get(holder.call_held.remote(), timeout=30) == [1]
    assert ember.get(holder.call_held.remote(), timeout=30) == [2]
    assert not pid_gone(pid)
    assert ember.get(holder.drop.remote()) is True  # the last copy goes: the actor is destroyed
    wait_for_condition(lambda: pid_gone(pid), timeout=20)
    ember.kill(holder)


def test_handle_passed_to_a_finished_task_does_not_keep_the_actor_forever(ember_shared):
    c = Counter.remote()
    pid = ember.get(c.pid.remote())
    assert ember.get(use_handles.remote([c]), timeout=30) == [1]
    del c  # no copy is left anywhere: destroyed, not kept until the driver exits
    wait_for_condition(lambda: pid_gone(pid), timeout=20)


def test_handle_returned_by_the_task_that_created_the_actor_is_borrowed_by_the_caller(ember_shared):
    [c] = ember.get(make_counter.remote(), timeout=60)
    pid = ember.get(c.pid.remote())
    assert ember.get(c.incr.remote(), timeout=30) == 102  # alive after its creating task ended
    del c
    wait_for_condition(lambda: pid_gone(pid), timeout=20)


# ============================================================================ kill / exit
def test_kill_fails_later_calls_saying_it_was_killed(ember_shared):
    c = Counter.remote()
    pid = ember.get(c.pid.remote())
    ember.kill(c)
    with pytest.raises(ActorDiedError, match="killed") as info:
        ember.get(c.incr.remote(), timeout=30)
    assert isinstance(info.value, RayActorError)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)
    # A call on a dead actor fails at once.
    ready, _ = ember.wait([c.incr.remote()], timeout=5)
    assert len(ready) == 1
    with pytest.raises(ActorDiedError, match="killed"):
        ember.get(ready[0])


def test_kill_is_not_restarted_even_with_max_restarts(ember_shared):
    c = Counter.options(max_restarts=3).remote()
    pid = ember.get(c.pid.remote())
    ember.kill(c)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)
    with pytest.raises(ActorDiedError, match="killed"):
        ember.get(c.pid.remote(), timeout=30)


def test_kill_with_no_restart_false_restarts(ember_shared):
    c = Counter.options(max_restarts=1).remote()
    pid = ember.get(c.pid.remote())
    ember.kill(c, no_restart=False)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)
    new_pid = wait_for_condition(lambda: ember.get(c.pid.remote(), timeout=30), timeout=30)
    assert new_pid != pid
    ember.kill(c)


def test_kill_rejects_non_handles(ember_shared):
    with pytest.raises(ValueError, match="actor handle"):
        ember.kill("not an actor")


def test_exit_actor_ends_it_without_restart(ember_shared):
    @ember.remote(max_restarts=2)
    class Quitter:
        def pid(self):
            return os.getpid()

        def quit(self):
            ember.actor.exit_actor()

    q = Quitter.remote()
    pid = ember.get(q.pid.remote())
    with pytest.raises(ActorDiedError, match="exit_actor") as info:
        ember.get(q.quit.remote(), timeout=30)
    assert isinstance(info.value, RayActorError)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ember.get(q.pid.remote(), timeout=30)


def test_exit_actor_in_async_actor(ember_shared):
    @ember.remote
    class AsyncQuitter:
        async def pid(self):
            return os.getpid()

        async def quit(self):
            ember.actor.exit_actor()

    q = AsyncQuitter.remote()
    pid = ember.get(q.pid.remote())
    with pytest.raises(ActorDiedError):
        ember.get(q.quit.remote(), timeout=30)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)


def test_exit_actor_outside_an_actor_raises():
    with pytest.raises(TypeError, match="inside an actor"):
        ember.actor.exit_actor()


# ============================================================================ failures
def test_exception_in_init_is_raised_from_every_call(ember_shared):
    @ember.remote
    class Broken:
        def __init__(self, divisor):
            self.x = 1 / divisor

        def get(self):
            return self.x

    b = Broken.remote(0)
    for call in (b.get.remote(), b.get.remote(), b.__ray_ready__.remote()):
        with pytest.raises(ActorDiedError) as info:
            ember.get(call, timeout=30)
        message = str(info.value)
        assert "__init__" in message
        assert "ZeroDivisionError" in message
        assert "self.x = 1 / divisor" in message  # the original traceback's source line


@pytest.fixture
def files(tmp_path):
    return tmp_path


def _start_blocking_call(actor, files):
    """Start ``block`` and wait until it runs; return (ref, pid of the process running it)."""
    path = str(files / "call")
    ref = actor.block.remote(path)
    pid = int(wait_for_file(f"{path}.0", timeout=30))
    return ref, pid, path


def test_sigkill_without_restarts(ember_shared, files):
    a = Recorder.remote(str(files / "init.log"), "v")
    assert ember.get(a.pid.remote()) > 0
    ref, pid, _ = _start_blocking_call(a, files)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RayActorError):
        ember.get(ref, timeout=30)
    with pytest.raises(ActorDiedError) as info:
        ember.get(a.pid.remote(), timeout=30)
    message = str(info.value)
    assert str(pid) in message and "signal 9" in message
    wait_for_condition(lambda: pid_gone(pid), timeout=20)
    # Every later call fails at once.
    ready, _ = ember.wait([a.get_value.remote()], timeout=5)
    with pytest.raises(ActorDiedError):
        ember.get(ready[0])


def test_sigkill_restart_without_task_retries(ember_shared, files):
    init_log = str(files / "init.log")
    a = Recorder.options(max_restarts=1, max_task_retries=0).remote(init_log, ember.put("original"))
    ref, pid, path = _start_blocking_call(a, files)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RayActorError) as info:
        ember.get(ref, timeout=30)
    assert not isinstance(info.value, ActorDiedError)  # the actor itself lives on
    assert not os.path.exists(f"{path}.1")  # the call was not run again
    new_pid = ember.get(a.pid.remote(), timeout=30)
    assert new_pid != pid
    assert ember.get(a.get_value.remote()) == "original"
    with open(init_log) as f:
        runs = f.read().split()
    assert runs == [str(pid), "original", str(new_pid), "original"]  # __init__ ran again, same args


def test_sigkill_restart_with_task_retries(ember_shared, files):
    a = Recorder.options(max_restarts=1, max_task_retries=1).remote(str(files / "init.log"), 1)
    ref, pid, path = _start_blocking_call(a, files)
    os.kill(pid, signal.SIGKILL)
    attempt, new_pid = ember.get(ref, timeout=30)  # retried on the new incarnation
    assert attempt == 1 and new_pid != pid
    assert int(wait_for_file(f"{path}.1")) == new_pid
    assert ember.get(a.pid.remote()) == new_pid
    ember.kill(a)


def test_infinite_restarts(ember_shared, files):
    init_log = str(files / "init.log")
    a = Recorder.options(max_restarts=-1).remote(init_log, "x")
    pids = [ember.get(a.pid.remote(), timeout=30)]
    for _ in range(3):
        sigkill(pids[-1])
        # Calls sent before the caller notices the death may fail; wait for the new incarnation.
        new_pid = wait_for_condition(
            lambda: (lambda p: p if p != pids[-1] else None)(ember.get(a.pid.remote(), timeout=30)),
            timeout=30,
        )
        pids.append(new_pid)
    assert len(set(pids)) == 4
    with open(init_log) as f:
        assert len(f.read().splitlines()) == 4
    ember.kill(a)


def test_exhausted_restarts_leave_the_actor_dead_for_good(ember_shared, files):
    a = Recorder.options(max_restarts=1).remote(str(files / "init.log"), 0)
    first = ember.get(a.pid.remote(), timeout=30)
    sigkill(first)
    second = wait_for_condition(
        lambda: (lambda p: p if p != first else None)(ember.get(a.pid.remote(), timeout=30)), timeout=30
    )
    sigkill(second)

    def dead_message():
        try:
            ember.get(a.pid.remote(), timeout=30)
        except ActorDiedError as exc:
            return str(exc)
        except RayActorError:
            return None
        return None

    message = wait_for_condition(dead_message, timeout=30)
    assert "restarts" in message and "max_restarts" in message
    assert str(second) in message
    ready, _ = ember.wait([a.pid.remote()], timeout=5)
    with pytest.raises(ActorDiedError, match="max_restarts"):
        ember.get(ready[0])


def test_calls_queued_behind_a_crash_are_failed_or_retried(ember_shared, files):
    """Calls already sent when the process dies follow the same rule as the running one."""
    a = Recorder.options(max_restarts=1, max_task_retries=1).remote(str(files / "init.log"), "q")
    ref, pid, _ = _start_blocking_call(a, files)
    behind = [a.get_value.remote() for _ in range(5)]
    os.kill(pid, signal.SIGKILL)
    assert ember.get(behind, timeout=30) == ["q"] * 5
    assert ember.get(ref, timeout=30)[0] == 1
    ember.kill(a)


# ============================================================================ more behaviour
def test_large_arguments_and_returns(ember_shared):
    import numpy as np

    @ember.remote
    class Big:
        def __init__(self, array):
            self.array = array

        def total(self, other):
            return float(self.array.sum() + other.sum())

        def make(self, n):
            return np.ones(n, dtype=np.uint8)

    base = np.ones(1_000_000, dtype=np.uint8)  # well over the inline limit: goes through the object store
    b = Big.remote(base)
    assert ember.get(b.total.remote(base)) == 2_000_000.0
    assert ember.get(b.total.remote(ember.put(base))) == 2_000_000.0
    out = ember.get(b.make.remote(2_000_000))
    assert out.shape == (2_000_000,) and int(out.sum()) == 2_000_000
    ember.kill(b)


def test_many_actors_on_two_cpus(ember_shared):
    actors = [Counter.remote(i) for i in range(8)]
    assert ember.get([a.get.remote() for a in actors], timeout=60) == list(range(8))
    assert len(set(ember.get([a.pid.remote() for a in actors]))) == 8  # one process each
    for a in actors:
        ember.kill(a)


def test_ray_terminate_ends_the_actor(ember_shared):
    c = Counter.options(max_restarts=1).remote()
    pid = ember.get(c.pid.remote())
    with pytest.raises(RayActorError):
        ember.get(c.__ray_terminate__.remote(), timeout=30)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)
    with pytest.raises(ActorDiedError):
        ember.get(c.get.remote(), timeout=30)


def test_kill_during_a_call_fails_that_call(ember_shared, files):
    a = Recorder.options(max_task_retries=-1).remote(str(files / "init.log"), 0)
    ref, pid, _ = _start_blocking_call(a, files)
    ember.kill(a)
    with pytest.raises(ActorDiedError, match="killed"):
        ember.get(ref, timeout=30)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)


def test_async_and_threaded_methods_raise_like_sync_ones(ember_shared):
    @ember.remote
    class AsyncFails:
        async def fail(self):
            raise ValueError("async boom")

        async def ok(self):
            return "ok"

    @ember.remote(max_concurrency=2)
    class ThreadFails:
        def fail(self):
            raise ValueError("thread boom")

        def ok(self):
            return "ok"

    for cls, text in ((AsyncFails, "async boom"), (ThreadFails, "thread boom")):
        h = cls.remote()
        with pytest.raises(ValueError, match=text):
            ember.get(h.fail.remote(), timeout=30)
        assert ember.get(h.ok.remote(), timeout=30) == "ok"
        ember.kill(h)


def test_exit_actor_in_threaded_actor(ember_shared):
    @ember.remote(max_concurrency=3)
    class ThreadQuitter:
        def pid(self):
            return os.getpid()

        def quit(self):
            ember.actor.exit_actor()

    q = ThreadQuitter.remote()
    pid = ember.get(q.pid.remote())
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ember.get(q.quit.remote(), timeout=30)
    wait_for_condition(lambda: pid_gone(pid), timeout=20)


def test_runtime_context_inside_an_actor(ember_shared):
    @ember.remote
    class Who:
        def actor_id(self):
            return ember.get_runtime_context().get_actor_id()

    w = Who.remote()
    actor_id = ember.get(w.actor_id.remote())
    assert actor_id == w._ray_actor_id.hex()
    ember.kill(w)


def test_a_named_actor_is_destroyed_with_its_creators_handles_as_in_ray(ember_shared):
    # Ray 2.60 does the same: a handle looked up by name does not keep the actor alive.
    c = Counter.options(name="gone_with_handles", namespace="lifetime").remote(3)
    pid = ember.get(c.pid.remote())
    again = ember.get_actor("gone_with_handles", namespace="lifetime")
    assert ember.get(again.incr.remote()) == 4
    del c
    wait_for_condition(lambda: pid_gone(pid), timeout=20)
    with pytest.raises(ActorDiedError, match="all references to it were deleted"):
        ember.get(again.incr.remote(), timeout=30)
    wait_for_condition(lambda: _name_is_free("gone_with_handles", "lifetime"), timeout=20)


def _name_is_free(name, namespace):
    try:
        ember.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


def test_a_detached_named_actor_survives_its_handles(ember_shared):
    c = Counter.options(name="kept_by_name", namespace="survive", lifetime="detached").remote(3)
    pid = ember.get(c.pid.remote())
    del c
    again = ember.get_actor("kept_by_name", namespace="survive")
    assert ember.get(again.incr.remote()) == 4
    assert ember.get(again.pid.remote()) == pid
    ember.kill(again)


def test_async_actor_calls_from_one_caller_start_in_order(ember_shared):
    @ember.remote
    class AsyncLog:
        def __init__(self):
            self.items = []

        async def add(self, i):
            self.items.append(i)  # before the first await: records the start order

        async def items_(self):
            return self.items

    log = AsyncLog.remote()
    ember.get([log.add.remote(i) for i in range(1000)], timeout=60)
    assert ember.get(log.items_.remote()) == list(range(1000))
    ember.kill(log)


def test_restart_reuses_large_constructor_arguments(ember_shared):
    import numpy as np

    @ember.remote(max_restarts=1)
    class Holder:
        def __init__(self, array, small):
            self.total = int(array.sum()) + small

        def info(self):
            return os.getpid(), self.total

    h = Holder.remote(np.ones(500_000, dtype=np.uint8), ember.put(7))
    pid, total = ember.get(h.info.remote(), timeout=30)
    assert total == 500_007
    sigkill(pid)
    new_pid, new_total = wait_for_condition(
        lambda: (lambda r: r if r[0] != pid else None)(ember.get(h.info.remote(), timeout=30)), timeout=30
    )
    assert new_total == 500_007 and new_pid != pid
    ember.kill(h)


def test_calls_sent_while_restarting_run_in_order_on_the_new_incarnation(ember_shared):
    @ember.remote(max_restarts=1, max_task_retries=-1)
    class Log:
        def __init__(self):
            self.items = []

        def add(self, i):
            self.items.append(i)

        def state(self):
            return os.getpid(), self.items

    log = Log.remote()
    pid, _ = ember.get(log.state.remote())
    sigkill(pid)
    refs = [log.add.remote(i) for i in range(200)]  # the caller may not know about the death yet
    ember.get(refs, timeout=60)
    new_pid, items = ember.get(log.state.remote())
    assert new_pid != pid
    assert items == list(range(200))


def test_init_failing_on_a_failed_argument(ember_shared):
    @ember.remote
    def broken():
        raise OSError("no such thing")

    b = Counter.remote(broken.remote())
    with pytest.raises(ActorDiedError, match="no such thing"):
        ember.get(b.get.remote(), timeout=30)


def test_killed_pending_actor_fails_its_calls(ember_start):
    ember_start(num_cpus=0)
    pending = Counter.remote()
    call = pending.incr.remote()
    ember.kill(pending)
    with pytest.raises(ActorDiedError, match="killed"):
        ember.get(call, timeout=30)


def test_killing_actors_waiting_for_a_worker_returns_their_resources(ember_shared):
    @ember.remote(num_cpus=1)
    class Whole:
        def ping(self):
            return 1

    for _ in range(3):
        # Two fit the two CPUs; the third waits for a lease when it is killed.
        actors = [Whole.remote() for _ in range(3)]
        assert ember.get(actors[0].ping.remote(), timeout=30) == 1
        for actor in actors:
            ember.kill(actor)
        wait_for_condition(lambda: ember.available_resources().get("CPU") == 2.0, timeout=20)


def test_actors_owned_by_an_actor_die_with_it(ember_shared):
    @ember.remote
    class Parent:
        def __init__(self):
            self.child = Counter.remote()

        def child_pid(self):
            return ember.get(self.child.pid.remote())

    p = Parent.remote()
    child_pid = ember.get(p.child_pid.remote(), timeout=30)
    ember.kill(p)
    wait_for_condition(lambda: pid_gone(child_pid), timeout=20)


def test_handle_to_a_dead_actor_used_in_a_task(ember_shared):
    c = Counter.remote()
    ember.get(c.incr.remote())
    ember.kill(c)

    @ember.remote
    def call(handle):
        try:
            ember.get(handle.incr.remote(), timeout=30)
        except ActorDiedError as exc:
            return "died: " + str(exc)
        return "ran"

    assert ember.get(call.remote(c), timeout=60).startswith("died")
