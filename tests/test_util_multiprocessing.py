"""``ember.util.multiprocessing.Pool`` side by side with the standard library's ``multiprocessing.Pool``."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

import ember
from ember._private.test_utils import wait_for_condition
from ember.util.multiprocessing import Pool
from ember.util.multiprocessing import TimeoutError as PoolTimeoutError


def square(x):
    return x * x


def add(a, b, c=0):
    return a + b + c


def fails_on_seven(x):
    if x == 7:
        raise KeyError(f"no luck: {x}")
    return x


class Unusual(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code


def raise_unusual(x):
    raise Unusual(x, "detail")


def wait_for_file(path):
    wait_for_condition(lambda: os.path.exists(path), timeout=60, retry_interval_ms=10)
    return "released"


_initialized = []


def remember(value):
    _initialized.append(value)


def initialized(_):
    return list(_initialized)


@pytest.fixture
def pools(ember_shared):
    """An Ember pool and a standard-library pool of two processes each."""
    with Pool(2) as ours, multiprocessing.get_context("fork").Pool(2) as theirs:
        yield ours, theirs


def _outcomes(iterator):
    """What iterating gives: each value, then the exception type and args that ended it."""
    out = []
    try:
        for value in iterator:
            out.append(value)
    except Exception as exc:
        out.append((type(exc), exc.args))
    return out


# ----------------------------------------------------------------------------- same results
@pytest.mark.parametrize("items", [[], [3], list(range(10)), list(range(1001))])
@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map_family_matches_the_standard_library(pools, items, chunksize):
    ours, theirs = pools
    assert ours.map(square, items, chunksize) == theirs.map(square, items, chunksize)
    assert ours.map(square, iter(items), chunksize) == theirs.map(square, iter(items), chunksize)
    pairs = [(x, x + 1) for x in items]
    assert ours.starmap(add, pairs, chunksize) == theirs.starmap(add, pairs, chunksize)
    assert ours.map_async(square, items, chunksize).get(60) == theirs.map_async(square, items, chunksize).get(60)
    assert ours.starmap_async(add, pairs, chunksize).get(60) == theirs.starmap_async(add, pairs, chunksize).get(60)
    size = chunksize or 1
    assert list(ours.imap(square, items, size)) == list(theirs.imap(square, items, size))
    assert sorted(ours.imap_unordered(square, (x for x in items), size)) == sorted(
        theirs.imap_unordered(square, (x for x in items), size))


def test_apply_matches_the_standard_library(pools):
    ours, theirs = pools
    assert ours.apply(add, (1, 2), {"c": 3}) == theirs.apply(add, (1, 2), {"c": 3}) == 6
    assert ours.apply_async(add, (1, 2)).get(60) == theirs.apply_async(add, (1, 2)).get(60) == 3
    assert ours.apply(os.getpid) != os.getpid()  # it ran in a pool process


def test_lambdas_and_closures_work(pools):
    ours, _ = pools
    offset = 10
    assert ours.map(lambda x: x + offset, range(5)) == [10, 11, 12, 13, 14]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("chunksize", [1, 3, None])
def test_errors_are_the_original_exception_as_in_the_standard_library(pools, chunksize):
    ours, theirs = pools
    for call in (lambda p: p.map(fails_on_seven, range(20), chunksize),
                 lambda p: p.map_async(fails_on_seven, range(20), chunksize).get(60),
                 lambda p: p.starmap(fails_on_seven, [(x,) for x in range(20)], chunksize)):
        with pytest.raises(KeyError) as ours_info:
            call(ours)
        with pytest.raises(KeyError) as theirs_info:
            call(theirs)
        assert type(ours_info.value) is type(theirs_info.value) is KeyError
        assert ours_info.value.args == theirs_info.value.args == ("no luck: 7",)
        # The worker's traceback travels as the cause, as with the standard library.
        assert "fails_on_seven" in str(ours_info.value.__cause__)
    size = chunksize or 1
    assert _outcomes(ours.imap(fails_on_seven, range(20), size)) == _outcomes(theirs.imap(fails_on_seven, range(20), size))


def test_custom_exception_keeps_its_type_and_attributes(pools):
    ours, theirs = pools
    with pytest.raises(Unusual) as info:
        ours.apply(raise_unusual, (5,))
    assert type(info.value) is Unusual and info.value.code == 5 and info.value.args == (5, "detail")
    with pytest.raises(Unusual):
        theirs.apply(raise_unusual, (5,))


@pytest.mark.parametrize("which", [0, 1], ids=["ember", "stdlib"])
def test_async_result_timeout_ready_successful_and_callbacks(pools, tmp_path, which):
    pool = pools[which]
    gate = str(tmp_path / "gate")
    got, errors, mapped = [], [], []
    called, failed = threading.Event(), threading.Event()
    result = pool.apply_async(wait_for_file, (gate,), callback=lambda v: (got.append(v), called.set()))
    with pytest.raises(PoolTimeoutError):
        result.get(timeout=0.05)
    assert PoolTimeoutError is multiprocessing.TimeoutError
    assert not result.ready()
    with pytest.raises(ValueError):
        result.successful()
    result.wait(0.01)
    with open(gate, "w"):
        pass
    assert result.get(timeout=60) == "released"
    assert result.ready() and result.successful()
    assert called.wait(60) and got == ["released"]

    bad = pool.map_async(fails_on_seven, range(10), error_callback=lambda e: (errors.append(e), failed.set()))
    bad.wait(60)
    assert bad.ready() and not bad.successful()
    assert failed.wait(60) and isinstance(errors[0], KeyError)
    done = pool.map_async(square, range(5), callback=mapped.append)
    assert done.get(60) == [0, 1, 4, 9, 16]
    wait_for_condition(lambda: mapped == [[0, 1, 4, 9, 16]], timeout=10)


def test_imap_next_with_timeout(pools, tmp_path):
    ours, _ = pools
    gate = str(tmp_path / "gate")
    it = ours.imap(wait_for_file, [gate])
    with pytest.raises(PoolTimeoutError):
        it.next(timeout=0.05)
    with open(gate, "w"):
        pass
    assert it.next(timeout=60) == "released"
    with pytest.raises(StopIteration):
        next(it)


# ----------------------------------------------------------------------------- processes
def test_initializer_runs_once_in_every_process(ember_shared):
    with Pool(2, initializer=remember, initargs=("ready",)) as pool:
        assert all(seen == ["ready"] for seen in pool.map(initialized, range(8), chunksize=1))
    assert _initialized == []  # it ran in the pool's processes, not here


def test_maxtasksperchild_replaces_processes(ember_shared):
    with Pool(1, maxtasksperchild=2) as pool:
        pids = pool.map(lambda _: os.getpid(), range(6), chunksize=1)
    # Two chunks per process, as the standard library counts tasks.
    assert len(set(pids)) == 3 and pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]


def test_ray_remote_args_shape_the_actors(ember_shared):
    # Four half-CPU processes fit on the two-CPU cluster.
    with Pool(4, ray_remote_args={"num_cpus": 0.5}) as pool:
        assert pool.map(square, range(40), chunksize=1) == [x * x for x in range(40)]
        assert len(set(pool.map(lambda _: os.getpid(), range(8), chunksize=1))) == 4


def test_close_join_terminate_and_bad_use(ember_shared):
    with pytest.raises(ValueError):
        Pool(0)
    with pytest.raises(ValueError):
        Pool(1, maxtasksperchild=0)
    pool = Pool(2)
    with pytest.raises(ValueError, match="Chunksize"):
        pool.map(square, range(4), chunksize=0)
    result = pool.map_async(square, range(100))
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.map(square, range(3))
    pool.join()  # waits for the work it accepted
    assert result.get(0) == [x * x for x in range(100)]

    with Pool(2) as pool:
        pids = set(pool.map(lambda _: os.getpid(), range(8), chunksize=1))
    with pytest.raises(ValueError, match="not running"):
        pool.apply(square, (1,))
    pool.join()

    def gone():
        import psutil

        return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)

    wait_for_condition(gone, timeout=30)


def test_terminate_fails_outstanding_work_instead_of_hanging(ember_shared, tmp_path):
    pool = Pool(2)
    result = pool.apply_async(wait_for_file, (str(tmp_path / "never"),))
    pool.terminate()
    with pytest.raises(ember.exceptions.RayActorError):
        result.get(timeout=60)
    assert result.ready() and not result.successful()
    pool.join()


def test_pool_starts_a_cluster_when_none_is_running(ember_start):
    ember_start(num_cpus=1)  # ends the module's shared cluster
    ember.shutdown()
    pool = Pool(1, ray_address="local")
    try:
        assert ember.is_initialized()
        assert pool.map(square, range(3)) == [0, 1, 4]
    finally:
        pool.terminate()
        ember.shutdown()
