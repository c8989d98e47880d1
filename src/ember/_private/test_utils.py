"""Helpers for tests of Ember and of programs that use it (like Ray's ``ray._private.test_utils``).

Tests must wait for *conditions*, never for a fixed time: ``wait_for_condition``
polls a predicate until it holds or a deadline passes, and then fails with a
message that says what was awaited.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Ray's test helpers that need the public API live one layer up, in ``ember._common.test_utils``;
#: ``ember._private.test_utils`` gives them too, as Ray's path does.
_FROM_COMMON = {
    "BatchQueue", "DEFAULT_DRIVER_TIMEOUT_SECONDS", "Semaphore", "SignalActor", "kill_actor_and_wait_for_failure",
    "placement_group_assert_no_leak", "run_string_as_driver", "run_string_as_driver_nonblocking",
    "wait_for_pid_to_exit",
}


def __getattr__(name: str) -> Any:
    if name in _FROM_COMMON:
        from ember._common import test_utils

        return getattr(test_utils, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wait_for_condition(
    condition_predictor: Callable[..., T | None],
    timeout: float = 10,
    retry_interval_ms: float = 20,
    raise_exceptions: bool = False,
    **kwargs: Any,
) -> T:
    """Call ``condition_predictor(**kwargs)`` until it returns a truthy value, and return that value.

    Args:
        condition_predictor: the condition; exceptions it raises count as "not yet"
            unless ``raise_exceptions`` is true.
        timeout: seconds before giving up.
        retry_interval_ms: pause between two evaluations.
        raise_exceptions: re-raise an exception of the predicate at once.

    Raises:
        RuntimeError: the condition did not hold within ``timeout`` seconds
            (the message includes the predicate's last exception, if any).
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = condition_predictor(**kwargs)
            if result:
                return result
        except Exception as exc:
            if raise_exceptions:
                raise
            last_exc = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(retry_interval_ms / 1000.0)  # polling interval, not a synchronisation
    name = getattr(condition_predictor, "__name__", repr(condition_predictor))
    message = f"The condition {name} was not met within {timeout}s."
    if last_exc is not None:
        message += f" Last exception: {type(last_exc).__name__}: {last_exc}"
    raise RuntimeError(message)


def wait_for_file(path: str, timeout: float = 10) -> str:
    """Wait until ``path`` exists and is not empty; return its contents."""

    def ready() -> str | None:
        try:
            with open(path) as f:
                data = f.read()
        except OSError:
            return None
        return data or None

    ready.__name__ = f"file {path} exists"
    return wait_for_condition(ready, timeout=timeout)


def write_file_atomic(path: str, text: str) -> None:
    """Write ``text`` so that a reader never sees a partial file (for tasks reporting to tests)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
