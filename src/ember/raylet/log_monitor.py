"""Tails worker log files and publishes new lines to drivers.

Workers write a marker line ``:ember_task:<job hex>:<function name>`` before
running a task, so that each following line can be attributed to the job
and the function that printed it. Lines are published on the ``logs``
channel of the control service as ``{job, pid, fn, err, lines}``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

MARKER = ":ember_task:"


class _Stream:
    __slots__ = ("path", "pid", "is_err", "offset", "partial", "job", "fn", "quiet_polls", "next_poll")

    def __init__(self, path: str, pid: int, is_err: bool) -> None:
        self.path = path
        self.pid = pid
        self.is_err = is_err
        self.offset = 0
        self.partial = b""
        self.job = ""
        self.fn = ""
        self.quiet_polls = 0
        self.next_poll = 0.0


class LogMonitor:
    """Reads every worker's files; a file that stays quiet is read less and less
    often (down to once per ``idle_period_s``), so a node with a thousand idle
    actors does not spend its CPU looking at empty files."""

    def __init__(
        self, publish: Callable[[dict[str, Any]], None], max_bytes_per_poll: int = 1 << 20,
        period_s: float = 0.05, idle_period_s: float = 0.5,
    ) -> None:
        self._publish = publish
        self._streams: dict[str, _Stream] = {}
        self._max = max_bytes_per_poll
        self._period = period_s
        self._idle_period = idle_period_s

    def add(self, path: str, pid: int, is_err: bool) -> None:
        self._streams[path] = _Stream(path, pid, is_err)

    def remove(self, path: str) -> None:
        stream = self._streams.get(path)
        if stream is not None:
            self._poll_one(stream)  # publish what is left
            del self._streams[path]

    def wake(self, path: str) -> None:
        """Read ``path`` at the next poll again (its process is about to run something)."""
        stream = self._streams.get(path)
        if stream is not None:
            stream.quiet_polls = 0
            stream.next_poll = 0.0

    def poll(self, force: bool = False) -> None:
        now = time.monotonic()
        for stream in list(self._streams.values()):
            if not force and stream.next_poll > now:
                continue
            if self._poll_one(stream):
                stream.quiet_polls = 0
                stream.next_poll = 0.0
            else:
                stream.quiet_polls = min(stream.quiet_polls + 1, 16)
                stream.next_poll = now + min(self._idle_period, self._period * (1 << stream.quiet_polls))

    def _poll_one(self, stream: _Stream) -> bool:
        """Publish what ``stream`` has new; whether it had anything."""
        try:
            if os.stat(stream.path).st_size <= stream.offset:
                return False
            with open(stream.path, "rb") as f:
                f.seek(stream.offset)
                data = f.read(self._max)
        except OSError:
            return False
        if not data:
            return False
        stream.offset += len(data)
        data = stream.partial + data
        lines = data.split(b"\n")
        stream.partial = lines.pop()
        batch: list[str] = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if line.startswith(MARKER):
                if batch:
                    self._emit(stream, batch)
                    batch = []
                job, _, fn = line[len(MARKER) :].partition(":")
                stream.job, stream.fn = job, fn
                continue
            batch.append(line)
        if batch:
            self._emit(stream, batch)
        return True

    def _emit(self, stream: _Stream, lines: list[str]) -> None:
        self._publish({"job": stream.job, "pid": stream.pid, "fn": stream.fn, "err": stream.is_err, "lines": lines})
