"""The typed protocol (ember.protocol) without processes or sockets: every registered
message round-trips through the frame codec, every class of bad payload becomes a
PROTOCOL_ERROR (and never reaches a handler), and the registry and the handlers in
the tree name exactly the same methods."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from protocol_helpers import sample, valid_payload

from ember.exceptions import ErrorCode, ProtocolError, RemoteError
from ember.protocol import Method, Service, methods_of
from ember.rpc import framing
from ember.rpc.connection import Connection
from ember.rpc.framing import ERROR, HELLO_MAGIC, NOTIFY, REPLY, REQUEST

SRC = Path(__file__).resolve().parent.parent / "src" / "ember"
#: Where each service's handlers live (``def rpc_<name>`` anywhere under the folder).
HANDLER_DIRS = {Service.GCS: "gcs", Service.RAYLET: "raylet", Service.CORE_WORKER: "core"}
#: Where each service's dispatch target is built with its service (a class attribute for the
#: control service; an ``RpcHandlers(Service.X)`` gathering the components' methods elsewhere).
SERVICE_NAMED_IN = {
    Service.GCS: ("gcs/server.py", "protocol_service = Service.GCS"),
    Service.RAYLET: ("raylet/server.py", "RpcHandlers(Service.RAYLET)"),
    Service.CORE_WORKER: ("core/worker.py", "RpcHandlers(Service.CORE_WORKER)"),
}

ALL_METHODS = [m for service in HANDLER_DIRS for m in methods_of(service).values()]
STRUCT_REQUESTS = [m for m in ALL_METHODS if isinstance(m.request, type) and issubclass(m.request, msgspec.Struct)]
#: The task specs: TypedDicts (they stay dicts, edited in place by the submitter).
TYPED_DICT_REQUESTS = [m for m in ALL_METHODS if isinstance(mi.type_info(m.request), mi.TypedDictType)]


def _wire(message: Any) -> Any:
    """What the peer decodes from one frame carrying ``message``."""
    return framing.decode_body(framing.encode(message)[4:])


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: f"{m.service.value}.{m.name}")
def test_every_request_and_reply_round_trips_through_a_frame(method: Method) -> None:
    request = sample(method.request)
    _, msg_id, name, payload = _wire([REQUEST, 3, method.name, request])
    assert (msg_id, name) == (3, method.name)
    assert method.decode(payload) == request
    # what a connection does: the payload left raw by the frame decoder, decoded straight into its type
    message = framing.decode_message(framing.encode([REQUEST, 3, method.name, request])[4:])
    assert isinstance(message, framing.Request) and (message.msg_id, message.method) == (3, method.name)
    assert method.decode_raw(message.payload) == request
    if method.reply is not None:
        reply = sample(method.reply)
        assert msgspec.convert(_wire([REPLY, 3, reply])[2], method.reply) == reply


def test_structs_travel_as_the_same_maps_as_the_dicts_they_replace() -> None:
    from ember.protocol import gcs

    put = gcs.KvPut(key=b"k", value=b"v", ns="fn")
    assert _wire(put) == {"key": b"k", "value": b"v", "ns": "fn"}  # defaults are not sent
    assert _wire(gcs.Publication(channel="logs", data={"x": 1})) == ["logs", {"x": 1}]


def test_unset_and_none_stay_apart() -> None:
    """``kv_put`` with ``expect=None`` means "only if absent"; without ``expect`` it is a plain put."""
    method = methods_of(Service.GCS)["kv_put"]
    assert method.decode({"key": b"k", "value": b"v", "expect": None}).expect is None
    assert method.decode({"key": b"k", "value": b"v"}).expect is msgspec.UNSET


def test_too_deep_messages_are_frame_errors_both_ways() -> None:
    from ember.exceptions import FrameError

    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(FrameError, match="nested too deeply"):
        framing.encode([REQUEST, 1, "ping", deep])
    with pytest.raises(FrameError, match="RecursionError"):
        framing.decode_body(b"\x94\x00\x01\xa4ping" + b"\x91" * 100_000 + b"\x90")
    with pytest.raises(FrameError, match="RecursionError"):  # a raw payload is still walked to its end
        framing.decode_message(b"\x94\x00\x01\xa4ping" + b"\x91" * 100_000 + b"\x90")


@pytest.mark.parametrize("body", [
    [9, 1, "ping", None], [REQUEST, 1, 5, None], [REQUEST, 1], [NOTIFY, 5, 1], [], {"a": 1}, [REPLY],
    [REQUEST, 1, "ping", None, "surplus"], "text", 3.5, [HELLO_MAGIC, "token", {}],
], ids=repr)
def test_a_message_of_no_known_kind_is_a_frame_error(body: Any) -> None:
    from ember.exceptions import FrameError

    with pytest.raises(FrameError, match="not a valid message"):
        framing.decode_message(framing.encode(body)[4:])


# ----------------------------------------------------------------------------- bad payloads
WRONG_VALUES: list[Any] = ["wrong", 12345, -1.5, True, None, b"\x00", [1, "a"], {"nested": {"x": 1}}]


def _field_cases(method: Method) -> list[tuple[str, dict[str, Any]]]:
    """For each field: a payload that is valid except for that field's value."""
    good = valid_payload(method.request)
    info = mi.type_info(method.request)
    cases = []
    for index, field in enumerate(info.fields):
        key: Any = index if info.array_like else field.encode_name
        for wrong in WRONG_VALUES:
            payload = list(good) if info.array_like else dict(good)
            payload[key] = wrong
            try:
                method.decode(payload)
            except ProtocolError:
                cases.append((field.name, payload))
                break
        else:  # every value is accepted: only an ``Any`` field may do that
            assert isinstance(field.type, mi.AnyType), f"{method.name}.{field.name} accepts anything"
    return cases


@pytest.mark.parametrize("method", STRUCT_REQUESTS, ids=lambda m: f"{m.service.value}.{m.name}")
def test_bad_payloads_are_protocol_errors(method: Method) -> None:
    info = mi.type_info(method.request)
    good = valid_payload(method.request)
    method.decode(good)  # the baseline is valid
    # wrong type, field by field (checked inside _field_cases: each one raised)
    cases = _field_cases(method)
    assert len(cases) == sum(not isinstance(f.type, mi.AnyType) for f in info.fields)
    # missing required fields
    for field in info.fields:
        if field.required:
            missing = good[:-1] if info.array_like else {k: v for k, v in good.items() if k != field.encode_name}
            _refused(method, missing)
    # extra fields
    _refused(method, [*good, "surplus"] if info.array_like else {**good, "surplus_field": 1})
    # not the right shape at all
    for shape in (None, 5, "text", b"bytes", 2.5, ([] if not info.array_like else {})):
        _refused(method, shape)
    # the baseline arrives intact from the wire too
    assert method.decode_raw(msgspec.msgpack.encode(good)) == method.decode(good)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m.request is None], ids=lambda m: m.name)
def test_methods_without_a_payload_refuse_one(method: Method) -> None:
    assert method.decode(None) is None
    assert method.decode_raw(msgspec.msgpack.encode(None)) is None
    for payload in ({}, [], 0, "x"):
        with pytest.raises(ProtocolError, match="takes no payload"):
            method.decode(payload)
        with pytest.raises(ProtocolError, match=f"takes no payload, got {type(payload).__name__}"):
            method.decode_raw(msgspec.msgpack.encode(payload))


def _refused(method: Method, payload: Any) -> str:
    """The PROTOCOL_ERROR message for ``payload`` from the wire; refused from plain values too, at
    the same place (the wording may differ: msgpack reads a ``str`` for ``bytes`` as base64)."""
    with pytest.raises(ProtocolError, match=method.name) as plain:
        method.decode(payload)
    with pytest.raises(ProtocolError, match=method.name) as raw:
        method.decode_raw(msgspec.msgpack.encode(payload))
    where = [str(e.value).rpartition(" - at ") for e in (plain, raw)]
    assert [w[2] if w[1] else "" for w in where] == [where[1][2] if where[1][1] else ""] * 2
    return str(raw.value)


@pytest.mark.parametrize("method", TYPED_DICT_REQUESTS, ids=lambda m: m.name)
def test_task_specs_are_checked_key_by_key(method: Method) -> None:
    """A spec pushed to a worker: every key of the wrong type and every missing required key is a
    PROTOCOL_ERROR that names it; the executor only ever sees a spec of its declared shape."""
    info = mi.type_info(method.request)
    good = valid_payload(method.request)
    assert method.decode_raw(msgspec.msgpack.encode(good)) == good
    assert type(method.decode_raw(msgspec.msgpack.encode(good))) is dict  # still a dict: edited in place
    for field in info.fields:
        if isinstance(field.type, mi.AnyType):
            continue
        for wrong in WRONG_VALUES:
            try:
                method.decode({**good, field.encode_name: wrong})
            except ProtocolError:
                assert f"$.{field.encode_name}" in _refused(method, {**good, field.encode_name: wrong})
                break
        else:
            raise AssertionError(f"{method.name}.{field.name} accepts anything")
        if field.required:
            missing = {k: v for k, v in good.items() if k != field.encode_name}
            assert f"`{field.encode_name}`" in _refused(method, missing)
    # keys it does not declare never reach the executor
    assert method.decode_raw(msgspec.msgpack.encode({**good, "surplus_key": 1})) == good
    for shape in (None, 5, "text", b"bytes", 2.5, [good]):
        _refused(method, shape)


def test_a_task_spec_names_the_bad_key() -> None:
    push = methods_of(Service.CORE_WORKER)["push_task"]
    spec = valid_payload(push.request)
    assert "Expected `int`, got `str` - at `$.nret`" in _refused(push, {**spec, "nret": "one"})
    assert "missing required field `fid`" in _refused(push, {k: v for k, v in spec.items() if k != "fid"})
    assert "at `$.args[0]`" in _refused(push, {**spec, "args": [b"not an argument"]})
    call = methods_of(Service.CORE_WORKER)["push_actor_task"]
    assert "missing required field `aid`" in _refused(call, spec)  # a task's spec is not an actor call's
    assert "`$.gen`" in _refused(call, {**valid_payload(call.request), "gen": "eager"})  # not a generator mode


# ----------------------------------------------------------------------------- the dispatcher
class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Gcs:
    """A handler that records what it receives (serves the control service's methods)."""

    protocol_service = Service.GCS

    def __init__(self) -> None:
        self.received: list[Any] = []

    def rpc_kv_get(self, conn: Connection, p: Any) -> bytes:
        self.received.append(p)
        return b"value"

    def rpc_worker_died(self, conn: Connection, p: Any) -> None:
        self.received.append(p)

    def rpc_not_registered(self, conn: Connection, p: Any) -> str:
        self.received.append(p)
        return "should not be reachable"


class _Worker:
    """A core worker's handler that records the specs pushed to it."""

    protocol_service = Service.CORE_WORKER

    def __init__(self) -> None:
        self.received: list[Any] = []

    def rpc_push_task(self, conn: Connection, spec: Any) -> dict[str, Any]:
        self.received.append(spec)
        return {"s": "ok", "r": []}


def _exchange_with(handler: Any) -> Any:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    conn = Connection("token", handler, is_server=True)
    transport = _Transport()
    conn.connection_made(transport)
    conn.data_received(framing.encode([HELLO_MAGIC, "token", {"role": "test"}]))

    def exchange(*messages: Any) -> list[Any]:
        transport.written.clear()
        conn.data_received(b"".join(framing.encode(m) for m in messages))
        loop.run_until_complete(asyncio.sleep(0))  # one loop turn: queued replies are flushed
        decoder = framing.FrameDecoder(1 << 20)
        return [framing.decode_body(b) for chunk in transport.written for b in decoder.feed(chunk)]

    def close() -> None:
        conn.close()
        loop.close()
        asyncio.set_event_loop(None)

    return conn, transport, exchange, close


@pytest.fixture
def server() -> Any:
    handler = _Gcs()
    conn, transport, exchange, close = _exchange_with(handler)
    yield handler, conn, transport, exchange
    close()


def test_a_malformed_task_spec_gets_a_protocol_error_naming_the_key() -> None:
    """A worker answers a bad push with PROTOCOL_ERROR (naming the key) and never runs it; the
    next good push on the same connection is served."""
    handler = _Worker()
    conn, transport, exchange, close = _exchange_with(handler)
    try:
        spec = valid_payload(methods_of(Service.CORE_WORKER)["push_task"].request)
        replies = exchange([REQUEST, 1, "push_task", {**spec, "rids": "not a list"}],
                           [REQUEST, 2, "push_task", {k: v for k, v in spec.items() if k != "tid"}],
                           [REQUEST, 3, "push_task", [spec]],
                           [REQUEST, 4, "push_task", spec])
        assert [r[:3] for r in replies[:3]] == [[ERROR, i, ErrorCode.PROTOCOL_ERROR] for i in (1, 2, 3)]
        assert "$.rids" in replies[0][3] and "`tid`" in replies[1][3] and "push_task" in replies[2][3]
        assert replies[3] == [REPLY, 4, {"s": "ok", "r": []}]
        assert handler.received == [spec] and not conn.closed and not transport.closed
    finally:
        close()


def test_a_handler_receives_its_typed_request(server: Any) -> None:
    from ember.protocol import gcs

    handler, _, _, exchange = server
    assert exchange([REQUEST, 1, "kv_get", {"key": b"k", "ns": "fn"}]) == [[REPLY, 1, b"value"]]
    assert handler.received == [gcs.KvKey(key=b"k", ns="fn")]


@pytest.mark.parametrize("payload", [
    None, 12345, "text", [b"k"], {"ns": "fn"}, {"key": "not bytes"}, {"key": b"k", "ns": 5},
    {"key": b"k", "surplus": 1},
], ids=["none", "int", "str", "list", "missing", "wrong-type", "wrong-type-2", "extra-field"])
def test_a_bad_request_gets_a_protocol_error_and_never_reaches_the_handler(server: Any, payload: Any) -> None:
    handler, conn, transport, exchange = server
    replies = exchange([REQUEST, 7, "kv_get", payload], [REQUEST, 8, "kv_get", {"key": b"k"}])
    assert replies[0][:3] == [ERROR, 7, ErrorCode.PROTOCOL_ERROR]
    assert "kv_get" in replies[0][3]
    assert replies[1] == [REPLY, 8, b"value"]  # the connection carries on
    assert len(handler.received) == 1 and not conn.closed and not transport.closed
    remote = RemoteError(ErrorCode.from_wire(replies[0][2]), replies[0][3])
    assert isinstance(remote.to_exception(), ProtocolError)


def test_unregistered_and_unknown_methods_do_not_exist(server: Any) -> None:
    handler, _, _, exchange = server
    replies = exchange([REQUEST, 1, "not_registered", None], [REQUEST, 2, "no_such", {}],
                       [REQUEST, 3, "__init__", None])
    assert [r[:3] for r in replies] == [[ERROR, i, ErrorCode.NO_SUCH_METHOD] for i in (1, 2, 3)]
    assert handler.received == []


def test_a_handler_that_names_no_service_serves_nothing() -> None:
    class Untyped:
        def rpc_ping(self, conn: Connection, p: Any) -> str:
            raise AssertionError("reached without a declared type")

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        conn = Connection("token", Untyped(), is_server=True)
        assert conn._lookup("ping") is None
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def test_a_bad_notification_is_dropped(server: Any) -> None:
    from ember.protocol import gcs

    handler, conn, _, exchange = server
    assert exchange([NOTIFY, "worker_died", {"worker_id": 5}], [NOTIFY, "worker_died", [1]],
                    [NOTIFY, "worker_died", {"worker_id": b"w", "detail": "oom"}]) == []
    assert handler.received == [gcs.WorkerDied(worker_id=b"w", detail="oom")]
    assert not conn.closed


# ----------------------------------------------------------------------------- completeness
def _handlers_in_tree(folder: str) -> set[str]:
    names = set()
    for path in (SRC / folder).rglob("*.py"):
        names.update(re.findall(r"^\s+(?:async\s+)?def rpc_(\w+)\(", path.read_text(), re.M))
    return names


@pytest.mark.parametrize("service", sorted(HANDLER_DIRS, key=lambda s: s.value), ids=lambda s: s.value)
def test_every_handler_is_registered_and_every_registered_method_has_a_handler(service: Service) -> None:
    registered = set(methods_of(service))
    handlers = _handlers_in_tree(HANDLER_DIRS[service])
    assert handlers - registered == set(), f"handlers without a declared type in ember/protocol/{service.value}"
    assert registered - handlers == set(), f"registered {service.value} methods without an rpc_ handler"


@pytest.mark.parametrize("service", sorted(SERVICE_NAMED_IN, key=lambda s: s.value), ids=lambda s: s.value)
def test_each_process_serves_its_service(service: Service) -> None:
    path, declaration = SERVICE_NAMED_IN[service]
    assert declaration in (SRC / path).read_text()
    from ember.rpc.handlers import RpcHandlers

    assert RpcHandlers(service).protocol_service is service


def test_the_registry_refuses_duplicates_and_private_names() -> None:
    from ember.protocol.registry import register

    with pytest.raises(ValueError, match="twice"):
        register(Service.GCS, [Method("ping", None, str)])
    with pytest.raises(ValueError, match="must not start"):
        register(Service.GCS, [Method("_hidden", None, str)])


def test_stored_records_keep_what_the_components_read() -> None:
    from ember.protocol import gcs

    node = gcs.RegisterNode(node_id=b"n", address=("h", 1), resources={"CPU": 2.0}, cluster_id="c",
                            gcs_leases=[[b"l", b"a"]])
    record = node.node_record()
    assert record["node_id"] == b"n" and record["resources"] == {"CPU": 2.0}
    assert "cluster_id" not in record and "gcs_leases" not in record  # registration details only
    spec = sample(gcs.ActorCreationSpec)
    assert spec.record()["renv"] == spec.renv
    bare = msgspec.structs.replace(spec, renv=None, pg_group=None).record()
    assert "renv" not in bare and "pg_group" not in bare and bare["pg"] == spec.pg  # absent options stay absent
