"""Session folders, the cluster token and the "current cluster" file.

A session is one cluster's life on this machine::

    /tmp/ember/session_<YYYY-mm-dd_HH-MM-SS_ffffff>_<pid>/
        token            the cluster token (mode 0600)
        logs/            one log file per process
        pids/            one file per daemon started for this session
        dashboard.json   {"url": "host:port"} of the head's HTTP server
    /tmp/ember/session_latest -> the newest session
    /tmp/ember/ember_current_cluster   JSON: address of the head started by `ember start`
    /tmp/ember/clusters/<host>_<port>  JSON: the session of every head this user started
                                       here (folder 0700, files 0600), so that a driver or
                                       a command given only the address finds the token

Token discovery (``cluster_token``) is the one place every client (``init``,
the CLI, the jobs SDK) asks for a cluster's token: an explicit token, then
``EMBER_CLUSTER_TOKEN``, then this user's private registry of heads.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import socket
import stat
from typing import Any


def temp_root() -> str:
    return os.environ.get("EMBER_TMPDIR", "/tmp/ember")


def current_cluster_file() -> str:
    return os.path.join(temp_root(), "ember_current_cluster")


def create_session_dir() -> str:
    """A new session folder with ``logs/`` and ``pids/``; ``session_latest`` is moved by ``link_latest``.

    Callers link it once the session's daemons have started, and ``discard_session_dir`` a
    session that failed before anything was written to it, so that a failed start leaves
    neither an empty folder nor a ``session_latest`` pointing at one.
    """
    root = temp_root()
    os.makedirs(root, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    path = os.path.join(root, f"session_{stamp}_{os.getpid()}")
    os.makedirs(os.path.join(path, "logs"))
    os.makedirs(os.path.join(path, "pids"))
    return path


def link_latest(session_dir: str) -> None:
    """Point ``<temp root>/session_latest`` at ``session_dir`` (atomically)."""
    latest = os.path.join(os.path.dirname(session_dir), "session_latest")
    tmp_link = f"{latest}.{os.getpid()}"
    try:
        os.symlink(session_dir, tmp_link)
        os.replace(tmp_link, latest)
    except OSError:
        pass


def discard_session_dir(session_dir: str) -> None:
    """Remove the folder of a session that never started (nothing in it is worth keeping)."""
    shutil.rmtree(session_dir, ignore_errors=True)


def create_token(session_dir: str) -> str:
    token = secrets.token_hex(24)
    path = os.path.join(session_dir, "token")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def read_token(session_dir: str) -> str:
    with open(os.path.join(session_dir, "token")) as f:
        return f.read().strip()


def write_current_cluster(info: dict[str, Any]) -> None:
    path = current_cluster_file()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def read_current_cluster() -> dict[str, Any] | None:
    try:
        with open(current_cluster_file()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_current_cluster(session_dir: str | None = None) -> None:
    info = read_current_cluster()
    if info is None:
        return
    if session_dir is None or info.get("session_dir") == session_dir:
        try:
            os.unlink(current_cluster_file())
        except OSError:
            pass


def write_pid_file(session_dir: str, name: str, pid: int) -> None:
    with open(os.path.join(session_dir, "pids", f"{name}.pid"), "w") as f:
        f.write(str(pid))


def read_pid_files(session_dir: str) -> dict[str, int]:
    folder = os.path.join(session_dir, "pids")
    pids: dict[str, int] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return pids
    for name in names:
        try:
            with open(os.path.join(folder, name)) as f:
                pids[name[: -len(".pid")]] = int(f.read().strip())
        except (OSError, ValueError):
            continue
    return pids


def _autoscaler_args_path(session_dir: str) -> str:
    return os.path.join(session_dir, "autoscaler_restart_args.json")


def write_autoscaler_restart_args(session_dir: str, args: list[str]) -> None:
    """Record how the head's autoscaler is started (``python args...``): while this file exists,
    the control service restarts an autoscaler that dies (``ember stop``/``down`` remove it first)."""
    path = _autoscaler_args_path(session_dir)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(args, f)
    os.replace(tmp, path)


def read_autoscaler_restart_args(session_dir: str) -> list[str] | None:
    """The autoscaler's command (None: no autoscaler is to be kept running)."""
    try:
        with open(_autoscaler_args_path(session_dir)) as f:
            args = json.load(f)
    except (OSError, ValueError):
        return None
    return [str(a) for a in args] if isinstance(args, list) else None


def withdraw_autoscaler_restart_args(session_dir: str) -> None:
    """The autoscaler is being stopped on purpose: it must not be restarted."""
    try:
        os.unlink(_autoscaler_args_path(session_dir))
    except FileNotFoundError:
        pass


def write_dashboard_url(session_dir: str, url: str) -> None:
    """Record the head's HTTP server address (``host:port``) in ``dashboard.json``."""
    path = os.path.join(session_dir, "dashboard.json")
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"url": url}, f)
    os.replace(tmp, path)


def read_dashboard_url(session_dir: str) -> str | None:
    """The head's HTTP server address recorded in ``session_dir``, or None."""
    try:
        with open(os.path.join(session_dir, "dashboard.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return url if isinstance(url, str) and url else None


def shm_root() -> str:
    """Where object stores live: /dev/shm when it exists, else the temp root."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(temp_root(), "shm")


def object_store_dir(session_name: str, node_id_hex: str) -> str:
    return os.path.join(shm_root(), f"ember_{session_name}_{node_id_hex[:12]}")


# ----------------------------------------------------------------------------- heads started here
def clusters_dir() -> str:
    """This user's registry of the heads it started on this machine (mode 0700)."""
    return os.path.join(temp_root(), "clusters")


def _normalize_address(address: str) -> str:
    """``HOST:PORT`` with the host as an IP address (``localhost`` -> ``127.0.0.1``)."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        return address.strip()
    try:
        host = str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0])
    except (OSError, UnicodeError):
        pass
    return f"{host}:{port}"


def _registry_path(address: str) -> str:
    key = _normalize_address(address).replace(":", "_").replace("/", "_")
    return os.path.join(clusters_dir(), f"{key}.json")


def _private_dir(path: str) -> bool:
    """Create ``path`` mode 0700 if missing; True if it is ours and nobody else can enter it."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def register_cluster(gcs_address: str, session_dir: str) -> None:
    """Record that this user started the head at ``gcs_address`` (its token is in ``session_dir``)."""
    folder = clusters_dir()
    if not _private_dir(folder):
        return  # someone else's folder: discovery is off, EMBER_CLUSTER_TOKEN still works
    path = _registry_path(gcs_address)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"gcs_address": gcs_address, "session_dir": session_dir}, f)
    os.replace(tmp, path)


def unregister_cluster(session_dir: str) -> None:
    """Forget every head recorded for ``session_dir`` (it was stopped)."""
    folder = clusters_dir()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        entry = _read_private_json(path)
        if entry is not None and entry.get("session_dir") == session_dir:
            try:
                os.unlink(path)
            except OSError:
                pass


def _read_private_file(path: str) -> str | None:
    """A file only this user can read and write (not a symlink), or None (missing, foreign, open to others)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        return f.read()


def _read_private_json(path: str) -> dict[str, Any] | None:
    text = _read_private_file(path)
    try:
        data = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _read_private_token(session_dir: str) -> str | None:
    text = _read_private_file(os.path.join(session_dir, "token"))
    return text.strip() or None if text is not None else None


def discover_token(gcs_address: str) -> str | None:
    """The token of a head this user started on this machine at ``gcs_address``, if any."""
    entry = _read_private_json(_registry_path(gcs_address))
    if entry is not None and isinstance(entry.get("session_dir"), str):
        token = _read_private_token(entry["session_dir"])
        if token:
            return token
    current = read_current_cluster()
    if current and _normalize_address(str(current.get("gcs_address", ""))) == _normalize_address(gcs_address):
        return _read_private_token(str(current.get("session_dir", "")))
    return None


def cluster_token(gcs_address: str, explicit: str | None = None) -> str:
    """The token to join ``gcs_address``: ``explicit``, ``EMBER_CLUSTER_TOKEN`` or discovered.

    Raises:
        ConnectionError: none is known; the message says how to give one.
    """
    token = explicit or os.environ.get("EMBER_CLUSTER_TOKEN") or discover_token(gcs_address)
    if not token:
        raise ConnectionError(
            f"No token for the cluster at {gcs_address}: it was not started by this user on this "
            "machine (no entry in "
            f"{clusters_dir()}). Set EMBER_CLUSTER_TOKEN to the contents of the 'token' file in "
            "the head's session folder."
        )
    return token


# ----------------------------------------------------------------------------- HTTP servers of heads
#: A head's HTTP server records its ``host:port`` here (``{"url": ..., "pid": ...}``).
DASHBOARD_URL_FILE = "dashboard.json"


def dashboard_url(session_dir: str) -> str | None:
    """``host:port`` of the HTTP server of the head whose session is ``session_dir``, if it runs one."""
    try:
        with open(os.path.join(session_dir, DASHBOARD_URL_FILE)) as f:
            url = json.load(f).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) and url else None


def _registered_session_dirs() -> list[str]:
    """Session folders of the heads this user started on this machine (the current one first)."""
    found: list[str] = []
    current = read_current_cluster()
    if current and isinstance(current.get("session_dir"), str):
        found.append(current["session_dir"])
    try:
        names = sorted(os.listdir(clusters_dir()))
    except OSError:
        names = []
    for name in names:
        entry = _read_private_json(os.path.join(clusters_dir(), name))
        if entry is not None and isinstance(entry.get("session_dir"), str) and entry["session_dir"] not in found:
            found.append(entry["session_dir"])
    return found


def local_dashboard_url() -> str | None:
    """``host:port`` of the HTTP server of the head started last on this machine (``ember start``)."""
    current = read_current_cluster()
    return dashboard_url(str(current.get("session_dir", ""))) if current else None


def discover_token_for_http(netloc: str) -> str | None:
    """The token of a head this user started here whose HTTP server is at ``netloc`` (``host:port``).

    Only this user's private records are read, so a server at some other address never
    receives a token it was not meant to have.
    """
    wanted = _normalize_address(netloc)
    for session_dir in _registered_session_dirs():
        url = dashboard_url(session_dir)
        if url and _normalize_address(url) == wanted:
            return _read_private_token(session_dir)
    return None
