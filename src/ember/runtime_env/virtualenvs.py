"""Virtualenvs for ``pip`` / ``uv`` runtime environments: one per distinct spec per machine.

A virtualenv is built once (under ``<runtime_env_dir>/venvs/<hash>``, behind the
resource's file lock, so concurrent requests wait for one build) and reused by
every worker, job and node daemon of the machine that asks for the same spec.
It is created with ``--system-site-packages``, so the worker's interpreter
(the venv's) still imports Ember and what the base interpreter has; the
spec's packages shadow the base ones.

With ``uv`` on the PATH (and ``runtime_env_use_uv``) it is ``uv venv`` +
``uv pip install`` with a shared cache; otherwise ``python -m venv`` + the base
interpreter's ``pip --python <venv>``. Installer output goes to
``<venv>.log``; a failure raises ``InstallError`` quoting its last lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from ember._private.config import config
from ember.runtime_env.local_files import exclusive, in_use, touch_used

#: Installer processes running now (ended when the node daemon stops).
_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()


class InstallError(Exception):
    """Building a virtualenv failed; the message quotes the installer's output."""


def venv_key(kind: str, spec: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "spec": spec, "python": sys.version, "exe": sys.executable}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def venv_python(path: str) -> str:
    return os.path.join(path, "bin", "python")


def _uv() -> str | None:
    return shutil.which("uv") if config().runtime_env_use_uv else None


def _run(cmd: list[str], log_path: str, deadline: float | None, env: dict[str, str]) -> None:
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with _running_lock:
            _running.add(proc)
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise InstallError(f"{os.path.basename(cmd[0])} did not finish within the setup timeout "
                                   "(runtime_env config setup_timeout_seconds)" + _tail(log_path)) from None
        finally:
            with _running_lock:
                _running.discard(proc)
    if code != 0:
        raise InstallError(f"`{' '.join(cmd)}` failed with exit code {code}" + _tail(log_path))


def _tail(log_path: str) -> str:
    try:
        with open(log_path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    keep = config().runtime_env_error_lines
    return "\n--- installer output (last lines) ---\n" + "\n".join(lines[-keep:])


def _build(kind: str, spec: dict[str, Any], dest: str, root: str, deadline: float | None) -> None:
    log_path = dest + ".log"
    with open(log_path, "wb"):
        pass
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    packages = list(spec.get("packages") or [])
    options = list(spec.get("pip_install_options" if kind == "pip" else "uv_pip_install_options") or [])
    python = venv_python(dest)
    uv = _uv()
    if uv is not None:
        env["UV_CACHE_DIR"] = os.path.join(root, "uv_cache")
        _run([uv, "venv", "--quiet", "--system-site-packages", "--python", sys.executable, dest], log_path, deadline, env)
        if packages:
            _run([uv, "pip", "install", "--python", python, *options, *packages], log_path, deadline, env)
    else:
        _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", dest], log_path, deadline, env)
        if packages:
            cache = os.path.join(root, "pip_cache")
            _run([sys.executable, "-m", "pip", "--python", python, "install", "--disable-pip-version-check",
                  "--cache-dir", cache, *options, *packages], log_path, deadline, env)
    if kind == "pip" and spec.get("pip_check"):
        _run([sys.executable, "-m", "pip", "--python", python, "check"], log_path, deadline, env)


def ensure_virtualenv(kind: str, spec: dict[str, Any], root: str, timeout_s: float | None) -> str:
    """The folder of the virtualenv for ``spec`` (``kind`` is "pip" or "uv"), built if needed.

    Raises:
        InstallError: the installer failed or ran past ``timeout_s``.
    """
    dest = os.path.join(root, "venvs", venv_key(kind, spec))
    ready = os.path.join(dest, ".ember_ready")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with in_use(dest):
        if not os.path.exists(ready):
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            with exclusive(dest):
                if not os.path.exists(ready):
                    # Built in place (scripts name the venv's folder); the marker says it is complete.
                    shutil.rmtree(dest, ignore_errors=True)  # a build a killed daemon left half done
                    try:
                        _build(kind, spec, dest, root, deadline)
                    except BaseException:
                        shutil.rmtree(dest, ignore_errors=True)
                        raise
                    with open(ready, "w"):
                        pass
        touch_used(dest)
    return dest


def kill_running_installs() -> None:
    """End every installer still running (the node daemon is stopping)."""
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
