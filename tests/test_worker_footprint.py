"""An idle node keeps only forked workers: the ones started as fresh interpreters before the
fork server was ready are replaced by forks, which share the runtime's memory with it."""

from __future__ import annotations

import os
from typing import Any

import psutil

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition


@ember.remote
def getpid() -> int:
    return os.getpid()


def _workers_and_fork_server() -> tuple[list[int], int]:
    info = runtime.core_worker().raylet_call("get_info", None)
    fork_server = next(p["pid"] for p in info["processes"] if p["name"] == "fork server")
    return [w["pid"] for w in info["workers"] if w["state"] != "DEAD"], fork_server


def test_idle_fresh_interpreter_workers_are_replaced_by_forks(ember_start: Any, ember_env: Any) -> None:
    ember_env(idle_worker_kill_s=1)
    ember_start(num_cpus=2)
    first = ember.get(getpid.remote())
    workers, fork_server = _workers_and_fork_server()
    assert first in workers
    # Started before the fork server was ready: fresh interpreters, children of the node daemon.
    assert any(psutil.Process(pid).ppid() != fork_server for pid in workers)

    def all_forked() -> bool:
        pids, server = _workers_and_fork_server()
        return len(pids) == 2 and all(psutil.Process(pid).ppid() == server for pid in pids)

    wait_for_condition(all_forked, timeout=60)
    pids, server = _workers_and_fork_server()
    assert first not in pids
    # The forks run tasks like any worker, and a worker started now is a fork too.
    ran = set(ember.get([getpid.remote() for _ in range(20)]))
    assert all(psutil.Process(pid).ppid() == server for pid in ran)


def test_a_worker_that_owns_objects_is_not_replaced(ember_start: Any, ember_env: Any) -> None:
    ember_env(idle_worker_kill_s=1)
    ember_start(num_cpus=1)

    @ember.remote
    def put_and_return() -> tuple[int, list[ember.ObjectRef]]:
        return os.getpid(), [ember.put(b"x" * 1000)]

    owner, refs = ember.get(put_and_return.remote())
    # The other (idle, owning nothing) fresh workers are replaced; the owner stays while its object lives.
    wait_for_condition(lambda: all(
        psutil.Process(pid).ppid() == _workers_and_fork_server()[1]
        for pid in _workers_and_fork_server()[0] if pid != owner), timeout=60)
    assert owner in _workers_and_fork_server()[0]
    assert ember.get(refs[0]) == b"x" * 1000
