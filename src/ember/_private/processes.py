"""Starting and ending the processes Ember owns, always by pid."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def spawn(
    args: Sequence[str],
    *,
    log_path: str,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    detach: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``python args...`` with stdout and stderr appended to ``log_path``."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "ab", buffering=0) as log:
        return subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            pass_fds=tuple(pass_fds),
            start_new_session=detach,
            close_fds=True,
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def stop_pid(pid: int, timeout: float = 3.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM ``pid``, wait up to ``timeout``, then SIGKILL; reap it if it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _reap(pid, proc)
        return
    deadline = time.monotonic() + timeout
    delay = 0.002
    while time.monotonic() < deadline:
        if _reap(pid, proc) or not pid_alive(pid):
            return
        time.sleep(delay)  # polling a process exit: there is no event to wait on portably
        delay = min(delay * 2, 0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    else:
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def _reap(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is not None
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return False


def raise_oom_score(pid: int | None = None, score: int = 1000) -> None:
    """Make the kernel's OOM killer prefer this process (best effort: a container may forbid it)."""
    path = f"/proc/{pid or 'self'}/oom_score_adj"
    try:
        with open(path, "w") as f:
            f.write(str(score))
    except OSError as exc:
        import logging

        logging.getLogger(__name__).debug("could not set %s: %s", path, exc)


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def resident_bytes(pid: int | None) -> int | None:
    """Resident memory (RSS) of ``pid`` in bytes, or None if it is gone or unreadable."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        try:
            return int(psutil.Process(pid).memory_info().rss)
        except (psutil.Error, OSError):
            return None


def host_memory() -> dict[str, int]:
    """This machine's memory: ``{"total": bytes, "used": bytes}`` (used = total - available)."""
    import psutil

    vm = psutil.virtual_memory()
    return {"total": int(vm.total), "used": int(vm.total - vm.available)}
