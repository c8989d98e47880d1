"""``ember.util.concurrent.futures.RayExecutor``: a ``concurrent.futures.Executor`` on the cluster."""

from __future__ import annotations

import concurrent.futures
import os

import pytest

from ember._private.test_utils import wait_for_condition
from ember.util.concurrent.futures import EmberExecutor, RayExecutor


def square(x):
    return x * x


def fails(x):
    raise ValueError(f"bad {x}")


def logged_call(path, i, gate):
    with open(path, "a") as f:
        f.write(f"start {i}\n")
    wait_for_condition(lambda: os.path.exists(gate), timeout=60, retry_interval_ms=10)
    with open(path, "a") as f:
        f.write(f"end {i}\n")
    return i


def test_submit_and_map_match_a_thread_pool(ember_shared):
    with RayExecutor() as ours, concurrent.futures.ThreadPoolExecutor(2) as theirs:
        assert isinstance(ours, concurrent.futures.Executor)
        assert ours.submit(square, 7).result(60) == theirs.submit(square, 7).result(60) == 49
        assert list(ours.map(square, range(20), timeout=60)) == list(theirs.map(square, range(20)))
        assert list(ours.map(pow, [2, 3], [5, 2])) == [32, 9]
        futures = [ours.submit(square, i) for i in range(10)]
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60)) == [i * i for i in range(10)]
        done, not_done = concurrent.futures.wait(futures, timeout=60)
        assert len(done) == 10 and not not_done
        assert ours.submit(lambda a, b=1: a + b, 1, b=5).result(60) == 6
    assert EmberExecutor is RayExecutor


def test_errors_reach_the_future(ember_shared):
    with RayExecutor() as ex:
        future = ex.submit(fails, 3)
        with pytest.raises(ValueError, match="bad 3"):
            future.result(60)
        # As ProcessPoolExecutor: the call's own exception, with the remote traceback as its cause.
        assert type(future.exception()) is ValueError
        assert "in fails" in str(future.exception().__cause__)
        with pytest.raises(ValueError):
            list(ex.map(fails, [1]))


def test_shutdown_refuses_new_work_and_waits(ember_shared):
    ex = RayExecutor()
    futures = [ex.submit(square, i) for i in range(5)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures) and [f.result() for f in futures] == [0, 1, 4, 9, 16]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(ValueError):
        RayExecutor(max_workers=0)


def test_max_workers_bounds_running_calls_and_queued_calls_cancel(ember_shared, tmp_path):
    path, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    ex = RayExecutor(max_workers=1)
    first = ex.submit(logged_call, path, 0, gate)
    second = ex.submit(logged_call, path, 1, gate)
    third = ex.submit(logged_call, path, 2, gate)
    assert third.cancel() and third.cancelled()  # still waiting here: cancelled before it started
    wait_for_condition(lambda: os.path.exists(path), timeout=60)
    with open(gate, "w"):
        pass
    assert first.result(60) == 0
    assert second.result(60) == 1
    with open(path) as f:
        assert f.read().split("\n") == ["start 0", "end 0", "start 1", "end 1", ""]  # never two at once
    os.unlink(gate)
    blocked = ex.submit(logged_call, path, 3, gate)
    waiting = ex.submit(logged_call, path, 4, gate)
    ex.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled()
    with open(gate, "w"):
        pass
    assert blocked.result(60) == 3
    ex.shutdown(wait=True)
