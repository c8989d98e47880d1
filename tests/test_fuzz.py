"""Every listening port survives random, truncated, bit-flipped and oversized frames.

For each port (control service, node daemon, a worker, the driver itself) a
seeded generator sends at least ``FRAMES_PER_PORT`` frames over many
connections: before authentication (no hello, broken hellos, wrong tokens,
oversized declared lengths) and after a valid hello (random bodies,
well-formed messages of unknown kinds and methods, harmless requests with
random payloads, bit flips in bodies and headers, truncated and oversized
frames). A connection is reused until the server closes it, then a new one is
opened. Afterwards: every daemon is alive, its memory did not grow without
bound, and a legitimate client is still served. An unauthenticated client is
told why (``DENIED``) and changes nothing.

Reproduce a run with the same ``SEED`` (the generator of each port is seeded
with ``SEED`` and the port's role).
"""

from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import msgspec.inspect as mi
import psutil
from protocol_helpers import valid_payload

import ember
from ember._private import runtime
from ember._private.config import config
from ember._private.processes import pid_alive
from ember._private.test_utils import wait_for_condition
from ember.exceptions import ErrorCode, FrameError
from ember.protocol import Service, methods_of
from ember.rpc import framing
from ember.rpc.connection import parse_address
from ember.rpc.framing import ERROR, HELLO_MAGIC, NOTIFY, REPLY, REQUEST

SEED = int(os.environ.get("EMBER_FUZZ_SEED", "20241122"))
FRAMES_PER_PORT = 10_000
MiB = 1024 * 1024
#: Requests that only read, per role: fuzzed payloads must not change the cluster.
HARMLESS = {
    "gcs": ["ping", "get_nodes", "get_node_addresses", "cluster_info", "kv_get", "kv_keys", "get_named_actor",
            "list_actors", "get_jobs", "placement_group_table", "list_named_actors"],
    "raylet": ["ping", "get_info", "store_stats", "list_clients"],
    "worker": ["ping", "memory_table"],
    "driver": ["ping", "memory_table"],
}
#: Read-only requests with a typed payload, per role: valid payloads with one thing wrong.
TYPED_HARMLESS = {
    "gcs": ["kv_get", "kv_keys", "get_named_actor", "list_named_actors"],
    "raylet": ["list_logs", "read_log"],
    "worker": ["get_object"],
    "driver": ["get_object"],
}
SERVICE_OF = {"gcs": Service.GCS, "raylet": Service.RAYLET, "worker": Service.CORE_WORKER,
              "driver": Service.CORE_WORKER}


@dataclass
class Target:
    role: str
    address: tuple[str, int]
    pid: int
    frames: int = 0
    connections: int = 0
    denied: int = 0
    replies: int = 0
    protocol_errors: int = 0
    closed_by_server: int = 0
    notes: list[str] = field(default_factory=list)


def _enc(message: Any) -> bytes:
    return framing.encode(message)


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _random_obj(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 3:
        return rng.random() * 1e6
    if kind == 4:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.randbytes(rng.randrange(64))
    if kind == 6:
        return [_random_obj(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 7:
        return {str(_random_obj(rng, 3)): _random_obj(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"ns": "fuzz", "key": rng.randbytes(8), "name": "fuzz", "prefix": rng.randbytes(2), "namespace": "fuzz"}


def _flip(rng: random.Random, data: bytes, start: int = 0) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(start, len(buf)) if len(buf) > start else 0
        if buf:
            buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


# ----------------------------------------------------------------------------- frame generators
def _typed_mutation(rng: random.Random, role: str) -> tuple[str, Any]:
    """A harmless typed method and a payload that breaks its declared type in one way: a field of
    the wrong type, a missing field, an unknown field, or another method's payload."""
    name = rng.choice(TYPED_HARMLESS[role])
    request = methods_of(SERVICE_OF[role])[name].request
    if not isinstance(request, type):  # e.g. ``ListLogs | None``
        request = next(t for t in request.__args__ if t is not type(None))
    payload = valid_payload(request)
    fields = mi.type_info(request).fields
    how = rng.randrange(4)
    if how == 0 and fields:
        field = rng.choice(fields).encode_name
        payload[field] = rng.choice(["text", -5, 2.5, True, None, b"\x00", [1], {"k": 1}, 2**64 - 1])
    elif how == 1 and fields:
        payload.pop(rng.choice(fields).encode_name, None)
    elif how == 2:
        payload["fuzz_" + str(rng.randrange(100))] = _random_obj(rng, 2)
    else:
        other = rng.choice([m for m in methods_of(SERVICE_OF[role]).values() if isinstance(m.request, type)])
        payload = valid_payload(other.request)
    return name, payload


def _pre_auth_batch(rng: random.Random, token: str) -> tuple[list[bytes], bool]:
    """Frames for a fresh, unauthenticated connection; True if a DENIED reply is required."""
    hello = _enc([HELLO_MAGIC, token, {"role": "fuzz"}])
    kind = rng.randrange(10)
    if kind == 0:  # raw random bytes, no framing
        return [rng.randbytes(rng.randrange(1, 5000))], False
    if kind == 1:  # framed random body within the hello limit
        return [_frame(rng.randbytes(rng.randrange(0, 4000)))], False
    if kind == 2:  # declared length above the hello limit
        return [rng.randint(4097, 2**32 - 1).to_bytes(4, "big") + rng.randbytes(rng.randrange(100))], False
    if kind == 3:  # a truncated hello
        return [hello[: rng.randrange(1, len(hello))]], False
    if kind == 4:  # a bit-flipped hello (possibly still valid), then some messages
        return [_flip(rng, hello, 4)] + [_enc([REQUEST, i, "ping", None]) for i in range(rng.randrange(3))], False
    if kind == 5:  # a well-formed hello with a wrong token: must be told why
        wrong = rng.choice(["", "x" * len(token), token[:-1], token + "0", rng.randbytes(8).hex()])
        return [_enc([HELLO_MAGIC, wrong, {"role": "fuzz"}])], True
    if kind == 6:  # malformed hellos
        bad = rng.choice([
            [HELLO_MAGIC, token], [HELLO_MAGIC, token, {}, 1], ["EMBER/2", token, {}], [HELLO_MAGIC, 5, {}],
            [HELLO_MAGIC, token, []], [HELLO_MAGIC, token.encode(), {}], {"hello": token}, 7, "EMBER/1", [],
        ])
        return [_enc(bad)], False
    if kind == 7:  # a request before any hello
        return [_enc([REQUEST, 1, rng.choice(["kv_put", "kill_worker", "ping"]), _random_obj(rng)])], False
    if kind == 8:  # many small frames at once
        return [_frame(rng.randbytes(rng.randrange(0, 40))) for _ in range(rng.randrange(2, 20))], False
    return [_enc(_random_obj(rng))], False


def _post_auth_frame(rng: random.Random, role: str, msg_id: int) -> tuple[bytes, bool]:
    """One frame for an authenticated connection; True if it ends the batch (the framing may break)."""
    # Mostly frames the server must answer or ignore, so connections live long enough to matter.
    kind = rng.choices(range(17), weights=[1, 6, 6, 4, 2, 3, 3, 1, 4, 1, 1, 1, 0.3, 1, 1, 2, 5])[0]
    if kind == 0:  # framed random body
        return _frame(rng.randbytes(rng.randrange(0, 2000))), False
    if kind == 1:  # a harmless request with a random payload
        return _enc([REQUEST, msg_id, rng.choice(HARMLESS[role]), _random_obj(rng)]), False
    if kind == 2:  # a harmless request with a plausible payload
        return _enc([REQUEST, msg_id, rng.choice(HARMLESS[role]), _random_obj(rng, 3) if rng.random() < .5 else None]), False
    if kind == 3:  # unknown method
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randrange(1, 20)))
        return _enc([REQUEST, msg_id, "fuzz_" + name, _random_obj(rng)]), False
    if kind == 4:  # private names must not be reachable
        return _enc([REQUEST, msg_id, rng.choice(["__init__", "_schedule", "_restore", "__class__"]), None]), False
    if kind == 5:  # replies and errors for calls never made
        return _enc(rng.choice([[REPLY, rng.randint(0, 2**40), _random_obj(rng)],
                                [ERROR, rng.randint(0, 2**40), "Code", "message"]])), False
    if kind == 6:  # notifications of unknown methods
        return _enc([NOTIFY, "fuzz_" + str(rng.randrange(1000)), _random_obj(rng)]), False
    if kind == 7:  # unknown kinds, wrong arity, wrong types
        return _enc(rng.choice([[9, 1, "ping", None], [REQUEST, 1, 5, None], [REQUEST, 1], [NOTIFY, 5, 1], [], {"a": 1},
                                [REPLY], [ERROR, [1], "c", "m"], [REQUEST, {"id": 1}, "ping", None], "text", 3.5])), False
    if kind == 8:  # a bit-flipped valid request (body only: the framing holds)
        good = _enc([REQUEST, msg_id, rng.choice(HARMLESS[role]), None])
        return _flip(rng, good, 4), False
    if kind == 9:  # a bit-flipped header
        good = _enc([REQUEST, msg_id, "ping", None])
        return _flip(rng, good[:4]) + good[4:], True
    if kind == 10:  # a truncated frame (we close after it)
        good = _enc([REQUEST, msg_id, "ping", _random_obj(rng)])
        return good[: rng.randrange(1, len(good))], True
    if kind == 11:  # declared length above the frame limit
        return rng.randint(config().max_frame_bytes + 1, 2**32 - 1).to_bytes(4, "big") + rng.randbytes(64), True
    if kind == 12:  # a large frame within the limit (buffered, then rejected as undecodable or ignored)
        return _frame(rng.randbytes(rng.randrange(64 * 1024, 1 * MiB))), False
    if kind == 13:  # raw random bytes: the framing breaks
        return rng.randbytes(rng.randrange(1, 200)), True
    if kind == 14:  # deep nesting inside a valid message
        payload: Any = []
        for _ in range(rng.randrange(100, 5000)):
            payload = [payload]
        try:
            return _enc([REQUEST, msg_id, "ping", payload]), False
        except FrameError:  # too deep to encode: send the same bytes by hand
            depth = rng.randrange(100, 5000)
            return _frame(b"\x94\x00" + msgpack.packb(msg_id) + b"\xa4ping" + b"\x91" * depth + b"\x90"), False
    if kind == 16:  # a typed request with one field wrong, missing or unknown
        name, payload = _typed_mutation(rng, role)
        return _enc([REQUEST, msg_id, name, payload]), False
    return _enc([REQUEST, msg_id, "ping", None]), False


# ----------------------------------------------------------------------------- the client side
def _read_until(sock: socket.socket, decoder: framing.FrameDecoder, want_id: int | None, timeout: float,
                target: Target) -> tuple[bool, list[Any]]:
    """Read frames until the reply to ``want_id`` arrives (True) or the server closes (False)."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{target.role} neither answered nor closed the connection within {timeout}s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        except socket.timeout:
            continue
        if not chunk:
            target.closed_by_server += 1
            return False, seen
        for body in decoder.feed(chunk):
            message = framing.decode_body(body)
            seen.append(message)
            if isinstance(message, list) and len(message) >= 2 and message[0] in (REPLY, ERROR):
                target.replies += 1
                if message[0] == ERROR and len(message) > 2 and message[2] == ErrorCode.PROTOCOL_ERROR:
                    target.protocol_errors += 1
                if message[1] == want_id:
                    return True, seen
            if isinstance(message, list) and message[:1] == ["DENIED"]:
                target.denied += 1


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def _connect(target: Target) -> socket.socket:
    sock = socket.create_connection(target.address, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    target.connections += 1
    return sock


def _fuzz_pre_auth(target: Target, token: str, rng: random.Random, frames: int) -> None:
    while target.frames < frames:
        batch, must_deny = _pre_auth_batch(rng, token)
        with _connect(target) as sock:
            if not _send(sock, b"".join(batch)):
                target.frames += len(batch)
                continue
            target.frames += len(batch)
            sock.shutdown(socket.SHUT_WR)  # nothing more: the server must answer or close, not wait
            denied_before = target.denied
            _read_until(sock, framing.FrameDecoder(1 << 20), None, 10.0, target)
            if must_deny:
                assert target.denied == denied_before + 1, f"{target.role}: a wrong token was not answered with DENIED"


def _fuzz_post_auth(target: Target, token: str, rng: random.Random, frames: int) -> None:
    ids = iter(range(10, 1 << 62))
    sock: socket.socket | None = None
    decoder = framing.FrameDecoder(1 << 30)
    try:
        while target.frames < frames:
            if sock is None:
                sock = _connect(target)
                decoder = framing.FrameDecoder(1 << 30)
                sock.sendall(_enc([HELLO_MAGIC, token, {"role": "fuzz"}]))
                sock.settimeout(10)
                replies: list[Any] = []
                while not replies:
                    chunk = sock.recv(65536)
                    assert chunk, f"{target.role} closed a connection with a valid hello"
                    replies = [framing.decode_body(b) for b in decoder.feed(chunk)]
                assert replies[0][0] == "OK", replies
            batch = []
            terminal = False
            for _ in range(rng.randrange(1, 40)):
                frame, terminal = _post_auth_frame(rng, target.role, next(ids))
                batch.append(frame)
                if terminal:
                    break
            sentinel = next(ids)
            ok = _send(sock, b"".join(batch) + (b"" if terminal else _enc([REQUEST, sentinel, "ping", None])))
            target.frames += len(batch)
            if terminal and ok:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            answered = ok and _read_until(sock, decoder, None if terminal else sentinel, 10.0, target)[0]
            if not answered:
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _targets() -> list[Target]:
    from ember.api import init as init_module

    worker = runtime.core_worker()
    daemons = {name: proc.pid for name, proc in init_module._local_nodes.procs}
    info = worker.raylet_call("get_info", None)
    pids = {w["worker_id"]: w["pid"] for w in info["workers"]}
    workers = [a for a in worker.raylet_call("list_clients", None) if a[2] in pids]
    assert workers, "no worker registered with the node daemon"
    return [
        Target("gcs", parse_address(worker.gcs_address), daemons["gcs"]),
        Target("raylet", parse_address(worker.raylet_address), daemons["raylet"]),
        Target("worker", (workers[0][0], workers[0][1]), pids[workers[0][2]]),
        Target("driver", (worker.address[0], worker.address[1]), os.getpid()),
    ]


@ember.remote
def add(a, b):
    return a + b


@ember.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


def test_fuzzed_frames_on_every_port(ember_start, record_property):
    ember_start(num_cpus=1, log_to_driver=False)
    worker = runtime.core_worker()
    counter = Counter.remote()
    assert ember.get(counter.incr.remote(), timeout=30) == 1
    assert ember.get(add.remote(1, 2), timeout=30) == 3
    targets = _targets()
    token = worker.token
    rss_before = {t.role: _rss(t.pid) for t in targets}
    report = []
    for target in targets:
        rng = random.Random(f"{SEED}:{target.role}")
        start = time.monotonic()
        _fuzz_pre_auth(target, token, rng, FRAMES_PER_PORT // 4)
        pre = target.frames
        _fuzz_post_auth(target, token, rng, FRAMES_PER_PORT)
        assert pid_alive(target.pid), f"the {target.role} (pid {target.pid}) died while being fuzzed"
        assert target.denied > 0
        assert target.protocol_errors > 0, f"the {target.role} never answered a mistyped request with PROTOCOL_ERROR"
        report.append(
            f"{target.role}: {target.frames} frames ({pre} before authentication) over {target.connections} "
            f"connections, {target.replies} replies ({target.protocol_errors} PROTOCOL_ERROR), {target.denied} DENIED, "
            f"{time.monotonic() - start:.1f}s"
        )
    for i, target in enumerate(targets):
        assert pid_alive(target.pid), f"the {target.role} (pid {target.pid}) died"
        grown = _rss(target.pid) - rss_before[target.role]
        report[i] += f", RSS {rss_before[target.role] / MiB:.0f} -> {(rss_before[target.role] + grown) / MiB:.0f} MiB"
        assert grown < 100 * MiB + rss_before[target.role] // 2, f"{target.role} grew by {grown / MiB:.0f} MiB"
    # Captured: shown by `pytest -rA` (and kept in JUnit XML), not in the plain `-q` output.
    print("\n".join(report))
    record_property("fuzz_report", report)
    # Legitimate clients are still served, by every daemon.
    assert ember.get([add.remote(i, i) for i in range(20)], timeout=60) == [2 * i for i in range(20)]
    assert ember.get(counter.incr.remote(), timeout=30) == 2
    assert [n["Alive"] for n in ember.nodes()] == [True]
    assert worker.raylet_call("ping", None) == "pong"
    ember.kill(counter)


def _send_unauthenticated(address: tuple[str, int], messages: list[Any]) -> list[Any]:
    """A wrong hello followed by requests; returns what the server answered before closing."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"".join(_enc(m) for m in [[HELLO_MAGIC, "not-the-token", {"role": "intruder"}], *messages]))
        decoder = framing.FrameDecoder(1 << 20)
        out: list[Any] = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += [framing.decode_body(b) for b in decoder.feed(chunk)]
        return out


def test_unauthenticated_client_is_told_why_and_changes_nothing(ember_start):
    ember_start(num_cpus=1)
    worker = runtime.core_worker()
    # The prestarted workers are forks: they start once the fork server is ready, soon after init.
    wait_for_condition(lambda: bool(worker.raylet_call("get_info", None)["workers"]), timeout=30)
    victim = worker.raylet_call("get_info", None)["workers"][0]
    gcs = parse_address(worker.gcs_address)
    raylet = parse_address(worker.raylet_address)

    answer = _send_unauthenticated(gcs, [[REQUEST, 1, "kv_put", {"ns": "fuzz", "key": b"k", "value": b"v"}],
                                         [REQUEST, 2, "kill_actor", {"actor_id": b"x" * 16}]])
    assert answer == [["DENIED", "wrong or missing cluster token"]]
    answer = _send_unauthenticated(raylet, [[REQUEST, 1, "kill_worker", {"worker_id": victim["worker_id"]}],
                                            [NOTIFY, "kill_worker", {"worker_id": victim["worker_id"]}]])
    assert answer == [["DENIED", "wrong or missing cluster token"]]
    answer = _send_unauthenticated((worker.address[0], worker.address[1]), [[REQUEST, 1, "ping", None]])
    assert answer == [["DENIED", "wrong or missing cluster token"]]

    assert worker.gcs_call("kv_get", {"ns": "fuzz", "key": b"k"}) is None
    assert pid_alive(victim["pid"])
    assert victim["worker_id"] in {w["worker_id"] for w in worker.raylet_call("get_info", None)["workers"]}
    assert ember.get(add.remote(2, 3), timeout=30) == 5


def _authenticated(address: tuple[str, int], token: str) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(_enc([HELLO_MAGIC, token, {"role": "test"}]))
    return sock


def test_a_malformed_task_spec_gets_a_protocol_error_naming_the_key(ember_start):
    """A live worker answers pushes whose spec is of the wrong shape with PROTOCOL_ERROR naming
    the key, runs none of them, and keeps running tasks."""
    ember_start(num_cpus=1, log_to_driver=False)
    assert ember.get(add.remote(1, 2), timeout=30) == 3
    worker = runtime.core_worker()
    target = next(t for t in _targets() if t.role == "worker")
    spec = valid_payload(methods_of(Service.CORE_WORKER)["push_task"].request)
    call = valid_payload(methods_of(Service.CORE_WORKER)["push_actor_task"].request)
    bad = [
        ("push_task", {**spec, "nret": "two"}, "`$.nret`"),
        ("push_task", {k: v for k, v in spec.items() if k != "fid"}, "`fid`"),
        ("push_task", {**spec, "args": [b"not an argument"]}, "`$.args[0]`"),
        ("push_task", [spec], "push_task"),
        ("push_actor_task", {**call, "aid": 5}, "`$.aid`"),
        ("create_actor", {"actor_id": b"x"}, "create_actor"),
    ]
    sock = _authenticated(target.address, worker.token)
    try:
        sock.sendall(b"".join(_enc([REQUEST, i, name, payload]) for i, (name, payload, _) in enumerate(bad)))
        decoder = framing.FrameDecoder(1 << 20)
        answers: dict[int, Any] = {}
        sock.settimeout(30)
        while len(answers) < len(bad):
            chunk = sock.recv(1 << 16)
            assert chunk, "the worker closed the connection"
            for body in decoder.feed(chunk):
                message = framing.decode_body(body)
                if message[0] == ERROR:
                    answers[message[1]] = message
    finally:
        sock.close()
    for i, (name, _, key) in enumerate(bad):
        assert answers[i][2] == ErrorCode.PROTOCOL_ERROR, answers[i]
        assert name in answers[i][3] and key in answers[i][3], answers[i]
    assert pid_alive(target.pid)
    assert ember.get([add.remote(i, 1) for i in range(5)], timeout=60) == [i + 1 for i in range(5)]
