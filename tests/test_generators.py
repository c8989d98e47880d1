"""Generator tasks and actor methods: streaming (``ObjectRefGenerator``) and ``num_returns="dynamic"``."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition, wait_for_file, write_file_atomic


@ember.remote
def count(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"boom at {i}")
        yield i


@ember.remote
def first_then_wait(release_path):
    yield "first"
    wait_for_file(release_path, timeout=60)
    yield "second"


def _items_held_by(task_id_hex: str) -> list[str]:
    """Object ids of a task's items still counted in this process."""
    counter = runtime.core_worker().reference_counter
    return [oid.hex() for oid in counter.snapshot() if oid.hex().startswith(task_id_hex)]


def test_a_generator_function_streams_by_default(ember_shared):
    from ember._raylet import ObjectRefGenerator

    gen = count.remote(4)
    assert isinstance(gen, ObjectRefGenerator) and isinstance(gen, ember.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, ember.ObjectRef) for r in refs)
    assert ember.get(refs) == [0, 1, 2, 3]
    with pytest.raises(StopIteration):
        next(gen)
    assert gen.is_finished()
    assert ember.get(gen.completed()) is None


def test_items_reach_the_caller_before_the_task_ends(ember_shared, tmp_path):
    release = str(tmp_path / "release")
    gen = first_then_wait.remote(release)
    first = next(gen)  # the task is now blocked on a file that does not exist yet
    assert ember.get(first, timeout=30) == "first"
    assert not gen.next_ready()
    ready, not_ready = ember.wait([gen], timeout=0.2)
    assert ready == [] and not_ready == [gen]
    write_file_atomic(release, "go")
    ready, _ = ember.wait([gen], timeout=30)
    assert ready == [gen]
    assert ember.get(next(gen)) == "second"
    assert list(gen) == []


def test_an_exception_at_item_k_is_raised_at_item_k(ember_shared):
    gen = count.remote(5, fail_at=2)
    assert ember.get(next(gen)) == 0
    assert ember.get(next(gen)) == 1
    failed = next(gen)
    with pytest.raises(ValueError, match="boom at 2"):
        ember.get(failed)
    with pytest.raises(StopIteration):
        next(gen)


def test_async_for_and_await(ember_shared):
    async def consume():
        return [await ref async for ref in count.remote(3)]

    assert asyncio.run(consume()) == [0, 1, 2]


def test_dynamic_returns_a_ref_to_a_generator_of_refs(ember_shared):
    from ember._raylet import DynamicObjectRefGenerator

    @ember.remote(num_returns="dynamic")
    def chunks(n):
        for i in range(n):
            yield np.full(50_000, i)  # 400 KB each: in the object store

    ref = chunks.remote(3)
    assert isinstance(ref, ember.ObjectRef)
    inner = ember.get(ref)
    assert isinstance(inner, DynamicObjectRefGenerator) and len(inner) == 3
    assert [int(ember.get(r)[0]) for r in inner] == [0, 1, 2]

    @ember.remote
    def fixed():
        yield "only"

    assert ember.get(fixed.options(num_returns=1).remote()) == "only"  # a fixed count: the items are the returns


def test_large_and_small_items_are_owned_by_the_caller_and_freed(ember_shared):
    @ember.remote
    def mixed():
        yield np.arange(300_000)  # in the store
        yield "small"  # inline

    gen = mixed.remote()
    task_hex = gen.task_id().hex()
    big, small = list(gen)
    assert ember.get(big)[-1] == 299_999 and ember.get(small) == "small"
    assert big.owner_address() == runtime.core_worker().address
    del big, small, gen
    wait_for_condition(lambda: not _items_held_by(task_hex), timeout=10)

    # Items nobody took are freed with the generator.
    gen = mixed.remote()
    task_hex = gen.task_id().hex()
    ember.get(gen.completed())
    del gen
    wait_for_condition(lambda: not _items_held_by(task_hex), timeout=10)
    assert not runtime.core_worker().generators


def test_cancel_a_generator(ember_shared, tmp_path):
    never = str(tmp_path / "never")
    gen = first_then_wait.remote(never)
    assert ember.get(next(gen), timeout=30) == "first"
    ember.cancel(gen)
    cancelled = next(gen)
    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(cancelled, timeout=30)
    with pytest.raises(StopIteration):
        next(gen)


def test_backpressure_pauses_the_generator(ember_shared, tmp_path):
    @ember.remote
    def produce(folder, n):
        for i in range(n):
            write_file_atomic(os.path.join(folder, f"made_{i}"), "1")
            yield i

    folder = str(tmp_path)
    gen = produce.options(_generator_backpressure_num_objects=2).remote(folder, 4)
    wait_for_file(os.path.join(folder, "made_1"))
    # Two items wait unconsumed: the task may not finish (nor make item 2) until one is taken.
    ready, _ = ember.wait([gen.completed()], timeout=0.5)
    assert not ready and not os.path.exists(os.path.join(folder, "made_2"))
    assert ember.get(next(gen)) == 0
    wait_for_file(os.path.join(folder, "made_2"))
    assert ember.get(list(gen)) == [1, 2, 3]
    with pytest.raises(ValueError, match="_generator_backpressure_num_objects"):
        produce.options(_generator_backpressure_num_objects=0)


def test_a_worker_dying_mid_stream_gives_a_clear_error_or_a_retry(ember_shared, tmp_path):
    @ember.remote(max_retries=0)
    def dies():
        yield "before"
        os._exit(1)

    gen = dies.remote()
    assert ember.get(next(gen), timeout=30) == "before"
    with pytest.raises(ember.exceptions.WorkerCrashedError, match="died unexpectedly"):
        ember.get(next(gen), timeout=30)
    assert list(gen) == []

    @ember.remote(max_retries=1)
    def dies_once(marker):
        first = not os.path.exists(marker)
        write_file_atomic(marker, "1")
        for i in range(3):
            yield i
            if first and i == 1:
                os._exit(1)

    # The retry streams every item again; those already received are not repeated.
    assert ember.get(list(dies_once.remote(str(tmp_path / "attempted")))) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["sync", "threaded", "async"])
def test_actor_generator_methods(ember_shared, tmp_path, kind):
    class Source:
        def __init__(self):
            self.calls = 0

        def numbers(self, n, release=None):
            for i in range(n):
                yield i
                if release and i == 0:
                    wait_for_file(release, timeout=60)

        def failing(self):
            yield "ok"
            raise KeyError("bad item")

    class AsyncSource(Source):
        async def anumbers(self, n, release=None):
            for i in range(n):
                await asyncio.sleep(0)
                yield i
                if release and i == 0:
                    while not os.path.exists(release):
                        await asyncio.sleep(0.01)

    cls = ember.remote(AsyncSource if kind == "async" else Source)
    actor = cls.options(max_concurrency=4).remote() if kind == "threaded" else cls.remote()
    method = actor.anumbers if kind == "async" else actor.numbers
    assert ember.get(list(method.remote(3))) == [0, 1, 2]

    release = str(tmp_path / f"release_{kind}")
    gen = method.remote(2, release)
    assert ember.get(next(gen), timeout=30) == 0  # before the call ends
    write_file_atomic(release, "go")
    assert ember.get(list(gen)) == [1]

    gen = actor.failing.remote()
    assert ember.get(next(gen)) == "ok"
    with pytest.raises(KeyError, match="bad item"):
        ember.get(next(gen))
    with pytest.raises(StopIteration):
        next(gen)

    @ember.remote
    class Dynamic:
        @ember.method(num_returns="dynamic")
        def parts(self):
            yield "a"
            yield "b"

    assert [ember.get(r) for r in ember.get(Dynamic.remote().parts.remote())] == ["a", "b"]


def test_wait_mixes_refs_and_generators(ember_shared, tmp_path):
    release = str(tmp_path / "release")
    blocked = first_then_wait.remote(release)
    next(blocked)
    done_ref = ember.put(1)
    finished = count.remote(1)
    ready, not_ready = ember.wait([blocked, done_ref, finished], num_returns=2, timeout=30)
    assert ready == [done_ref, finished] and not_ready == [blocked]
    write_file_atomic(release, "go")
    assert ember.get(list(blocked)) == ["second"]


def test_a_generator_cannot_travel_and_bad_options_fail(ember_shared):
    gen = count.remote(1)

    @ember.remote
    def take(g):
        return g

    with pytest.raises(TypeError, match="cannot be passed"):
        take.remote(gen)
    with pytest.raises(ValueError, match="num_returns"):
        count.options(num_returns="lots")

    @ember.remote(num_returns="streaming")
    def not_a_generator():
        return 5

    with pytest.raises(TypeError, match="not an iterator"):
        ember.get(next(not_a_generator.remote()))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_cancel_an_actor_generator(ember_shared, tmp_path, kind):
    class Stream:
        def items(self, release):
            yield "first"
            # A sync actor's call is not interrupted (as in Ray): it sees the flag and goes on.
            while not os.path.exists(release) and not ember.get_runtime_context().is_canceled():
                time.sleep(0.01)
            yield "second"

    class AsyncStream:
        async def items(self, release):
            yield "first"
            while not os.path.exists(release):
                await asyncio.sleep(0.01)
            yield "second"

    actor = ember.remote(AsyncStream if kind == "async" else Stream).remote()
    release = str(tmp_path / "release")
    gen = actor.items.remote(release)
    assert ember.get(next(gen), timeout=30) == "first"
    ember.cancel(gen)
    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(next(gen), timeout=30)
    assert list(gen) == []
