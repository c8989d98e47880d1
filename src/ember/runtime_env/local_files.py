"""A node's copies of runtime-environment resources: unpacked packages and virtualenvs.

Everything lives under one folder per node machine (``runtime_env_dir``, by
default the session's ``runtime_resources/``), shared by the node daemons of
that machine. Each resource ``X`` has companions:

* ``X.lock``: taken exclusively while ``X`` is built, so many workers or nodes
  asking at once build it once;
* ``X.use``: held shared by whoever checks for, builds or uses ``X`` (a node
  daemon keeps it while it has workers in the env); ``collect_unused`` removes
  ``X`` only when it gets this lock exclusively, without waiting;
* ``X.used``: touched whenever ``X`` is used; what nobody used for
  ``runtime_env_unused_ttl_s`` may be removed.

Two files, because one would deadlock: a daemon holding its use of ``X`` shared
would starve another daemon waiting to take it exclusively to build ``X``.
A resource appears by an atomic rename (or a marker), so its existence means it
is complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator

from ember.runtime_env import packaging
from ember.runtime_env.packaging import PackageError


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """Hold ``path + '.lock'`` exclusively (blocking)."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hold_shared(path: str) -> int:
    """Mark ``path`` in use by this process until the returned descriptor is closed."""
    fd = os.open(path + ".use", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


@contextlib.contextmanager
def in_use(path: str) -> Iterator[None]:
    """Keep ``path`` from being collected while it is checked for, built and touched."""
    fd = hold_shared(path)
    try:
        yield
    finally:
        os.close(fd)


def touch_used(path: str) -> None:
    with open(path + ".used", "a"):
        pass
    os.utime(path + ".used")


def ensure_package(uri: str, fetch: Callable[[str], bytes], root: str) -> str:
    """The local folder holding package ``uri``, unpacked once on this machine.

    ``fetch(uri)`` returns the zip's bytes. Zips given by a non-cluster URI that hold
    a single top-level folder are unpacked without it (Ray's rule for remote zips).

    Raises:
        PackageError: fetching or unpacking failed (unsafe entries included).
    """
    dest = os.path.join(root, "packages", packaging.package_name(uri))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with in_use(dest):
        if not os.path.isdir(dest):
            with exclusive(dest):
                if not os.path.isdir(dest):
                    data = fetch(uri)
                    strip = not packaging.is_cluster_uri(uri) and not uri.endswith(".whl")
                    packaging.unpack(data, dest, strip_top_folder=strip)
        touch_used(dest)
    return dest


def fetch_remote(uri: str) -> bytes:
    """A zip named by a URI other than the cluster's own (``file://``, ``s3://``, ``https://``...), through fsspec."""
    try:
        import fsspec
    except ImportError:
        raise PackageError(f"fetching {uri} needs the fsspec package (pip install fsspec)") from None
    try:
        with fsspec.open(uri, "rb") as f:
            return bytes(f.read())
    except FileNotFoundError:
        raise PackageError(f"{uri} does not exist") from None
    except Exception as exc:  # any backend's error: report it with the URI
        raise PackageError(f"could not fetch {uri}: {type(exc).__name__}: {exc}") from None


def collect_unused(root: str, ttl_s: float, now: float | None = None) -> list[str]:
    """Remove packages and virtualenvs nobody holds and nobody used for ``ttl_s``; what was removed."""
    now = time.time() if now is None else now
    removed = []
    for kind in ("packages", "venvs"):
        folder = os.path.join(root, kind)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith(".") or name.endswith((".lock", ".use", ".used", ".log")):
                continue
            path = os.path.join(folder, name)
            if now - _last_used(path) < ttl_s:
                continue
            fd = os.open(path + ".use", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        continue  # in use by some daemon
                    raise
                if now - _last_used(path) < ttl_s or not os.path.exists(path):
                    continue  # used (or removed) between the first look and the lock
                trash = os.path.join(folder, f".removing_{name}_{os.getpid()}")
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
                # The lock files stay: someone may be waiting on them right now.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + ".used")
                removed.append(path)
            finally:
                os.close(fd)
    return removed


def _last_used(path: str) -> float:
    try:
        return os.path.getmtime(path + ".used")
    except FileNotFoundError:
        try:
            return os.path.getmtime(path)
        except FileNotFoundError:
            return time.time()
