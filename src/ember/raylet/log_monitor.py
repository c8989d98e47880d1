"""Tails worker log files and publishes new lines to drivers.

Workers write a marker line ``:ember_task:<job hex>:<function name>`` before
running a task, so that each following line can be attributed to the job
and the function that printed it. Lines are published on the ``logs``
channel of the control service as ``{job, pid, fn, err, lines}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MARKER = ":ember_task:"


class _Stream:
    __slots__ = ("path", "pid", "is_err", "offset", "partial", "job", "fn")

    def __init__(self, path: str, pid: int, is_err: bool) -> None:
        self.path = path
        self.pid = pid
        self.is_err = is_err
        self.offset = 0
        self.partial = b""
        self.job = ""
        self.fn = ""


class LogMonitor:
    def __init__(self, publish: Callable[[dict[str, Any]], None], max_bytes_per_poll: int = 1 << 20) -> None:
        self._publish = publish
        self._streams: dict[str, _Stream] = {}
        self._max = max_bytes_per_poll

    def add(self, path: str, pid: int, is_err: bool) -> None:
        self._streams[path] = _Stream(path, pid, is_err)

    def remove(self, path: str) -> None:
        stream = self._streams.get(path)
        if stream is not None:
            self._poll_one(stream)  # publish what is left
            del self._streams[path]

    def poll(self) -> None:
        for stream in list(self._streams.values()):
            self._poll_one(stream)

    def _poll_one(self, stream: _Stream) -> None:
        try:
            with open(stream.path, "rb") as f:
                f.seek(stream.offset)
                data = f.read(self._max)
        except OSError:
            return
        if not data:
            return
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

    def _emit(self, stream: _Stream, lines: list[str]) -> None:
        self._publish({"job": stream.job, "pid": stream.pid, "fn": stream.fn, "err": stream.is_err, "lines": lines})
