"""``ember.util.ActorPool`` and ``ember.util.queue.Queue``."""

from __future__ import annotations

import asyncio
import os

import pytest

import ember
from ember._private.test_utils import wait_for_condition, wait_for_file
from ember.util.actor_pool import ActorPool
from ember.util.queue import Empty, Full, Queue


@ember.remote
class Doubler:
    def double(self, x):
        return 2 * x

    def gated(self, value, gate, mark=None):
        """Return ``value`` once the file(s) ``gate`` exist (at once when None); first write ``mark``."""
        if mark is not None:
            _open(mark)
        for path in [gate] if isinstance(gate, str) else gate or []:
            wait_for_file(path, timeout=60)
        return value

    def pid(self):
        return os.getpid()


def _open(gate: str) -> None:
    with open(gate, "w") as f:
        f.write("go")


@pytest.fixture
def pool_actors(ember_shared):
    actors = [Doubler.remote() for _ in range(3)]
    ember.get([a.__ray_ready__.remote() for a in actors])
    yield actors
    for a in actors:
        ember.kill(a)


# ============================================================================ ActorPool
def test_actor_pool_import_paths():
    from ember.util import ActorPool as FromUtil

    assert FromUtil is ActorPool


def test_map_returns_results_in_order(pool_actors):
    pool = ActorPool(pool_actors)
    assert list(pool.map(lambda a, v: a.double.remote(v), range(20))) == [2 * i for i in range(20)]
    assert not pool.has_next()
    # The pool is reusable.
    assert list(pool.map(lambda a, v: a.double.remote(v), [5, 6])) == [10, 12]


def test_map_keeps_order_when_results_finish_out_of_order(pool_actors, tmp_path):
    marks = [str(tmp_path / f"done{i}") for i in range(3)]
    pool = ActorPool(pool_actors)
    # Value 0 finishes only after 1 and 2 have run, yet it comes out first.
    results = pool.map(lambda a, v: a.gated.remote(v, marks[1:] if v == 0 else None, marks[v]), range(3))
    assert list(results) == [0, 1, 2]


def test_map_unordered_returns_results_as_they_finish(pool_actors, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool(pool_actors)
    results = pool.map_unordered(lambda a, v: a.gated.remote(v, gate if v == 0 else None), range(3))
    first_two = [next(results), next(results)]
    assert sorted(first_two) == [1, 2]  # 0 waits for the gate
    _open(gate)
    assert list(results) == [0]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(10))) == [2 * i for i in range(10)]


def test_submit_get_next_has_next(pool_actors):
    pool = ActorPool(pool_actors)
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    for i in range(7):  # more submissions than actors: the rest wait for a free actor
        pool.submit(lambda a, v: a.double.remote(v), i)
    assert pool.has_next()
    assert [pool.get_next() for _ in range(7)] == [2 * i for i in range(7)]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()


def test_get_next_unordered_collects_everything(pool_actors):
    pool = ActorPool(pool_actors)
    for i in range(6):
        pool.submit(lambda a, v: a.double.remote(v), i)
    got = []
    while pool.has_next():
        got.append(pool.get_next_unordered(timeout=30))
    assert sorted(got) == [0, 2, 4, 6, 8, 10]


def test_get_next_timeout_raises_timeout_error_and_can_be_retried(pool_actors, tmp_path):
    gate = str(tmp_path / "gate")
    pool = ActorPool(pool_actors)
    pool.submit(lambda a, v: a.gated.remote(v, gate), "slow")
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.1)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.1)
    assert pool.has_next()  # the result is still to come
    _open(gate)
    assert pool.get_next(timeout=30) == "slow"
    assert not pool.has_next()


def test_has_free_push_and_pop_idle(ember_shared, tmp_path):
    gate = str(tmp_path / "gate")
    a, b, c = (Doubler.remote() for _ in range(3))
    pool = ActorPool([a])
    assert pool.has_free()
    pool.submit(lambda actor, v: actor.gated.remote(v, gate), 1)
    assert not pool.has_free()
    assert pool.pop_idle() is None  # nothing is idle

    pool.push(b)
    assert pool.has_free()
    with pytest.raises(ValueError):
        pool.push(b)  # already in the pool (idle)
    with pytest.raises(ValueError):
        pool.push(a)  # already in the pool (busy)
    idle = pool.pop_idle()
    assert idle == b
    assert not pool.has_free()

    # A submission with no idle actor waits; pushing an actor runs it.
    pool.submit(lambda actor, v: actor.double.remote(v), 21)
    assert not pool.has_free()
    pool.push(c)
    assert pool.get_next_unordered(timeout=30) == 42
    _open(gate)
    assert pool.get_next(timeout=30) == 1
    assert not pool.has_next()
    assert pool.has_free()
    for actor in (a, b, c):
        ember.kill(actor)


def test_submit_requires_a_function_returning_an_object_ref(pool_actors):
    pool = ActorPool(pool_actors)
    with pytest.raises(TypeError, match="ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free()  # the actor went back to the pool
    assert list(pool.map(lambda a, v: a.double.remote(v), [1])) == [2]


def test_results_come_from_every_actor(pool_actors):
    pool = ActorPool(pool_actors)
    pids = set(pool.map(lambda a, v: a.pid.remote(), range(3)))
    assert len(pids) == 3  # three submissions with three idle actors use all of them


# ============================================================================ Queue
def test_queue_fifo_size_empty_full(ember_shared):
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.qsize() == 0 and len(q) == 0
    for item in ["a", {"b": 1}, [3]]:
        q.put(item)
    assert q.full() and not q.empty() and q.qsize() == 3 and q.size() == 3
    assert [q.get(), q.get(), q.get()] == ["a", {"b": 1}, [3]]
    assert q.empty()
    q.shutdown()


def test_queue_nowait_and_timeouts_raise_empty_and_full(ember_shared):
    q = Queue(maxsize=1)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    q.put_nowait(1)
    with pytest.raises(Full):
        q.put_nowait(2)
    with pytest.raises(Full):
        q.put(2, block=False)
    with pytest.raises(Full):
        q.put(2, timeout=0.1)
    with pytest.raises(ValueError):
        q.put(2, timeout=-1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    assert q.get_nowait() == 1
    # Empty and Full are the standard library's exceptions too.
    import queue as stdlib_queue

    assert issubclass(Empty, stdlib_queue.Empty) and issubclass(Full, stdlib_queue.Full)
    q.shutdown()


def test_queue_batches(ember_shared):
    q = Queue(maxsize=4)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full):
        q.put_nowait_batch([4, 5])
    assert q.qsize() == 3
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(1) == [3]
    q.shutdown()


def test_queue_invalid_maxsize():
    with pytest.raises(ValueError):
        Queue(maxsize=-1)


def test_blocking_get_in_a_task_waits_for_a_put(ember_shared, tmp_path):
    q = Queue()
    started = str(tmp_path / "started")

    @ember.remote
    def consumer(queue, path):
        _open(path)
        return queue.get(timeout=60)

    waiting = consumer.remote(q, started)
    wait_for_file(started, timeout=30)
    ready, _ = ember.wait([waiting], timeout=0.3)
    assert ready == []  # nothing to get yet
    q.put("hello")
    assert ember.get(waiting, timeout=60) == "hello"
    q.shutdown()


def test_consumer_task_and_producer_task(ember_local, tmp_path):
    """A producer task submitted while a consumer task of the same shape blocks in get must not
    wait behind it on the consumer's worker (regression: pipelining onto a blocked worker)."""
    q = Queue()
    started = str(tmp_path / "started")

    @ember.remote
    def consumer(queue, path):
        _open(path)
        try:
            return queue.get(timeout=5)
        except Empty:
            return "timed out"

    @ember.remote
    def producer(queue, item):
        queue.put(item)
        return True

    waiting = consumer.remote(q, started)
    wait_for_file(started, timeout=30)  # the consumer runs (and is about to block in get)
    done = producer.remote(q, "hello")
    try:
        assert ember.get(waiting, timeout=60) == "hello"
    finally:
        ember.get(done, timeout=60)
        q.shutdown()


def test_blocking_put_waits_for_room(ember_shared):
    q = Queue(maxsize=1)
    q.put("first")

    @ember.remote
    def producer(queue):
        queue.put("second", timeout=60)
        return "put"

    pending = producer.remote(q)
    ready, _ = ember.wait([pending], timeout=0.3)
    assert ready == []  # the queue is full: the put waits
    assert q.get(timeout=30) == "first"
    assert ember.get(pending, timeout=60) == "put"
    assert q.get(timeout=30) == "second"
    q.shutdown()


def test_queue_between_tasks_and_actors(ember_shared):
    q = Queue()

    @ember.remote
    def produce(queue, n):
        for i in range(n):
            queue.put(i)
        return n

    @ember.remote
    class Consumer:
        def __init__(self, queue):
            self.queue = queue

        def take(self, n):
            return [self.queue.get(timeout=60) for _ in range(n)]

    consumer = Consumer.remote(q)
    assert ember.get(produce.remote(q, 20)) == 20
    assert ember.get(consumer.take.remote(20), timeout=60) == list(range(20))
    assert q.empty()
    ember.kill(consumer)
    q.shutdown()


def test_put_async_and_get_async(ember_shared):
    q = Queue(maxsize=2)

    async def driver_side():
        await q.put_async(1)
        await q.put_async(2, timeout=5)
        with pytest.raises(Full):
            await q.put_async(3, block=False)
        with pytest.raises(Full):
            await q.put_async(3, timeout=0.1)
        first = await q.get_async()
        second = await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        return [first, second]

    assert asyncio.run(driver_side()) == [1, 2]

    @ember.remote
    class AsyncUser:
        def __init__(self, queue):
            self.queue = queue

        async def roundtrip(self, items):
            for item in items:
                await self.queue.put_async(item)
            return [await self.queue.get_async(timeout=30) for _ in items]

    user = AsyncUser.remote(q)
    assert ember.get(user.roundtrip.remote(["x", "y"]), timeout=60) == ["x", "y"]
    ember.kill(user)
    q.shutdown()


def test_queue_needs_no_cpu(ember_start):
    ember_start(num_cpus=0)
    q = Queue()
    q.put("no cpu needed")
    assert q.get(timeout=30) == "no cpu needed"
    q.shutdown()


def test_queue_shutdown_ends_its_actor(ember_shared):
    q = Queue()
    q.put(1)
    actor = q.actor
    q.shutdown()
    assert q.actor is None

    def call_fails():
        try:
            ember.get(actor.qsize.remote(), timeout=30)
        except ember.exceptions.RayActorError:
            return True
        return False

    wait_for_condition(call_fails, timeout=30)
