"""The function table: exporting remote functions and loading them in workers.

A function is pickled by value once, keyed by a hash of its bytes, and
stored in the control service's KV store (namespace ``fn``). Workers load
it on first use and cache it. Before a worker runs the first task of a job
it also adopts that driver's import path, so functions pickled by reference
(from modules next to the driver's script) import the same way.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable
from typing import Any

from ember._private import serialization


class FunctionManager:
    def __init__(self, gcs_call: Callable[[str, Any], Any]) -> None:
        #: A call to the control service from a user thread (the KV store holds the table).
        self.gcs_call = gcs_call
        self._cache: dict[bytes, Any] = {}
        self._exported: set[bytes] = set()
        self._jobs_seen: set[bytes] = set()
        self._lock = threading.Lock()

    def export(self, fn: Any, name: str) -> bytes:
        """Store ``fn`` in the function table (once) and return its id."""
        try:
            data = serialization.dumps_function(fn)
        except Exception as exc:
            raise TypeError(
                f"Could not serialize the remote function or class {name!r}: {exc}. "
                "Everything it refers to (globals, closures) must be picklable."
            ) from exc
        fid = hashlib.sha1(data).digest()
        if fid not in self._exported:
            from ember.exceptions import FrameError

            try:
                self.gcs_call("kv_put", {"ns": "fn", "key": fid, "value": data, "overwrite": False})
            except FrameError as exc:
                raise ValueError(
                    f"The remote function or class {name!r} is too large to export ({len(data)} bytes pickled): "
                    "it probably captures a large object (a global or a closure variable). Pass that object "
                    f"as an argument or through ember.put() instead. ({exc})"
                ) from None
            self._exported.add(fid)
            self._cache[fid] = fn
        return fid

    def load(self, fid: bytes, job_id: bytes) -> Any:
        if job_id not in self._jobs_seen:
            self._adopt_job_path(job_id)
        fn = self._cache.get(fid)
        if fn is not None:
            return fn
        with self._lock:
            fn = self._cache.get(fid)
            if fn is None:
                data = self.gcs_call("kv_get", {"ns": "fn", "key": fid})
                if data is None:
                    raise RuntimeError(f"function {fid.hex()} is not in the function table")
                fn = serialization.loads_function(data)
                self._cache[fid] = fn
        return fn

    def _adopt_job_path(self, job_id: bytes) -> None:
        self._jobs_seen.add(job_id)
        data = self.gcs_call("kv_get", {"ns": "job", "key": job_id})
        if not data:
            return
        import json

        for path in reversed(json.loads(data).get("sys_path", [])):
            if path not in sys.path:
                sys.path.insert(1, path)
