"""A process's runtime env and the effective env of what it submits.

Every driver and worker has a *parent* env: a driver's is its job's
(``init(runtime_env=)`` merged with the job submission's, ``EMBER_JOB_RUNTIME_ENV``),
a worker's is the env it was started in (``EMBER_RUNTIME_ENV``). A task or
actor without ``runtime_env`` runs in the parent env; one with it runs in
``merge(parent, its own)`` (Ray's inheritance rule). Local paths are uploaded
once per process and spelling; the result is the *wire* env, and its key
(a hash) pools workers on nodes: ``""`` is the default env.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from ember.exceptions import RuntimeEnvValueError
from ember.runtime_env.validation import merge, validate

#: Set by the job supervisor for a submitted job's driver: the job's runtime_env (JSON).
JOB_ENV_VAR = "EMBER_JOB_RUNTIME_ENV"
#: Set by node daemons for workers: the wire env the worker runs in (JSON).
WORKER_ENV_VAR = "EMBER_RUNTIME_ENV"


def env_key(wire: dict[str, Any]) -> str:
    """The pooling key of a wire env ("" for the default env); ``config`` does not change a worker."""
    shape = {k: v for k, v in wire.items() if k != "config"}
    if not shape:
        return ""
    return hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def job_env(init_env: Any) -> dict[str, Any]:
    """A driver's validated env: ``init(runtime_env=)`` over the submitted job's, by Ray's rule.

    The same key or variable in both is an error unless ``EMBER_OVERRIDE_JOB_RUNTIME_ENV=1``
    (or Ray's ``RAY_OVERRIDE_JOB_RUNTIME_ENV=1``), in which case ``init``'s wins.
    """
    own = validate(init_env)
    raw = os.environ.get(JOB_ENV_VAR)
    if not raw:
        return own
    try:
        submitted = validate(json.loads(raw))
    except ValueError as exc:
        raise RuntimeEnvValueError(f"{JOB_ENV_VAR} holds a bad runtime_env: {exc}") from None
    override = "1" in (os.environ.get("EMBER_OVERRIDE_JOB_RUNTIME_ENV"), os.environ.get("RAY_OVERRIDE_JOB_RUNTIME_ENV"))
    merged = merge(submitted, own, override=override)
    if merged is None:
        raise RuntimeEnvValueError(
            f"The job's runtime_env {submitted} and init(runtime_env={own}) set the same field or "
            "environment variable. Give each once, or set EMBER_OVERRIDE_JOB_RUNTIME_ENV=1 to let "
            "init's values win."
        )
    return merged


class EnvResolver:
    """The parent env of one process and the effective envs of its submissions (cached)."""

    def __init__(self, parent_wire: dict[str, Any], gcs_call: Callable[[str, Any], Any],
                 job_id: Callable[[], bytes] | None = None) -> None:
        self.parent = parent_wire
        self.parent_key = env_key(parent_wire)
        self._gcs_call = gcs_call
        self._job_id = job_id  # the job submitting now: it pins the packages it uses
        self._cache: dict[tuple[bytes, str], tuple[str, dict[str, Any]]] = {}

    def effective(self, option_env: Any) -> tuple[str, dict[str, Any]]:
        """(key, wire env) of a task or actor given ``runtime_env=option_env`` (None: inherit)."""
        if option_env is None:
            return self.parent_key, self.parent
        spelling = (self._job_id() if self._job_id else b"", json.dumps(option_env, sort_keys=True, default=repr))
        hit = self._cache.get(spelling)
        if hit is None:
            merged = merge(self.parent, validate(option_env))
            assert merged is not None  # None only when override=False
            wire = self._upload(merged)
            hit = self._cache[spelling] = (env_key(wire), wire)
        return hit

    def resolve_job_env(self, validated: dict[str, Any]) -> dict[str, Any]:
        """Upload a driver's validated job env; it becomes this process's parent env."""
        wire = self._upload(validated)
        self.parent = wire
        self.parent_key = env_key(wire)
        return wire

    def _upload(self, env: dict[str, Any]) -> dict[str, Any]:
        """Local folders uploaded (a setup hook exported); every package the env uses pinned by the current job."""
        if callable(env.get("worker_process_setup_hook")):
            from ember.runtime_env.setup_hook import export_hook

            env["worker_process_setup_hook"] = export_hook(env["worker_process_setup_hook"], self._gcs_call)
        if "working_dir" not in env and "py_modules" not in env:
            env.pop("excludes", None)
            return env
        from ember.runtime_env.package_store import (  # zips: only when needed
            PackageStore,
            upload_local_paths,
        )

        job_id = self._job_id() if self._job_id else b""
        store = PackageStore(self._gcs_call, job_hex=job_id.hex() if job_id.strip(b"\0") else None)
        wire = upload_local_paths(env, store)
        for uri in [wire.get("working_dir"), *(wire.get("py_modules") or [])]:
            if uri:
                store.pin(uri)
        return wire
