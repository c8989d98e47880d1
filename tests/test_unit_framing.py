"""FrameDecoder and message encoding (no processes)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.exceptions import FrameError, RpcError
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


def test_encode_is_length_prefixed_msgpack():
    frame = encode([REQUEST, 7, "ping", None])
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == [REQUEST, 7, "ping", None]


def test_encode_round_trips_every_message_kind():
    messages = [
        [HELLO_MAGIC, "token", {"role": "x"}],
        [REQUEST, 1, "m", {"k": b"\x00\xff", "n": [1, 2.5, None, True]}],
        [REPLY, 1, {"nested": {"deep": [b"bytes"]}}],
        [ERROR, 2, "ValueError", "message"],
        [NOTIFY, "event", {1: "int keys"}],
    ]
    decoder = FrameDecoder(1 << 20)
    frames = decoder.feed(b"".join(encode(m) for m in messages))
    assert [decode_body(f) for f in frames] == messages
    assert decoder.buffered == 0


def test_encode_sets_as_lists_and_rejects_unknown_types():
    assert decode_body(encode({1, 2})[4:]) in ([1, 2], [2, 1])
    with pytest.raises(TypeError, match="cannot encode"):
        encode([object()])


def test_size_limit_is_enforced_from_the_header_before_buffering():
    decoder = FrameDecoder(limit=100)
    with pytest.raises(FrameError, match="101 bytes exceeds the limit of 100"):
        decoder.feed((101).to_bytes(4, "big"))
    huge = FrameDecoder(limit=4096)
    with pytest.raises(FrameError):
        huge.feed((2**31).to_bytes(4, "big"))  # nothing but the header was needed to refuse


def test_frame_exactly_at_the_limit_is_accepted():
    decoder = FrameDecoder(limit=10)
    assert decoder.feed((10).to_bytes(4, "big") + b"0123456789") == [b"0123456789"]


def test_oversized_frame_after_valid_frames_is_refused():
    decoder = FrameDecoder(limit=10)
    data = (3).to_bytes(4, "big") + b"abc" + (11).to_bytes(4, "big")
    with pytest.raises(FrameError):
        decoder.feed(data)


def test_partial_header_and_body_wait_for_more_bytes():
    decoder = FrameDecoder(limit=100)
    frame = (5).to_bytes(4, "big") + b"hello"
    assert decoder.feed(frame[:2]) == []
    assert decoder.buffered == 2
    assert decoder.feed(frame[2:6]) == []
    assert decoder.feed(frame[6:]) == [b"hello"]
    assert decoder.buffered == 0


def test_empty_frame_and_empty_feed():
    decoder = FrameDecoder(limit=100)
    assert decoder.feed(b"") == []
    assert decoder.feed((0).to_bytes(4, "big")) == [b""]


def test_limit_can_be_raised_after_authentication():
    decoder = FrameDecoder(limit=4)
    with pytest.raises(FrameError):
        FrameDecoder(limit=4).feed((5).to_bytes(4, "big"))
    decoder.limit = 1000
    assert decoder.feed((5).to_bytes(4, "big") + b"12345") == [b"12345"]


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_any_split_of_a_stream_yields_the_same_frames(bodies, cuts):
    stream = b"".join(len(b).to_bytes(4, "big") + b for b in bodies)
    points = sorted({c for c in cuts if c <= len(stream)} | {0, len(stream)})
    decoder = FrameDecoder(limit=300)
    out = []
    for start, end in zip(points, points[1:]):
        out += decoder.feed(stream[start:end])
    assert out == bodies
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_decode_body_raises_frame_error_on_garbage(data):
    try:
        decode_body(data)
    except FrameError as exc:
        assert isinstance(exc, RpcError)
        assert "undecodable" in str(exc)


def test_decode_body_garbage_examples():
    for data in (b"\xc1", b"\x93\x01", b"\x92\x01\x02\x03"):
        with pytest.raises(FrameError):
            decode_body(data)
