"""Errors cross the wire as an ErrorCode; one table maps them both ways (no cluster)."""

from __future__ import annotations

import pytest

from ember.exceptions import (
    ERROR_TABLE,
    ErrorCode,
    FrameError,
    ObjectStoreFullError,
    RemoteError,
    TaskUnschedulableError,
    error_code_of,
)


@pytest.mark.parametrize("exc, code", [
    (ObjectStoreFullError("full"), ErrorCode.OBJECT_STORE_FULL),
    (TaskUnschedulableError("never"), ErrorCode.TASK_UNSCHEDULABLE),
    (FrameError("big"), ErrorCode.FRAME_TOO_LARGE),
    (ValueError("bad"), ErrorCode.BAD_REQUEST),
    (KeyError("missing"), ErrorCode.BAD_REQUEST),
    (TypeError("wrong type"), ErrorCode.BAD_REQUEST),
    (RuntimeError("bug"), ErrorCode.INTERNAL),
    (ZeroDivisionError(), ErrorCode.INTERNAL),
])
def test_handler_exceptions_get_their_code(exc, code):
    assert error_code_of(exc) is code


@pytest.mark.parametrize("exc_type", [ObjectStoreFullError, TaskUnschedulableError, ValueError])
def test_codes_come_back_as_the_user_facing_error_with_the_message(exc_type):
    remote = RemoteError(error_code_of(exc_type("the reason")), "the reason")
    back = remote.to_exception()
    assert type(back) is exc_type and str(back) == "the reason"


def test_codes_without_a_user_facing_error_stay_remote_errors():
    for code in (ErrorCode.INTERNAL, ErrorCode.NO_SUCH_METHOD, ErrorCode.CANCELLED):
        remote = RemoteError(code, "why")
        assert remote.to_exception() is remote
        assert str(remote) == f"{code.name}: why"


@pytest.mark.parametrize("raw", [99, -1, "ValueError", None, 1.5, b"\x01"])
def test_unknown_or_malformed_wire_codes_are_internal(raw):
    assert ErrorCode.from_wire(raw) is ErrorCode.INTERNAL


def test_every_code_of_the_table_round_trips_through_its_wire_integer():
    for _, code in ERROR_TABLE:
        assert ErrorCode.from_wire(int(code)) is code
