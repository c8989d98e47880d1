"""Every port a cluster opens survives hostile or broken peers, and secrets stay secret.

Targets: the control service, the node daemon, a worker's core-worker server
and the driver's own core-worker server. After each attack the target must
still answer an authenticated ``ping`` and the cluster must still run tasks.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time

import psutil
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition
from ember.exceptions import ErrorCode
from ember.rpc import connect
from ember.rpc.framing import (
    ERROR,
    HELLO_MAGIC,
    NOTIFY,
    REPLY,
    REQUEST,
    FrameDecoder,
    decode_body,
    encode,
)

TARGETS = ["gcs", "raylet", "worker", "driver"]


@ember.remote
def worker_address():
    from ember._private import runtime as rt

    address = rt.core_worker().address
    return address[0], address[1], os.getpid()


@ember.remote
def square(x):
    return x * x


def _target(name):
    worker = runtime.core_worker()
    if name == "gcs":
        host, port = worker.gcs_address.rsplit(":", 1)
        return host, int(port)
    if name == "raylet":
        host, port = worker.raylet_address.rsplit(":", 1)
        return host, int(port)
    if name == "driver":
        return worker.address[0], worker.address[1]
    host, port, _pid = ember.get(worker_address.remote())
    return host, port


def _ping(address):
    """An authenticated request to ``address`` gets its reply."""
    token = runtime.core_worker().token

    async def run():
        conn = await connect(address, token, timeout=5)
        try:
            return await conn.call("ping", None, 5)
        finally:
            conn.close()

    return asyncio.run(run())


def _assert_healthy(address):
    assert _ping(address) == "pong"
    assert ember.get(square.remote(7), timeout=30) == 49
    nodes = ember.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"]


def _read_until_closed(sock, timeout=10.0):
    """Everything the peer sends until it closes the connection (fails if it never does)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            raise AssertionError(f"the peer did not close the connection within {timeout}s") from None
        if not chunk:
            return data
        data += chunk
        if time.monotonic() > deadline:
            raise AssertionError("the peer kept the connection open")


def _frames(data):
    return [decode_body(body) for body in FrameDecoder(1 << 30).feed(data)]


def _open(address):
    return socket.create_connection(address, timeout=5)


def _hello(sock, token):
    sock.sendall(encode([HELLO_MAGIC, token, {"role": "test"}]))
    decoder = FrameDecoder(1 << 20)
    sock.settimeout(10)
    while True:
        chunk = sock.recv(65536)
        assert chunk, "connection closed during the hello"
        frames = decoder.feed(chunk)
        if frames:
            return decode_body(frames[0]), decoder


# ============================================================================ before authentication
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x00\x00\x00\x03\xc1\xc1\xc1",  # a small frame that is not msgpack
        encode(["not a hello"]),  # valid msgpack, wrong shape
        encode([HELLO_MAGIC, 12345, {}]),  # token of the wrong type
        encode([HELLO_MAGIC, "", {}]) + b"\xff" * 64,
        bytes(range(256)) * 4,
    ],
    ids=["http", "bad-msgpack", "not-hello", "int-token", "empty-token", "binary"],
)
def test_garbage_before_hello_is_rejected(ember_shared, target, garbage):
    address = _target(target)
    with _open(address) as sock:
        sock.sendall(garbage)
        reply = _read_until_closed(sock)
    for frame in _frames(reply):
        assert frame[0] != "OK", "garbage was accepted as a hello"
    _assert_healthy(address)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("declared", [2**31, 2**32 - 1, 4097])
def test_oversized_frame_before_hello_is_rejected_without_buffering(ember_shared, target, declared):
    address = _target(target)
    with _open(address) as sock:
        # Only the header: the daemon must refuse from the declared length alone.
        sock.sendall(declared.to_bytes(4, "big"))
        assert _read_until_closed(sock) == b""
    _assert_healthy(address)


@pytest.mark.parametrize("target", TARGETS)
def test_wrong_token_gets_denied_and_closed(ember_shared, target):
    address = _target(target)
    with _open(address) as sock:
        sock.sendall(encode([HELLO_MAGIC, "not-the-cluster-token", {}]))
        frames = _frames(_read_until_closed(sock))
    assert len(frames) == 1
    assert frames[0][0] == "DENIED"
    assert "token" in frames[0][1]
    _assert_healthy(address)


@pytest.mark.parametrize("target", ["gcs", "raylet"])
def test_wrong_token_through_the_client_raises_authentication_error(ember_shared, target):
    from ember.exceptions import AuthenticationError

    address = _target(target)

    async def run():
        await connect(address, "wrong-token", timeout=5)

    with pytest.raises(AuthenticationError, match="token"):
        asyncio.run(run())
    _assert_healthy(address)


@pytest.mark.parametrize("target", TARGETS)
def test_request_before_hello_is_not_dispatched(ember_shared, target):
    address = _target(target)
    with _open(address) as sock:
        sock.sendall(encode([REQUEST, 1, "ping", None]))
        frames = _frames(_read_until_closed(sock))
    assert all(f[0] not in (REPLY, "OK") for f in frames)
    _assert_healthy(address)


def test_many_idle_unauthenticated_connections_do_not_block_clients(ember_shared):
    address = _target("gcs")
    socks = [_open(address) for _ in range(50)]
    try:
        _assert_healthy(address)
        assert _ping(_target("raylet")) == "pong"
    finally:
        for sock in socks:
            sock.close()


# ============================================================================ after authentication
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x00\x02\xc1\xc1",  # a frame that is not msgpack
        b"\x00\x00\x00\x03\x93\x00\x01",  # an array announcing 3 items with 2
        encode([99, "unknown kind"]),
        encode("a bare string"),
        encode([]),
    ],
    ids=["bad-msgpack", "truncated-msgpack", "unknown-kind", "not-array", "empty-array"],
)
def test_authenticated_malformed_frame_closes_only_that_connection(ember_shared, target, payload):
    address = _target(target)
    token = runtime.core_worker().token
    with _open(address) as sock:
        reply, _ = _hello(sock, token)
        assert reply[0] == "OK"
        sock.sendall(payload)
        _read_until_closed(sock)
    _assert_healthy(address)


@pytest.mark.parametrize("target", TARGETS)
def test_authenticated_truncated_frame_then_disconnect(ember_shared, target):
    address = _target(target)
    token = runtime.core_worker().token
    with _open(address) as sock:
        reply, _ = _hello(sock, token)
        assert reply[0] == "OK"
        frame = encode([REQUEST, 1, "ping", None])
        sock.sendall(frame[: len(frame) - 3])  # the body never completes
        sock.shutdown(socket.SHUT_WR)
        _read_until_closed(sock)
    _assert_healthy(address)


@pytest.mark.parametrize("target", TARGETS)
def test_authenticated_oversized_frame_is_rejected(ember_shared, target):
    from ember._private.config import config

    address = _target(target)
    token = runtime.core_worker().token
    with _open(address) as sock:
        reply, _ = _hello(sock, token)
        assert reply[0] == "OK"
        sock.sendall((config().max_frame_bytes + 1).to_bytes(4, "big"))
        _read_until_closed(sock)
    _assert_healthy(address)


@pytest.mark.parametrize("target", TARGETS)
def test_unknown_methods_and_bad_payloads_get_error_replies(ember_shared, target):
    address = _target(target)
    token = runtime.core_worker().token
    with _open(address) as sock:
        reply, decoder = _hello(sock, token)
        assert reply[0] == "OK"
        sock.sendall(
            encode([REQUEST, 1, "no_such_method", None])
            + encode([REQUEST, 2, "_private_method", None])
            + encode([REQUEST, 3, "kv_get" if target == "gcs" else "get_object", 12345])
            + encode([NOTIFY, "no_such_notification", None])
            + encode([REQUEST, 4, "ping", None])
        )
        replies = {}
        sock.settimeout(10)
        while len(replies) < 4:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after replies {replies}"
            for body in decoder.feed(chunk):
                message = decode_body(body)
                replies[message[1]] = message
    assert replies[1][0] == ERROR and replies[1][2] == ErrorCode.NO_SUCH_METHOD
    assert replies[2][0] == ERROR and replies[2][2] == ErrorCode.NO_SUCH_METHOD
    assert replies[3][0] == ERROR
    assert replies[4] == [REPLY, 4, "pong"]
    _assert_healthy(address)


def test_silent_connection_is_dropped_after_the_handshake_timeout(ember_start, ember_env):
    ember_env(handshake_timeout_s=0.5)
    ember_start(num_cpus=1)
    for name in ("gcs", "raylet"):
        address = _target(name)
        with _open(address) as sock:
            start = time.monotonic()
            assert _read_until_closed(sock, timeout=10) == b""
            assert time.monotonic() - start < 9
        _assert_healthy(address)


# ============================================================================ secrets and exposure
def test_token_file_is_private(ember_shared):
    worker = runtime.core_worker()
    path = os.path.join(worker.session_dir, "token")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, oct(mode)
    with open(path) as f:
        assert f.read().strip() == worker.token
    assert len(worker.token) >= 32


def test_token_is_not_in_a_tasks_environment(ember_shared):
    @ember.remote
    def env_has_token():
        return "EMBER_TOKEN" in os.environ, [k for k, v in os.environ.items() if v == token_value]

    token_value = runtime.core_worker().token
    has_key, keys_with_value = ember.get(env_has_token.remote())
    assert not has_key
    assert keys_with_value == []


def test_daemons_listen_on_localhost_only(ember_shared):
    worker = runtime.core_worker()
    assert worker.gcs_address.startswith("127.0.0.1:")
    assert worker.raylet_address.startswith("127.0.0.1:")
    assert worker.address[0] == "127.0.0.1"
    ember.get([square.remote(i) for i in range(4)])
    info = worker.raylet_call("get_info", None)
    from conftest import _shared  # the shared cluster's daemon processes

    pids = {proc.pid for _name, proc in _shared["nodes"].procs}
    pids |= {w["pid"] for w in info["workers"]}
    pids.add(os.getpid())
    seen = 0
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                seen += 1
                assert conn.laddr.ip in ("127.0.0.1", "::1"), f"pid {pid} listens on {conn.laddr}"
    assert seen >= 3  # control service, node daemon, driver (and each worker)


def test_worker_port_is_not_reachable_from_other_interfaces(ember_shared):
    addresses = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    _, port = _target("gcs")
    with pytest.raises(OSError):
        socket.create_connection((addresses[0], port), timeout=2).close()


def test_cluster_survives_a_burst_of_attacks(ember_shared):
    token = runtime.core_worker().token
    addresses = [_target(t) for t in TARGETS]
    for address in addresses:
        for payload in (b"\xff" * 10, (2**31).to_bytes(4, "big"), encode([HELLO_MAGIC, "x", {}])):
            with _open(address) as sock:
                sock.sendall(payload)
                _read_until_closed(sock)
        with _open(address) as sock:
            assert _hello(sock, token)[0][0] == "OK"
    wait_for_condition(lambda: all(_ping(a) == "pong" for a in addresses), timeout=10)
    assert ember.get([square.remote(i) for i in range(10)]) == [i * i for i in range(10)]


def test_node_daemon_rejects_a_negative_object_size(ember_shared):
    worker = runtime.core_worker()
    address = _target("raylet")
    before = worker.raylet_call("store_stats", None)["used"]
    with _open(address) as sock:
        reply, decoder = _hello(sock, worker.token)
        assert reply[0] == "OK"
        sock.sendall(encode([REQUEST, 1, "create_object", {"object_id": b"\x01" * 20, "size": -(10**9), "owner": b"\x02" * 16}]))
        sock.settimeout(10)
        answer = None
        while answer is None:
            chunk = sock.recv(65536)
            assert chunk, "connection closed without a reply"
            for body in decoder.feed(chunk):
                answer = decode_body(body)
    try:
        assert answer[0] == ERROR, answer
    finally:
        # Undo the bogus reservation so the shared cluster's accounting is sane again.
        if answer and answer[0] == REPLY:
            worker.io.run(worker.raylet.call("free_objects", {"object_ids": [b"\x01" * 20]}))
    assert worker.raylet_call("store_stats", None)["used"] == before
