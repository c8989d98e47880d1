"""Every default worker is a fork of the node's fork server, from the first task on: forks share
the runtime's memory with it (~10 MiB PSS each instead of ~20 for a fresh interpreter), and the
fork server, started before the node daemon's own imports, is ready before any lease needs it."""

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


def test_the_first_tasks_worker_and_the_prestarted_ones_are_forks(ember_start: Any) -> None:
    ember_start(num_cpus=2)
    first = ember.get(getpid.remote())
    _, fork_server = _workers_and_fork_server()
    assert psutil.Process(first).ppid() == fork_server, "the first task ran in a fork"
    # The prestarted pool (one per CPU) fills with forks too.
    wait_for_condition(lambda: len(_workers_and_fork_server()[0]) >= 2, timeout=30)
    workers, fork_server = _workers_and_fork_server()
    assert all(psutil.Process(pid).ppid() == fork_server for pid in workers)
    ran = set(ember.get([getpid.remote() for _ in range(20)]))
    assert all(psutil.Process(pid).ppid() == fork_server for pid in ran)
