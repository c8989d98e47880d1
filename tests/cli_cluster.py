"""Helpers for tests that run clusters with the ``ember`` command (``ember start``).

Every daemon such a cluster runs is recorded in its session's ``pids/`` folder
(a restarted control service rewrites ``pids/gcs.pid``). ``end_everything``
ends them all, with their descendants, by pid, and removes their object-store
folders, so a test can call it in ``finally`` whatever happened.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import psutil

from ember._private.processes import pid_alive
from ember._private.test_utils import wait_for_condition


def cli_env(tmpdir: str, **extra: str) -> dict[str, str]:
    """The environment for ``ember`` commands and drivers of a cluster kept under ``tmpdir``."""
    os.makedirs(tmpdir, exist_ok=True)
    env = dict(os.environ)
    env["EMBER_TMPDIR"] = tmpdir
    for key in ("EMBER_ADDRESS", "RAY_ADDRESS", "EMBER_CLUSTER_TOKEN"):
        env.pop(key, None)
    env.update(extra)
    return env


def ember_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from ember.cli import main; main()", *args],
        env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def session_dirs(tmpdir: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(tmpdir, "session_*")) if not os.path.islink(p))


def read_pid(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def session_pids(tmpdir: str) -> set[int]:
    """Every daemon pid recorded under ``tmpdir`` (pid files and ``ember_started.json``)."""
    import json

    pids: set[int] = set()
    for path in glob.glob(os.path.join(tmpdir, "session_*", "pids", "*.pid")):
        try:
            pids.add(read_pid(path))
        except (OSError, ValueError):
            pass
    try:
        with open(os.path.join(tmpdir, "ember_started.json")) as f:
            for entry in json.load(f):
                pids.update(int(p) for p in entry.get("pids", {}).values())
    except (OSError, ValueError):
        pass
    return pids


def with_descendants(pids: Iterable[int]) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs[pid] = proc
            for child in proc.children(recursive=True):
                procs[child.pid] = child
        except psutil.Error:
            pass
    return list(procs.values())


def kill_and_reap(procs: list[psutil.Process]) -> None:
    """SIGKILL each process by pid, wait for it and reap it (pytest is their subreaper)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    for proc in procs:
        try:
            os.waitpid(proc.pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


def end_everything(tmpdir: str, extra: Iterable[Any] = ()) -> None:
    """End every daemon of every session under ``tmpdir`` (and ``extra`` Popen objects / pids)."""
    pids = set(session_pids(tmpdir))
    popens = []
    for item in extra:
        if isinstance(item, subprocess.Popen):
            popens.append(item)
            pids.add(item.pid)
        elif item:
            pids.add(int(item))
    kill_and_reap(with_descendants(pids))
    for proc in popens:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for session_dir in session_dirs(tmpdir):
        for store in glob.glob(f"/dev/shm/ember_{os.path.basename(session_dir)}_*"):
            shutil.rmtree(store, ignore_errors=True)


def log_text(session_dir: str, pattern: str) -> str:
    """All of the session's log files matching ``pattern`` (e.g. ``raylet-*.log``), concatenated."""
    out = []
    for path in sorted(glob.glob(os.path.join(session_dir, "logs", pattern))):
        try:
            with open(path, errors="replace") as f:
                out.append(f.read())
        except OSError:
            pass
    return "\n".join(out)


def restart_gcs(session_dir: str, env: dict[str, str], storage: str | None = None) -> subprocess.Popen[bytes]:
    """Start the control service again the way gcs_restart_args.json says (optionally on another storage)."""
    with open(os.path.join(session_dir, "gcs_restart_args.json")) as f:
        args = json.load(f)
    if storage is not None:
        args[args.index("--storage") + 1] = storage
    log = open(os.path.join(session_dir, "logs", "gcs_server_restarted.log"), "ab")
    try:
        return subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    finally:
        log.close()


def kill_gcs(session_dir: str) -> int:
    pid = read_pid(os.path.join(session_dir, "pids", "gcs.pid"))
    os.kill(pid, signal.SIGKILL)
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)
    return pid
