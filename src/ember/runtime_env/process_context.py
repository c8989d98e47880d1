"""Turning a runtime env into how a worker process starts: interpreter, folder, path, variables.

``prepare(env, store, root)`` runs on the node that will start the worker
(in a node daemon's setup thread, never on its event loop): it unpacks the
``working_dir`` and ``py_modules`` packages, builds the pip/uv virtualenv,
and returns a ``ProcessContext``. Any failure raises ``SetupFailed`` with a
message for the user (the node daemon sends it back as
``RuntimeEnvSetupError``). Nothing here unpickles anything.

The job supervisor can use the same function to start a job's entrypoint in
its runtime env (cwd = working_dir, PYTHONPATH, env_vars, interpreter).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from ember.runtime_env import local_files, virtualenvs
from ember.runtime_env.package_store import PackageStore
from ember.runtime_env.packaging import PackageError, is_cluster_uri
from ember.runtime_env.validation import DEFAULT_SETUP_TIMEOUT_S

#: Variables read when an interpreter starts: a forked worker would ignore them.
STARTUP_VARIABLE_PREFIXES = ("PYTHON", "LD_", "MALLOC_")


class SetupFailed(Exception):
    """The runtime env could not be built on this node (message for the user)."""


@dataclasses.dataclass
class ProcessContext:
    """How to start a process in a runtime env."""

    #: Interpreter to run (None: the node daemon's own).
    python: str | None = None
    #: Working directory (None: inherit).
    cwd: str | None = None
    #: Folders put first on sys.path, in order.
    sys_path: list[str] = dataclasses.field(default_factory=list)
    #: Environment variables to set (the user's env_vars, PYTHONPATH, VIRTUAL_ENV...).
    env_vars: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Resource folders in use (held by the node daemon while workers use them).
    resources: list[str] = dataclasses.field(default_factory=list)
    #: The worker must be a new interpreter, not a fork of one already running: another
    #: interpreter, or variables Python or the loader read only at start-up (PYTHON*, LD_*).
    fresh_interpreter: bool = False

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resources_dir(session_dir: str) -> str:
    """Where this machine keeps unpacked packages and virtualenvs (``runtime_env_dir`` or the session's)."""
    from ember._private.config import config

    return config().runtime_env_dir or os.path.join(session_dir, "runtime_resources")


def _fetcher(store: PackageStore) -> Any:
    def fetch(uri: str) -> bytes:
        return store.get(uri) if is_cluster_uri(uri) else local_files.fetch_remote(uri)

    return fetch


def materialize_working_dir(uri: str, store: PackageStore, root: str) -> str:
    """The local folder of a working_dir URI (``gcs://`` package or remote zip), unpacked once per machine.

    For a job's entrypoint: ``root`` is ``resources_dir(session_dir)``.

    Raises:
        SetupFailed: the package is missing, unreadable or unsafe (message for the user).
    """
    try:
        return local_files.ensure_package(uri, _fetcher(store), root)
    except PackageError as exc:
        raise SetupFailed(str(exc)) from None


def setup_timeout(env: dict[str, Any]) -> float | None:
    timeout = (env.get("config") or {}).get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_S)
    return None if timeout == -1 else float(timeout)


def prepare(env: dict[str, Any], store: PackageStore, root: str) -> ProcessContext:
    """Build what ``env`` needs on this machine and say how to start a worker in it.

    ``env`` is the wire form: ``working_dir`` / ``py_modules`` are URIs.
    """
    timeout = setup_timeout(env)
    started = time.monotonic()
    fetch = _fetcher(store)
    ctx = ProcessContext()
    try:
        if env.get("working_dir"):
            folder = local_files.ensure_package(env["working_dir"], fetch, root)
            ctx.cwd = folder
            ctx.sys_path.append(folder)
            ctx.resources.append(folder)
        for uri in env.get("py_modules") or []:
            folder = local_files.ensure_package(uri, fetch, root)
            ctx.sys_path.append(folder)
            ctx.resources.append(folder)
    except PackageError as exc:
        raise SetupFailed(str(exc)) from None
    except OSError as exc:
        raise SetupFailed(f"could not unpack a package on this node: {exc}") from None
    for kind in ("pip", "uv"):
        spec = env.get(kind)
        if spec is None:
            continue
        remaining = None if timeout is None else max(1.0, timeout - (time.monotonic() - started))
        try:
            venv = virtualenvs.ensure_virtualenv(kind, spec, root, remaining)
        except virtualenvs.InstallError as exc:
            raise SetupFailed(f"installing the {kind} packages {spec.get('packages')} failed: {exc}") from None
        ctx.python = virtualenvs.venv_python(venv)
        ctx.env_vars["VIRTUAL_ENV"] = venv
        ctx.env_vars["PATH"] = os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "")
        ctx.resources.append(venv)
    if env.get("py_executable"):
        import shutil

        python = shutil.which(env["py_executable"])
        if python is None:
            raise SetupFailed(f"py_executable {env['py_executable']!r} is not an executable on this node")
        ctx.python = python
    if ctx.sys_path:
        inherited = os.environ.get("PYTHONPATH", "")
        ctx.env_vars["PYTHONPATH"] = os.pathsep.join(ctx.sys_path + ([inherited] if inherited else []))
    user_vars = env.get("env_vars") or {}
    ctx.env_vars.update(user_vars)
    ctx.fresh_interpreter = ctx.python is not None or any(
        name.startswith(STARTUP_VARIABLE_PREFIXES) and name != "PYTHONPATH" for name in user_vars
    )
    return ctx
