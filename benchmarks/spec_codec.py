"""What a task push costs on the wire: encode + decode of a realistic task spec and its reply.

Variants (all through msgspec, as the RPC layer does):

* ``untyped``: the spec as a dict, the frame decoded to plain values, the payload checked to be
  a map only (what push_task did before its spec was declared);
* ``typeddict-convert``: the frame decoded to plain values, then ``msgspec.convert`` to the
  spec's ``TypedDict`` (every key and value type checked; the handler still gets a dict);
* ``typeddict-raw``: the frame decoded with its payload left raw, the payload decoded straight
  into the ``TypedDict``;
* ``struct-convert`` / ``struct-raw``: the same with a ``Struct`` (short wire names);
* ``reply-plain`` / ``reply-raw``: the push's reply (one inline return) decoded to plain values
  (before), or as the ``Reply`` struct of a union of message kinds, its payload plain values
  (what the connection now does for every reply).

Usage: ``PYTHONPATH=src python3 benchmarks/spec_codec.py [--n 200000] [--rounds 5]``. Variants
alternate within each round; the table gives the median per round in microseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, TypedDict

import msgspec

ARG_VALUE = 0


class SpecTD(TypedDict, total=False):
    tid: bytes
    job: bytes
    fid: bytes
    name: str
    args: list[list[Any]]
    kw: list[str]
    nret: int
    rids: list[bytes]
    owner: tuple[str, int, bytes]
    res: dict[str, float]
    gpus: list[int]
    attempt: int
    gen: int
    pg_group: list[Any]


class SpecStruct(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    task_id: bytes = msgspec.field(name="tid")
    job: bytes
    fid: bytes
    name: str
    args: list[list[Any]]
    kw: list[str] = []
    nret: int
    rids: list[bytes]
    owner: tuple[str, int, bytes]
    res: dict[str, float] = {}
    gpus: list[int] = []
    attempt: int = 0
    gen: int = 0
    pg_group: list[Any] | None = None


class Request(msgspec.Struct, array_like=True, tag=0):
    msg_id: int
    method: str
    payload: msgspec.Raw


class Reply(msgspec.Struct, array_like=True, tag=1):
    msg_id: int
    payload: Any


def realistic_spec() -> dict[str, Any]:
    tid = os.urandom(16)
    return {
        "tid": tid, "job": b"\x00\x00\x00\x01", "fid": os.urandom(20), "name": "small_value",
        "args": [[ARG_VALUE, os.urandom(40)]], "kw": [], "nret": 1, "rids": [tid + b"\x00\x00\x00\x01"],
        "owner": ["127.0.0.1", 41234, os.urandom(16)], "res": {"CPU": 1.0}, "gpus": [], "attempt": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()

    encode = msgspec.msgpack.Encoder().encode
    plain = msgspec.msgpack.Decoder().decode
    frame_raw = msgspec.msgpack.Decoder(Request | Reply).decode
    td_raw = msgspec.msgpack.Decoder(SpecTD).decode
    st_raw = msgspec.msgpack.Decoder(SpecStruct).decode
    spec = realistic_spec()
    struct_spec = msgspec.convert(spec, SpecStruct)

    def untyped() -> None:
        message = plain(encode([0, 7, "push_task", spec]))
        payload = message[3]
        if type(payload) is not dict:
            raise AssertionError

    def typeddict_convert() -> None:
        message = plain(encode([0, 7, "push_task", spec]))
        msgspec.convert(message[3], SpecTD)

    def typeddict_raw() -> None:
        message = frame_raw(encode([0, 7, "push_task", spec]))
        td_raw(message.payload)

    def struct_convert() -> None:
        message = plain(encode([0, 7, "push_task", struct_spec]))
        msgspec.convert(message[3], SpecStruct)

    def struct_raw() -> None:
        message = frame_raw(encode([0, 7, "push_task", struct_spec]))
        st_raw(message.payload)

    reply = [1, 7, {"s": "ok", "r": [[0, [b"\x00" * 8, os.urandom(40), []], []]]}]

    def reply_plain() -> None:
        plain(encode(reply))[2]

    def reply_raw() -> None:
        _ = frame_raw(encode(reply)).payload

    variants = {"untyped": untyped, "typeddict-convert": typeddict_convert, "typeddict-raw": typeddict_raw,
                "struct-convert": struct_convert, "struct-raw": struct_raw,
                "reply-plain": reply_plain, "reply-raw": reply_raw}
    for fn in variants.values():  # all accept the spec
        fn()
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(opts.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(opts.n):
                fn()
            results[name].append((time.perf_counter() - start) / opts.n * 1e6)
    print(f"{'variant':20} {'median us':>10} {'vs base':>8}")
    for name, times in results.items():
        base = statistics.median(results["reply-plain" if name.startswith("reply") else "untyped"])
        median = statistics.median(times)
        print(f"{name:20} {median:10.2f} {median / base:7.2f}x")


if __name__ == "__main__":
    main()
