"""Session folders, the cluster token and the "current cluster" file.

A session is one cluster's life on this machine::

    /tmp/ember/session_<YYYY-mm-dd_HH-MM-SS_ffffff>_<pid>/
        token            the cluster token (mode 0600)
        logs/            one log file per process
        pids/            one file per daemon started for this session
    /tmp/ember/session_latest -> the newest session
    /tmp/ember/ember_current_cluster   JSON: address of the head started by `ember start`
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from typing import Any


def temp_root() -> str:
    return os.environ.get("EMBER_TMPDIR", "/tmp/ember")


def current_cluster_file() -> str:
    return os.path.join(temp_root(), "ember_current_cluster")


def create_session_dir() -> str:
    root = temp_root()
    os.makedirs(root, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    path = os.path.join(root, f"session_{stamp}_{os.getpid()}")
    os.makedirs(os.path.join(path, "logs"))
    os.makedirs(os.path.join(path, "pids"))
    latest = os.path.join(root, "session_latest")
    tmp_link = f"{latest}.{os.getpid()}"
    try:
        os.symlink(path, tmp_link)
        os.replace(tmp_link, latest)
    except OSError:
        pass
    return path


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


def shm_root() -> str:
    """Where object stores live: /dev/shm when it exists, else the temp root."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(temp_root(), "shm")


def object_store_dir(session_name: str, node_id_hex: str) -> str:
    return os.path.join(shm_root(), f"ember_{session_name}_{node_id_hex[:12]}")
