"""Packages stored in the cluster, and the driver-side upload of local folders.

Packages live in the control service's KV store (namespace ``runtime_env``),
cut into chunks of ``runtime_env_chunk_bytes`` so that no message comes near
the frame limit: ``<uri>#<i>`` holds chunk ``i``, and ``<uri>`` itself a small
JSON manifest written *last* (a manifest means a complete package). Content
addressing makes uploads idempotent: a URI already present is not sent again.

``PackageStore`` takes a synchronous ``call(method, payload)`` to the control
service (``CoreWorker.gcs_call`` in a driver, a thread-safe bridge to the
event loop in a node daemon), so every process role can use it.

Public helpers for other parts (jobs):
    ``package_working_dir(path, excludes)`` -> (URI, zip bytes), no cluster needed
    (an HTTP client uploads the bytes; the server calls ``store.put(uri, data)``);
    ``upload_working_dir(path, store, excludes)`` -> URI, packaged and stored once;
    ``process_context.materialize_working_dir(uri, store, root)`` -> local folder on a node.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from ember._private.config import config
from ember.exceptions import RuntimeEnvValueError
from ember.runtime_env import packaging
from ember.runtime_env.packaging import PackageError

NAMESPACE = "runtime_env"
#: ``<job hex>:<uri>``: the job uses the package (``gcs/package_gc.py`` keeps it while the job runs).
PINS_NAMESPACE = "runtime_env_pins"

GcsCall = Callable[[str, Any], Any]


class PackageStore:
    """Chunked packages in the control service's KV store."""

    def __init__(self, call: GcsCall, chunk_bytes: int | None = None, job_hex: str | None = None) -> None:
        self._call = call
        #: The job whose uploads and uses pin packages (None: no pinning, e.g. a node fetching).
        self.job_hex = job_hex
        cfg = config()
        self.chunk_bytes = max(1024, min(chunk_bytes or cfg.runtime_env_chunk_bytes, cfg.max_frame_bytes // 2))

    def _get(self, key: str) -> bytes | None:
        value = self._call("kv_get", {"ns": NAMESPACE, "key": key.encode()})
        return bytes(value) if value is not None else None

    def exists(self, uri: str) -> bool:
        return self._get(uri) is not None

    def pin(self, uri: str) -> None:
        """Keep ``uri`` stored while this store's job runs (before it is checked or used)."""
        if self.job_hex and packaging.is_cluster_uri(uri):
            self._call("kv_put", {"ns": PINS_NAMESPACE, "key": f"{self.job_hex}:{uri}".encode(), "value": b"1", "overwrite": True})

    def put(self, uri: str, data: bytes) -> None:
        """Store ``data`` under ``uri`` unless it is there already (pinned first, so it cannot vanish in between)."""
        self.pin(uri)
        if self.exists(uri):
            return
        step = self.chunk_bytes
        chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        for index, chunk in enumerate(chunks):
            self._call("kv_put", {"ns": NAMESPACE, "key": f"{uri}#{index}".encode(), "value": chunk, "overwrite": True})
        manifest = json.dumps({"size": len(data), "chunks": len(chunks), "created": time.time()}).encode()
        self._call("kv_put", {"ns": NAMESPACE, "key": uri.encode(), "value": manifest, "overwrite": True})

    def get(self, uri: str) -> bytes:
        """The package's bytes.

        Raises:
            PackageError: it is not in the cluster (or incomplete).
        """
        raw = self._get(uri)
        if raw is None:
            raise PackageError(f"the package {uri} is not stored in this cluster")
        manifest = json.loads(raw)
        parts = []
        for index in range(int(manifest["chunks"])):
            chunk = self._get(f"{uri}#{index}")
            if chunk is None:
                raise PackageError(f"the package {uri} is incomplete (chunk {index} is missing)")
            parts.append(chunk)
        data = b"".join(parts)
        if len(data) != int(manifest["size"]):
            raise PackageError(f"the package {uri} is corrupt ({len(data)} bytes, expected {manifest['size']})")
        return data


# ============================================================ driver side: uploads
def _package_bytes(key: str, path: str, excludes: list[str] | None, include_folder_name: bool) -> tuple[bytes, str]:
    """(zip bytes, suffix) of a local folder, zip or wheel."""
    limit = config().runtime_env_max_package_bytes
    try:
        if os.path.isdir(path):
            return packaging.zip_directory(path, excludes, include_folder_name=include_folder_name, max_bytes=limit), ".zip"
        packaging.check_zip_file(path)
        size = os.path.getsize(path)
        if size > limit:
            raise PackageError(f"{path} ({size} bytes) is larger than the limit of {limit} bytes (runtime_env_max_package_bytes)")
        with open(path, "rb") as f:
            return f.read(), ".whl" if path.endswith(".whl") else ".zip"
    except PackageError as exc:
        raise RuntimeEnvValueError(f"runtime_env[{key!r}]: {exc}") from None


def package_working_dir(path: str, excludes: list[str] | None = None) -> tuple[str, bytes]:
    """(URI, zip bytes) of a local folder or .zip file as a working_dir, without touching the cluster.

    Raises ``RuntimeEnvValueError`` naming ``working_dir`` for a missing folder, one that is
    too large, or a zip with unsafe entries.
    """
    if not os.path.exists(path):
        raise RuntimeEnvValueError(f"runtime_env['working_dir'] names {path!r}, which does not exist.")
    data, suffix = _package_bytes("working_dir", path, excludes, include_folder_name=False)
    return packaging.package_uri(data, suffix), data


def upload_working_dir(path: str, store: PackageStore, excludes: list[str] | None = None) -> str:
    """Package a local folder (or .zip file) as a working_dir, store it in the cluster once; its URI.

    A URI is returned unchanged. Raises ``RuntimeEnvValueError`` naming ``working_dir``
    for a folder that is too large or a zip with unsafe entries.
    """
    if "://" in path:
        return path
    uri, data = package_working_dir(path, excludes)
    store.put(uri, data)
    return uri


def upload_py_module(path: str, store: PackageStore, excludes: list[str] | None = None) -> str:
    """Package a local module folder (kept under its own name), .zip or .whl; its URI."""
    if "://" in path:
        return path
    data, suffix = _package_bytes("py_modules", path, excludes, include_folder_name=True)
    uri = packaging.package_uri(data, suffix)
    store.put(uri, data)
    return uri


def upload_local_paths(env: dict[str, Any], store: PackageStore) -> dict[str, Any]:
    """A validated env with its local ``working_dir`` / ``py_modules`` replaced by cluster URIs.

    ``excludes`` is consumed here (it shaped the packages) and dropped.
    """
    out = dict(env)
    excludes = out.pop("excludes", None)
    if "working_dir" in out:
        out["working_dir"] = upload_working_dir(out["working_dir"], store, excludes)
    if "py_modules" in out:
        out["py_modules"] = [upload_py_module(p, store, excludes) for p in out["py_modules"]]
    return out
