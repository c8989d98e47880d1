"""Hostile or mistaken input gets a clear error and leaves the driver usable.

* a value nested 100,000 levels deep cannot be serialized: ``put``, task and
  actor arguments and task results fail with an error naming the problem;
* a 1 GiB numpy argument goes through the object store intact;
* a message larger than the frame limit is refused by the sender (with a clear
  error, not a dropped connection), and a peer that sends one anyway is cut
  off without harm to the daemon;
* bad options fail at once with a message naming the option.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

import ember
from ember._private import runtime
from ember._private.processes import pid_alive
from ember._private.test_utils import wait_for_condition
from ember.exceptions import FrameError, RayTaskError
from ember.rpc import framing
from ember.rpc.connection import parse_address

MiB = 1024 * 1024
GiB = 1024 * MiB
DEPTH = 100_000


def _deep(kind: str = "list") -> object:
    value: object = []
    for _ in range(DEPTH):
        value = [value] if kind == "list" else {"k": value}
    return value


@ember.remote
def echo(x=None):
    return x


@ember.remote
def make_deep():
    value = []
    for _ in range(DEPTH):
        value = [value]
    return value


@ember.remote
class Holder:
    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(x)
        return len(self.items)


# ============================================================================ deep values
def test_deeply_nested_values_fail_with_a_clear_serialization_error(ember_shared):
    holder = Holder.remote()
    assert ember.get(holder.add.remote(1)) == 1
    for kind in ("list", "dict"):
        value = _deep(kind)
        with pytest.raises(TypeError, match="put\\(\\).*deep recursion"):
            ember.put(value)
        with pytest.raises(TypeError, match="argument 0 of echo\\(\\).*deep recursion"):
            echo.remote(value)
        with pytest.raises(TypeError, match="keyword argument 'x' of echo\\(\\).*deep recursion"):
            echo.remote(x=[1, value])
        with pytest.raises(TypeError, match="add\\(\\).*deep recursion"):
            holder.add.remote(value)
        del value
    # A task whose *result* is too deep fails that task only, with the same explanation.
    with pytest.raises(RayTaskError, match="deep recursion") as info:
        ember.get(make_deep.remote(), timeout=60)
    assert isinstance(info.value, TypeError)
    # Nothing was half-submitted or broken: the driver, the actor and the workers carry on.
    assert ember.get(echo.remote(41), timeout=30) == 41
    assert ember.get(holder.add.remote(2), timeout=30) == 2
    assert ember.get(ember.put([[[1]]])) == [[[1]]]
    ember.kill(holder)


# ============================================================================ a 1 GiB argument
@ember.remote
def checksum(a):
    return a.nbytes, int(a.sum()), int(a[123_457]), a.flags.writeable


def test_one_gib_numpy_argument(ember_start):
    ember_start(num_cpus=1, object_store_memory=3 * GiB)
    a = np.arange(GiB // 8, dtype=np.int64)
    a[123_457] = -7
    expected = (a.nbytes, int(a.sum()), -7, False)  # read zero-copy from the store: read-only
    ref = checksum.remote(a)
    assert ember.get(ref, timeout=120) == expected
    del a, ref
    worker = runtime.core_worker()
    # The argument's copy in the store is freed once the task is done with it.
    wait_for_condition(lambda: worker.raylet_call("store_stats", None)["used"] == 0, timeout=30)


# ============================================================================ oversized messages
def test_oversized_messages_are_refused_and_the_driver_stays_usable(ember_start, monkeypatch, request):
    from ember._private.config import reset_config

    limit = MiB
    monkeypatch.setenv("EMBER_max_frame_bytes", str(limit))  # daemons and workers inherit it
    reset_config()
    request.addfinalizer(reset_config)
    ember_start(num_cpus=1)
    worker = runtime.core_worker()
    holder = Holder.remote()
    assert ember.get(holder.add.remote("a"), timeout=30) == 1

    # A function that captures more than a message can carry: refused, with what to do instead.
    big = b"x" * (2 * limit)

    @ember.remote
    def captures_big():
        return len(big)

    with pytest.raises(ValueError, match="too large to export.*ember.put"):
        captures_big.remote()
    # A raw control-service call that is too large fails alone; the connection stays up.
    with pytest.raises(FrameError, match="larger than the frame limit"):
        worker.gcs_call("kv_put", {"ns": "test", "key": b"big", "value": big})
    assert worker.gcs_call("kv_get", {"ns": "test", "key": b"big"}) is None

    # Large values do not travel in messages at all: arguments and put go through the store.
    assert ember.get(echo.remote(big), timeout=30) == big
    assert ember.get(ember.put(big), timeout=30) == big
    # The driver's job was not ended by any of this: its actor is alive, tasks run.
    assert ember.get(holder.add.remote("b"), timeout=30) == 2
    assert ember.get(echo.remote(1), timeout=30) == 1
    assert all(n["Alive"] for n in ember.nodes())

    # A peer that sends an oversized frame anyway is cut off; the daemon lives on.
    gcs_pid = worker.gcs_call("cluster_info", None)["pid"]
    host, port = parse_address(worker.gcs_address)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(framing.encode([framing.HELLO_MAGIC, worker.token, {"role": "test"}]))
        decoder = framing.FrameDecoder(limit)
        replies: list[object] = []
        while not replies:
            chunk = sock.recv(65536)
            assert chunk, "the control service closed the connection instead of answering the hello"
            replies = [framing.decode_body(body) for body in decoder.feed(chunk)]
        assert replies[0][0] == "OK", replies
        sock.sendall((limit + 1).to_bytes(4, "big") + b"\0" * 1024)
        try:
            closed = sock.recv(65536) == b""
        except ConnectionResetError:
            closed = True
        assert closed  # cut off at the oversized frame, before it was buffered
    assert pid_alive(gcs_pid)
    assert ember.get(holder.add.remote("c"), timeout=30) == 3
    assert len(ember.nodes()) == 1
    ember.kill(holder)


# ============================================================================ bad options
@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: echo.options(num_cpus=-1), ValueError, "num_cpus= must be a number >= 0"),
        (lambda: echo.options(num_cpus="two"), ValueError, "num_cpus= must be a number"),
        (lambda: echo.options(memory=-5), ValueError, "memory= must be a number >= 0"),
        (lambda: echo.options(resources={"CPU": 1}), ValueError, "Use num_cpus="),
        (lambda: echo.options(resources={"disk": -1}), ValueError, "resources\\['disk'\\]= must be a number >= 0"),
        (lambda: echo.options(num_returns=-1), ValueError, "num_returns= must be an integer >= 0"),
        (lambda: echo.options(max_retries="x"), ValueError, "max_retries= must be an integer >= -1"),
        (lambda: echo.options(scheduling_strategy="BOGUS"), ValueError, "Unknown scheduling_strategy 'BOGUS'"),
        (lambda: echo.options(bogus=1), ValueError, "Invalid option keyword 'bogus' for remote functions"),
        (lambda: echo.options(max_restarts=1), ValueError, "Invalid option keyword 'max_restarts'"),
        (lambda: Holder.options(max_restarts=-2), ValueError, "max_restarts= must be an integer >= -1"),
        (lambda: Holder.options(max_concurrency=0), ValueError, "max_concurrency= must be an integer >= 1"),
        (lambda: Holder.options(lifetime="forever"), ValueError, "lifetime= must be 'detached'"),
        (lambda: Holder.options(name=5), TypeError, "name= must be a non-empty string"),
        (lambda: ember.remote(num_cpus="a")(lambda: 1), ValueError, "num_cpus= must be a number"),
        (lambda: ember.remote(5), TypeError, "@ember.remote decorator"),
        (lambda: echo(), TypeError, "try 'echo.remote\\(\\)'"),
        (lambda: echo.remote(1, 2), TypeError, "too many positional arguments"),
    ],
)
def test_bad_options_fail_at_once_with_a_clear_message(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_api_arguments_fail_with_a_clear_message(ember_shared):
    ref = echo.remote(1)
    cases = [
        (lambda: ember.get(5), TypeError, "get\\(\\) expects an ObjectRef"),
        (lambda: ember.get([ref, 5]), TypeError, "element 1"),
        (lambda: ember.get(ref, timeout=-1), ValueError, "timeout= must be None or >= 0"),
        (lambda: ember.wait([ref], num_returns=2), ValueError, "num_returns=2 is larger"),
        (lambda: ember.wait([1]), TypeError, "wait\\(\\) expects a list of ObjectRefs"),
        (lambda: ember.put(ref), TypeError, "Calling put\\(\\) on an ObjectRef is not allowed"),
        (lambda: ember.cancel(5), TypeError, "cancel\\(\\) expects an ObjectRef"),
        (lambda: ember.kill(5), ValueError, "expects an actor handle"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()
    assert ember.get(ref) == 1
