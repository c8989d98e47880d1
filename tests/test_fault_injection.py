"""Workloads stay correct while the transport loses and delays requests and replies.

``EMBER_testing_rpc_failure`` (``rpc/fault_injection.py``) makes callers lose a
request before it is sent or the reply after it came back, and resend after a
pause, so servers see real duplicates. Daemons and workers are new processes
and read the variable at start; the driver (this process) already imported the
module, so its fault table is patched in place (``fault_for`` reads the module's
``_faults`` at each call).
"""

from __future__ import annotations

import pytest

import ember
from ember.rpc import fault_injection

FAULTS = (
    "push_task=0.2:0.2:10,push_actor_task=0.2:0.2:10,request_lease=0.2:0.2:20,"
    "get_object=0.1:0.1:5,*=0:0:2"
)


@pytest.fixture
def faulty_cluster(ember_start, monkeypatch):
    monkeypatch.setenv("EMBER_testing_rpc_failure", FAULTS)
    monkeypatch.setenv("EMBER_testing_rpc_seed", "1234")
    monkeypatch.setattr(fault_injection, "_faults", fault_injection.parse(FAULTS))
    fault_injection.rng.seed(1234)
    return ember_start(num_cpus=2)


@ember.remote(max_retries=5)
def square(x):
    return x * x


@ember.remote(max_retries=5)
def tree(depth, index):
    """Sum of the leaf indexes below this node of a tree of fan-out 3."""
    if depth == 0:
        return index
    return sum(ember.get([tree.remote(depth - 1, index * 3 + i) for i in range(3)]))


@ember.remote(max_retries=5)
def blob(i):
    import numpy as np

    return np.full(50_000, i, dtype=np.int64)  # 400 KB: stored in the object store, fetched by get_object


@ember.remote(max_restarts=0, max_task_retries=3)
class Log:
    def __init__(self):
        self.items = []

    def append(self, item):
        self.items.append(item)
        return len(self.items)

    def items_so_far(self):
        return list(self.items)


@ember.remote
def faults_here():
    from ember.rpc import fault_injection as fi

    return fi.fault_for("push_task"), fi.fault_for("some_other_method")


def test_fault_injection_is_active_in_the_driver_and_the_workers(faulty_cluster):
    expected = (fault_injection.Fault(0.2, 0.2, 10), fault_injection.Fault(0, 0, 2))
    assert (fault_injection.fault_for("push_task"), fault_injection.fault_for("some_other_method")) == expected
    assert tuple(ember.get(faults_here.remote(), timeout=60)) == expected


def test_tasks_are_correct_under_lost_and_delayed_messages(faulty_cluster):
    assert ember.get([square.remote(i) for i in range(1000)], timeout=120) == [i * i for i in range(1000)]
    # Nested tasks: 3 levels of fan-out 3 (27 leaves), each level submitting from a worker.
    assert ember.get(tree.remote(3, 0), timeout=120) == sum(range(27))
    blobs = ember.get([blob.remote(i) for i in range(10)], timeout=120)
    assert [int(b[0]) for b in blobs] == list(range(10)) and all(int(b.sum()) == 50_000 * i for i, b in enumerate(blobs))


def test_actor_calls_run_once_each_and_in_order_under_lost_messages(faulty_cluster):
    log = Log.remote()
    results = ember.get([log.append.remote(i) for i in range(500)], timeout=120)
    assert results == list(range(1, 501))  # each call ran exactly once, in submission order
    assert ember.get(log.items_so_far.remote(), timeout=60) == list(range(500))
    ember.kill(log)
