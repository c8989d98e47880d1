"""Failures: task exceptions, crashed workers, retries and cancellation."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

import ember
from ember._private import runtime
from ember._private.processes import pid_alive
from ember._private.test_utils import wait_for_condition, wait_for_file, write_file_atomic
from ember.exceptions import (
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)


class CustomError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"code={code}: {detail}")
        self.code = code


@ember.remote
def raise_value_error(pid_file):
    write_file_atomic(pid_file, str(os.getpid()))
    raise ValueError("the task's own message")


@ember.remote
def report_pid_then_sleep(directory):
    """First attempt: write its pid and sleep until killed. A retry finds the marker and returns."""
    marker = os.path.join(directory, "first_attempt")
    if os.path.exists(marker):
        write_file_atomic(os.path.join(directory, "retried"), str(os.getpid()))
        return f"retried in {os.getpid()}"
    with open(marker, "w") as f:
        f.write("x")
    write_file_atomic(os.path.join(directory, "pid"), str(os.getpid()))
    time.sleep(120)
    return "never"


@ember.remote
def exit_on_first_attempt(directory):
    marker = os.path.join(directory, "first_attempt")
    if os.path.exists(marker):
        return "second attempt"
    with open(marker, "w") as f:
        f.write("x")
    os._exit(1)


def _attempt(directory):
    with open(os.path.join(directory, f"attempt-{uuid.uuid4().hex}"), "w") as f:
        f.write("x")
    return len([n for n in os.listdir(directory) if n.startswith("attempt-")])


def _attempts(directory):
    return len([n for n in os.listdir(directory) if n.startswith("attempt-")])


# ============================================================================ task exceptions
def test_task_exception_is_ray_task_error_and_original_class(ember_shared, tmp_path):
    pid_file = str(tmp_path / "pid")
    ref = raise_value_error.remote(pid_file)
    with pytest.raises(ValueError) as info:
        ember.get(ref)
    err = info.value
    pid = int(wait_for_file(pid_file))
    assert isinstance(err, RayTaskError)
    assert isinstance(err, RayError)
    message = str(err)
    assert "Traceback (most recent call last)" in message
    assert 'raise ValueError("the task\'s own message")' in message
    assert "the task's own message" in message
    assert "raise_value_error" in message
    assert f"pid={pid}" in message
    assert pid != os.getpid()
    assert err.pid == pid and err.function_name == "raise_value_error"
    assert isinstance(err.cause, ValueError)


def test_custom_exception_with_extra_init_arguments(ember_shared):
    @ember.remote
    def raise_custom():
        raise CustomError(7, "custom detail")

    with pytest.raises(CustomError) as info:
        ember.get(raise_custom.remote())
    assert isinstance(info.value, RayTaskError)
    assert info.value.code == 7
    assert "custom detail" in str(info.value)


def test_error_propagates_to_dependent_tasks_and_through_nesting(ember_shared, tmp_path):
    @ember.remote
    def consume(x):
        return x

    @ember.remote
    def nested(pid_file):
        return ember.get(raise_value_error.remote(pid_file))

    failing = raise_value_error.remote(str(tmp_path / "a"))
    with pytest.raises(ValueError, match="the task's own message"):
        ember.get(consume.remote(failing))
    with pytest.raises(ValueError, match="the task's own message") as info:
        ember.get(nested.remote(str(tmp_path / "b")))
    assert "nested" in str(info.value)


def test_unpicklable_exception_still_reports_the_error(ember_shared):
    @ember.remote
    def raise_unpicklable():
        err = RuntimeError("holds a lock")
        err.lock = threading.Lock()
        raise err

    with pytest.raises(RayError, match="holds a lock"):
        ember.get(raise_unpicklable.remote())


# ============================================================================ crashed workers
def test_sigkilled_worker_is_retried(ember_shared, tmp_path):
    ref = report_pid_then_sleep.remote(str(tmp_path))
    pid = int(wait_for_file(str(tmp_path / "pid")))
    os.kill(pid, signal.SIGKILL)
    result = ember.get(ref, timeout=60)
    assert result.startswith("retried in ")
    assert int(result.split()[-1]) != pid
    assert int(wait_for_file(str(tmp_path / "retried"))) != pid


def test_sigkilled_worker_without_retries_raises_worker_crashed(ember_shared, tmp_path):
    ref = report_pid_then_sleep.options(max_retries=0).remote(str(tmp_path))
    pid = int(wait_for_file(str(tmp_path / "pid")))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError) as info:
        ember.get(ref, timeout=60)
    message = str(info.value)
    assert "report_pid_then_sleep" in message
    assert f"pid={pid}" in message
    assert not isinstance(info.value, RayTaskError)


def test_os_exit_in_task_is_retried(ember_shared, tmp_path):
    assert ember.get(exit_on_first_attempt.remote(str(tmp_path)), timeout=60) == "second attempt"


def test_os_exit_in_task_without_retries_raises_worker_crashed(ember_shared, tmp_path):
    with pytest.raises(WorkerCrashedError, match="exit_on_first_attempt"):
        ember.get(exit_on_first_attempt.options(max_retries=0).remote(str(tmp_path)), timeout=60)


def test_retries_are_bounded_by_max_retries(ember_shared, tmp_path):
    @ember.remote(max_retries=2)
    def always_exits(directory):
        _attempt(directory)
        os._exit(3)

    with pytest.raises(WorkerCrashedError):
        ember.get(always_exits.remote(str(tmp_path)), timeout=60)
    assert _attempts(str(tmp_path)) == 3


def test_cluster_still_works_after_crashes(ember_shared):
    @ember.remote
    def ok(x):
        return x

    assert ember.get([ok.remote(i) for i in range(20)], timeout=60) == list(range(20))


# ============================================================================ application-error retries
def test_application_errors_are_not_retried_by_default(ember_shared, tmp_path):
    @ember.remote
    def fails(directory):
        _attempt(directory)
        raise ValueError("app error")

    with pytest.raises(ValueError):
        ember.get(fails.remote(str(tmp_path)))
    assert _attempts(str(tmp_path)) == 1


def test_retry_exceptions_true_retries_until_success(ember_shared, tmp_path):
    @ember.remote(max_retries=3, retry_exceptions=True)
    def flaky(directory):
        n = _attempt(directory)
        if n < 3:
            raise ValueError(f"attempt {n}")
        return n

    assert ember.get(flaky.remote(str(tmp_path)), timeout=60) == 3
    assert _attempts(str(tmp_path)) == 3


def test_retry_exceptions_true_gives_up_after_max_retries(ember_shared, tmp_path):
    @ember.remote
    def always_fails(directory):
        n = _attempt(directory)
        raise ValueError(f"attempt {n}")

    with pytest.raises(ValueError, match="attempt 3"):
        ember.get(always_fails.options(max_retries=2, retry_exceptions=True).remote(str(tmp_path)), timeout=60)
    assert _attempts(str(tmp_path)) == 3


def test_retry_exceptions_list_retries_only_listed_classes(ember_shared, tmp_path):
    @ember.remote
    def raise_kind(directory, kind):
        n = _attempt(directory)
        if n == 1:
            raise kind("first attempt")
        return n

    listed = tmp_path / "listed"
    listed.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    opts = {"max_retries": 2, "retry_exceptions": [KeyError, ValueError]}
    assert ember.get(raise_kind.options(**opts).remote(str(listed), ValueError), timeout=60) == 2
    with pytest.raises(TypeError, match="first attempt"):
        ember.get(raise_kind.options(**opts).remote(str(other), TypeError), timeout=60)
    assert _attempts(str(other)) == 1


def test_retry_exceptions_option_validation():
    @ember.remote
    def f():
        return 1

    with pytest.raises(TypeError, match="retry_exceptions"):
        f.options(retry_exceptions=[1, 2])
    with pytest.raises(TypeError, match="retry_exceptions"):
        f.options(retry_exceptions="ValueError")


# ============================================================================ cancellation
def test_cancel_task_waiting_for_its_arguments(ember_shared, tmp_path):
    ref_dir = tmp_path / "dep"
    ref_dir.mkdir()
    dep = report_pid_then_sleep.options(max_retries=0).remote(str(ref_dir))

    @ember.remote
    def consume(x):
        return x

    waiting = consume.remote(dep)
    ember.cancel(waiting)
    with pytest.raises(TaskCancelledError):
        ember.get(waiting, timeout=30)
    ember.cancel(dep, force=True)
    with pytest.raises(TaskCancelledError):
        ember.get(dep, timeout=30)


def test_cancelled_error_message_names_the_task_once(ember_shared):
    @ember.remote(resources={"no_such_resource": 1})
    def never_scheduled():
        return 1

    ref = never_scheduled.remote()
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError) as info:
        ember.get(ref, timeout=30)
    assert str(info.value) == f"Task {ref.task_id().hex()} was cancelled."
    assert info.value.task_id == ref.task_id().hex()


def test_objects_owned_by_a_dead_worker_raise_owner_died(ember_shared, tmp_path):
    from ember.exceptions import ObjectLostError, OwnerDiedError

    @ember.remote
    def put_inside(pid_file):
        small = ember.put("small value")
        large = ember.put(b"x" * (1024 * 1024))
        write_file_atomic(pid_file, str(os.getpid()))
        return [small, large]

    pid_file = str(tmp_path / "pid")
    small, large = ember.get(put_inside.remote(pid_file))
    pid = int(wait_for_file(pid_file))
    # Borrowed from a live owner: readable.
    assert ember.get(small) == "small value"
    os.kill(pid, signal.SIGKILL)
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)
    # The driver had fetched ``small`` already (cached); ``large`` was never fetched.
    with pytest.raises(OwnerDiedError) as info:
        ember.get(large, timeout=30)
    assert isinstance(info.value, ObjectLostError)
    assert large.hex() in str(info.value)
    assert "died" in str(info.value)


def test_cancel_queued_task_that_cannot_be_scheduled(ember_shared):
    @ember.remote(resources={"no_such_resource": 1})
    def never_scheduled():
        return 1

    ref = never_scheduled.remote()
    with pytest.raises(ember.exceptions.GetTimeoutError):
        ember.get(ref, timeout=0.2)
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)


def test_cancel_running_task(ember_shared, tmp_path):
    ref = report_pid_then_sleep.remote(str(tmp_path))
    pid = int(wait_for_file(str(tmp_path / "pid")))
    start = time.monotonic()
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)
    assert time.monotonic() - start < 30
    # A plain cancel interrupts the task but keeps the worker process.
    assert pid_alive(pid)


def test_force_cancel_running_task_kills_its_worker(ember_shared, tmp_path):
    ref = report_pid_then_sleep.remote(str(tmp_path))
    pid = int(wait_for_file(str(tmp_path / "pid")))
    ember.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)
    # A cancelled task is not retried even though its worker died.
    assert not os.path.exists(tmp_path / "retried")


def test_cancel_task_blocked_in_a_nested_get(ember_start, tmp_path):
    ember_start(num_cpus=2)
    worker = runtime.core_worker()

    @ember.remote
    def inner(directory):
        write_file_atomic(os.path.join(directory, "inner"), str(os.getpid()))
        time.sleep(120)

    @ember.remote
    def outer(directory):
        return ember.get(inner.remote(directory))

    ref = outer.remote(str(tmp_path))
    inner_pid = int(wait_for_file(str(tmp_path / "inner")))
    ember.cancel(ref, recursive=False)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)
    # The cancelled caller gave back its CPU; only the (not cancelled) inner task holds one.
    wait_for_condition(lambda: worker.raylet_call("get_info", None)["available"].get("CPU") == 1.0, timeout=10)
    assert pid_alive(inner_pid)
    assert ember.get(ember.remote(lambda: "still schedulable").remote(), timeout=30) == "still schedulable"


def test_cancel_finished_task_is_a_no_op(ember_shared):
    @ember.remote
    def done():
        return "done"

    ref = done.remote()
    assert ember.get(ref) == "done"
    ember.cancel(ref)
    ember.cancel(ref, force=True)
    assert ember.get(ref) == "done"


def test_cancel_rejects_non_refs(ember_shared):
    with pytest.raises(TypeError):
        ember.cancel("not a ref")


def test_cancelled_task_does_not_run_later(ember_shared, tmp_path):
    """A task cancelled while queued behind a busy worker never starts."""
    gate_dir = tmp_path / "busy"
    gate_dir.mkdir()
    ran = tmp_path / "ran"

    @ember.remote(num_cpus=2)
    def occupy_all(directory):
        write_file_atomic(os.path.join(directory, "pid"), str(os.getpid()))
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(directory, "release")) and time.monotonic() < deadline:
            time.sleep(0.005)
        return "released"

    @ember.remote
    def must_not_run(path):
        with open(path, "w") as f:
            f.write("ran")

    busy = occupy_all.remote(str(gate_dir))
    wait_for_file(str(gate_dir / "pid"))
    queued = must_not_run.remote(str(ran))
    ember.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ember.get(queued, timeout=30)
    write_file_atomic(str(gate_dir / "release"), "go")
    assert ember.get(busy, timeout=30) == "released"
    # Once CPUs are free, a later task runs, and the cancelled one still did not.
    assert ember.get(ember.remote(lambda: 1).remote(), timeout=30) == 1
    assert not ran.exists()


def test_worker_pid_of_crashed_task_is_replaced(ember_shared, tmp_path):
    """After a worker dies the node keeps its prestarted pool size."""
    worker = runtime.core_worker()
    ref = report_pid_then_sleep.options(max_retries=0).remote(str(tmp_path))
    pid = int(wait_for_file(str(tmp_path / "pid")))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError):
        ember.get(ref, timeout=60)

    def pool_refilled():
        workers = worker.raylet_call("get_info", None)["workers"]
        pids = {w["pid"] for w in workers}
        return pid not in pids and len(workers) >= 2

    wait_for_condition(pool_refilled, timeout=20)
