"""Frames: a 4-byte big-endian length, then a msgpack body (written and read by msgspec).

Message bodies are msgpack arrays whose first element is the kind:

  [REQUEST, msg_id, method, payload]
  [REPLY,   msg_id, payload]
  [ERROR,   msg_id, code, message]
  [NOTIFY,  method, payload]          one-way, no reply

The first frame on every connection is the hello, ``[HELLO_MAGIC, token,
peer_info]``, answered with ``["OK", info]`` or ``["DENIED", reason]``.

After the hello, a body is decoded as one of the four message structs below; a request's or
a notification's payload is left as ``msgspec.Raw`` (undecoded bytes) and the dispatcher
decodes it straight into the method's declared type (``Method.decode_raw``), which costs less
than decoding to plain values and converting them.

``FrameDecoder`` checks a frame's declared length against the limit before
it buffers the frame, so a peer cannot make us allocate more than the limit.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ember.exceptions import FrameError

REQUEST = 0
REPLY = 1
ERROR = 2
NOTIFY = 3

HELLO_MAGIC = "EMBER/1"
_HEADER = 4


def _unsupported(obj: Any) -> Any:
    raise TypeError(f"cannot encode {type(obj).__name__} in an RPC message")


# msgspec writes protocol structs (ember.protocol) and plain values alike; sets go as arrays.
_encode = msgspec.msgpack.Encoder(enc_hook=_unsupported).encode
_decode = msgspec.msgpack.Decoder().decode


def encode(message: Any) -> bytes:
    """One frame (header + body) for ``message``; ``FrameError`` if it is nested too deeply."""
    try:
        body = _encode(message)
    except RecursionError:
        raise FrameError("a message nested too deeply to encode") from None
    return len(body).to_bytes(_HEADER, "big") + body


class Request(msgspec.Struct, array_like=True, tag=REQUEST, forbid_unknown_fields=True):
    msg_id: Any
    method: str
    payload: msgspec.Raw


class Reply(msgspec.Struct, array_like=True, tag=REPLY, forbid_unknown_fields=True):
    msg_id: Any
    #: Plain values, decoded with the frame: the caller reads them (replies are not re-checked).
    payload: Any


class Error(msgspec.Struct, array_like=True, tag=ERROR, forbid_unknown_fields=True):
    msg_id: Any
    code: Any
    message: Any


class Notify(msgspec.Struct, array_like=True, tag=NOTIFY, forbid_unknown_fields=True):
    method: str
    payload: msgspec.Raw


Message = Request | Reply | Error | Notify
_decode_message = msgspec.msgpack.Decoder(Message).decode


def decode_message(body: bytes | bytearray | memoryview) -> Message:
    """An authenticated frame's body as its message, the payload still raw; ``FrameError`` if
    it is not one of the four kinds with the right arity and types."""
    try:
        return _decode_message(body)
    except Exception as exc:  # malformed, truncated, unknown kind, wrong arity, too deep ...
        raise FrameError(f"not a valid message ({type(exc).__name__}: {exc})") from exc


def decode_body(body: bytes | bytearray | memoryview) -> Any:
    """A frame body as plain values (maps, arrays, ...); typed decoding is the dispatcher's."""
    try:
        return _decode(body)
    except Exception as exc:  # malformed, truncated, too deep (RecursionError), unhashable keys ...
        raise FrameError(f"undecodable frame body ({type(exc).__name__}: {exc})") from exc


class FrameDecoder:
    """Splits a byte stream into frame bodies, enforcing a size limit."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete frame body (possibly none)."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        offset = 0
        end = len(buf)
        while end - offset >= _HEADER:
            size = int.from_bytes(buf[offset : offset + _HEADER], "big")
            if size > self.limit:
                raise FrameError(f"frame of {size} bytes exceeds the limit of {self.limit} bytes")
            if end - offset - _HEADER < size:
                break
            start = offset + _HEADER
            frames.append(bytes(buf[start : start + size]))
            offset = start + size
        if offset:
            del buf[:offset]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)
