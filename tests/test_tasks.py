"""Remote functions: decorator, options, arguments, returns, nesting, worker reuse."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition, wait_for_file


@ember.remote
def add(a, b=10):
    return a + b


@ember.remote(num_cpus=0.5, max_retries=1)
def mul(a, b):
    return a * b


@ember.remote
def getpid():
    return os.getpid()


# ============================================================================ decorator / options
def test_decorator_without_and_with_arguments(ember_shared):
    assert ember.get(add.remote(1, 2)) == 3
    assert ember.get(mul.remote(3, 4)) == 12


def test_decorator_with_positional_argument_is_rejected():
    with pytest.raises(TypeError, match="keyword arguments only"):
        ember.remote(1)


def test_remote_function_called_directly_raises_type_error():
    with pytest.raises(TypeError, match=r"add\.remote\(\)"):
        add(1, 2)


@pytest.mark.parametrize(
    "options, option_name",
    [
        ({"num_cpus": -1}, "num_cpus"),
        ({"num_gpus": -0.5}, "num_gpus"),
        ({"memory": -1}, "memory"),
        ({"num_returns": -1}, "num_returns"),
        ({"max_retries": -2}, "max_retries"),
        ({"resources": {"disk": -1}}, "disk"),
        ({"num_cpus": "two"}, "num_cpus"),
    ],
)
def test_bad_option_values_raise_value_error_naming_the_option(options, option_name):
    with pytest.raises(ValueError, match=option_name):
        add.options(**options)
    with pytest.raises(ValueError, match=option_name):
        ember.remote(**options)(lambda: None)


def test_unknown_option_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="num_cpu_typo"):
        add.options(num_cpu_typo=1)
    with pytest.raises(ValueError, match="not_an_option"):
        ember.remote(not_an_option=True)(lambda: None)


def test_options_do_not_change_the_original_function(ember_shared):
    fast = add.options(name="renamed", num_cpus=0.25)
    assert ember.get(fast.remote(1)) == 11
    assert ember.get(add.remote(2)) == 12
    assert add._default_options["num_cpus"] == 1


@pytest.mark.parametrize("num_cpus, expected_free", [(None, 1.0), (1, 1.0), (2, 0.0), (0.5, 1.5), (0, 2.0)])
def test_num_cpus_held_while_a_task_runs(ember_shared, num_cpus, expected_free):
    @ember.remote
    def free_cpus_seen_from_inside():
        from ember._private import runtime as rt

        return rt.core_worker().raylet_call("get_info", None)["available"].get("CPU", 0.0)

    worker = runtime.core_worker()
    # Leases of earlier tasks go back to the node once idle.
    wait_for_condition(lambda: worker.raylet_call("get_info", None)["available"].get("CPU") == 2.0, timeout=10)
    assert ember.get(free_cpus_seen_from_inside.options(num_cpus=num_cpus).remote()) == expected_free


# ============================================================================ arguments
def test_kwargs_and_defaults(ember_shared):
    assert ember.get(add.remote(1)) == 11
    assert ember.get(add.remote(1, b=5)) == 6
    assert ember.get(add.remote(a=2, b=3)) == 5


def test_arguments_that_do_not_fit_the_signature_raise_type_error_at_remote(ember_shared):
    with pytest.raises(TypeError, match=r"add\.remote\(\): too many positional arguments"):
        add.remote(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        add.remote(1, c=3)
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        add.options(num_cpus=0.5).remote()
    assert ember.get(add.remote(b=1, a=2)) == 3


def test_top_level_ref_keyword_arguments_arrive_as_values(ember_shared):
    a, b = ember.put(5), add.remote(1, 1)
    assert ember.get(add.remote(a=a, b=b)) == 7


def test_top_level_refs_arrive_as_values_nested_refs_as_refs(ember_shared):
    @ember.remote
    def inspect_args(top, in_list, in_dict):
        nested = in_list[0]
        nested_d = in_dict["k"]
        return (
            type(top).__name__,
            isinstance(nested, ember.ObjectRef),
            isinstance(nested_d, ember.ObjectRef),
            top,
            ember.get(nested),
            ember.get(nested_d),
        )

    a = ember.put(41)
    b = ember.put("nested")
    c = add.remote(1, 1)  # a task result, not a put
    assert ember.get(inspect_args.remote(a, [b], {"k": c})) == ("int", True, True, 41, "nested", 2)


def test_task_result_ref_as_argument_chains(ember_shared):
    ref = add.remote(1, 1)
    for _ in range(5):
        ref = add.remote(ref, 1)
    assert ember.get(ref) == 7


def test_large_arguments_and_returns(ember_shared):
    @ember.remote
    def roundtrip(blob, arr):
        return blob[::-1], arr * 2, len(blob)

    blob = os.urandom(300 * 1024)
    arr = np.arange(200_000, dtype=np.int64)  # 1.6 MB
    out_blob, out_arr, n = ember.get(roundtrip.remote(blob, arr))
    assert n == len(blob)
    assert out_blob == blob[::-1]
    np.testing.assert_array_equal(out_arr, arr * 2)


def test_large_return_lives_in_the_object_store(ember_shared):
    @ember.remote
    def make(n):
        return np.ones(n, dtype=np.uint8)

    ref = make.remote(2 * 1024 * 1024)
    arr = ember.get(ref)
    assert arr.sum() == 2 * 1024 * 1024
    store_dir = runtime.core_worker().store_dir
    assert os.path.exists(os.path.join(store_dir, ref.hex()))


# ============================================================================ returns
def test_num_returns_zero_one_many(ember_shared, tmp_path):
    marker = str(tmp_path / "ran")

    @ember.remote(num_returns=0)
    def side_effect(path):
        with open(path, "w") as f:
            f.write("ran")

    assert side_effect.remote(marker) is None
    assert wait_for_file(marker) == "ran"

    @ember.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, ember.ObjectRef) for r in refs)
    assert ember.get(refs) == [1, "two", [3]]

    single = add.options(num_returns=1).remote(1, 1)
    assert isinstance(single, ember.ObjectRef)
    assert ember.get(single) == 2

    pair = add.options(num_returns=2).remote([1], [2])
    assert ember.get(pair) == [1, 2]


def test_num_returns_mismatch_raises(ember_shared):
    @ember.remote(num_returns=2)
    def wrong_count():
        return 1, 2, 3

    @ember.remote(num_returns=2)
    def not_a_sequence():
        return 5

    refs = wrong_count.remote()
    for ref in refs:
        with pytest.raises(ValueError, match="num_returns=2 but returned 3 values"):
            ember.get(ref)
    with pytest.raises(ValueError, match="not a sequence"):
        ember.get(not_a_sequence.remote()[0])


# ============================================================================ workers
def test_worker_reuse_same_process_for_many_tasks(ember_start, ember_env):
    # The driver keeps an idle lease this long: a slow machine must not return it between two
    # tasks (a returned lease may come back as another worker, which would also be correct).
    ember_env(idle_lease_timeout_s=30)
    ember_start(num_cpus=2)
    worker = runtime.core_worker()
    pids = [ember.get(getpid.remote()) for _ in range(30)]
    # Sequential tasks of one shape go to the worker already leased: one process.
    assert len(set(pids)) == 1
    assert pids[0] != os.getpid()
    assert pids[0] in {w["pid"] for w in worker.raylet_call("get_info", None)["workers"]}

    # A batch runs on at most one process per CPU, all of which existed before it.
    before = {w["pid"] for w in worker.raylet_call("get_info", None)["workers"]}
    batch = ember.get([getpid.remote() for _ in range(100)])
    assert set(batch) <= before, "tasks ran in processes started after the batch was submitted"
    assert 1 <= len(set(batch)) <= 2


def test_runtime_context_inside_a_task(ember_shared):
    @ember.remote
    def context():
        ctx = ember.get_runtime_context()
        return ctx.get_task_id(), ctx.get_job_id(), ctx.get_worker_id(), ctx.get_node_id()

    ref = context.remote()
    task_id, job_id, worker_id, node_id = ember.get(ref)
    driver = ember.get_runtime_context()
    assert task_id == ref.task_id().hex()
    assert job_id == driver.get_job_id()
    assert worker_id != driver.get_worker_id()
    assert node_id == driver.get_node_id()
    assert driver.get_task_id() is None


# ============================================================================ nested tasks
def test_nested_tasks_do_not_deadlock_on_one_cpu(ember_start):
    ember_start(num_cpus=1)

    @ember.remote
    def leaf(x):
        return x + 1

    @ember.remote
    def middle(x):
        return ember.get(leaf.remote(x), timeout=30) * 10

    @ember.remote
    def top(x):
        refs = [middle.remote(x), middle.remote(x + 1)]
        return sum(ember.get(refs, timeout=30))

    # Three levels deep, and several blocked callers at once, on a single CPU.
    assert ember.get(top.remote(1), timeout=60) == 20 + 30
    assert ember.get([top.remote(i) for i in range(3)], timeout=60) == [30, 50, 70]


def test_recursive_tasks_on_one_cpu(ember_start):
    ember_start(num_cpus=1)

    @ember.remote
    def fib(n):
        if n < 2:
            return n
        return sum(ember.get([fib.remote(n - 1), fib.remote(n - 2)], timeout=60))

    assert ember.get(fib.remote(6), timeout=90) == 8


def test_cpu_accounting_returns_to_full_after_blocking_tasks(ember_start):
    ember_start(num_cpus=1)
    worker = runtime.core_worker()

    @ember.remote
    def leaf():
        return 1

    @ember.remote
    def blocker():
        return ember.get(leaf.remote(), timeout=30)

    assert ember.get([blocker.remote() for _ in range(4)], timeout=60) == [1] * 4
    # The node lent the blocked workers' CPU and must have taken every loan back.
    wait_for_condition(lambda: worker.raylet_call("get_info", None)["available"].get("CPU") == 1.0, timeout=10)


def test_short_tasks_not_stuck_behind_a_long_one(ember_shared, tmp_path):
    gate = str(tmp_path / "gate")

    @ember.remote
    def wait_for_gate(path):
        import time as _time

        deadline = _time.monotonic() + 60
        while not os.path.exists(path) and _time.monotonic() < deadline:
            _time.sleep(0.005)
        return "slow"

    slow = wait_for_gate.remote(gate)
    try:
        quick = [add.remote(i, 0) for i in range(4)]
        # One CPU is free for the whole time, so every quick task can finish.
        ready, _ = ember.wait(quick, num_returns=4, timeout=30)
        assert len(ready) == 4
    finally:
        with open(gate, "w") as f:
            f.write("go")
        ember.get(slow, timeout=30)
