"""The fork server: a process that has already imported the worker runtime
and forks a new worker in a millisecond or two on request.

Protocol (one JSON object per line): the node daemon writes
``{"worker_id", "out", "err", "env", "cwd", "sys_path"}`` to our stdin
(``cwd`` / ``sys_path``: a runtime env's working_dir and modules); we fork and answer
``{"worker_id", "pid"}`` on stdout; when a child exits we write
``{"exited": pid, "code": returncode}`` (negative: killed by that signal).
End of input means the node daemon is gone: we exit, and our children,
which asked Linux for SIGKILL when we die, go with us.

No threads run here, so forking is safe.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys


def _preload() -> None:
    """Import here what every worker imports, so that forks share those pages instead of
    each loading its own copy (a thousand actors: ~1.5 MiB less each for uvloop alone)."""
    import concurrent.futures.thread  # noqa: F401  (actors' thread pools)
    import encodings.idna  # noqa: F401  (resolving host names)

    import ember.core.actor_runtime  # noqa: F401
    import ember.core.worker  # noqa: F401  (the heavy imports: asyncio, cloudpickle, msgpack)
    import ember.core.worker_main  # noqa: F401
    import ember.runtime_env.resolve  # noqa: F401

    try:
        import uvloop  # noqa: F401  (the I/O loop of every worker; imported lazily by the loop thread)
    except ImportError:
        pass


def _write(out: int, message: dict[str, object]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        try:
            n = os.write(out, data)
        except InterruptedError:
            continue
        data = data[n:]


def _child(request: dict[str, object], zygote_pid: int) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(str(request["out"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    err = os.open(str(request["err"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (devnull, out, err):
        os.close(fd)
    env = request.get("env")
    if isinstance(env, dict):
        os.environ.update({str(k): str(v) for k, v in env.items()})
    os.environ["EMBER_WORKER_ID"] = str(request["worker_id"])
    if request.get("cwd"):
        try:
            os.chdir(str(request["cwd"]))
        except OSError as exc:
            print(f"worker cannot enter its working_dir: {exc}", file=sys.stderr, flush=True)
            os._exit(1)
    sys.path[0:0] = [str(p) for p in list(request.get("sys_path") or [])]  # type: ignore[call-overload]
    os.environ["EMBER_RAYLET_PID"] = str(zygote_pid)
    import random

    random.seed()
    from ember.core import worker_main

    try:
        worker_main.main()
    finally:
        os._exit(1)


def main() -> None:
    _preload()
    # What the preload built is never garbage: move it out of the collector's reach, so a
    # worker's collections do not write to (and so copy) every page it shares with us.
    gc.collect()
    gc.freeze()
    zygote_pid = os.getpid()
    from ember._private.processes import set_parent_death_signal

    set_parent_death_signal(signal.SIGTERM)
    out_fd = sys.stdout.fileno()
    in_fd = sys.stdin.fileno()

    def reap(signum: int, frame: object) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            _write(out_fd, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    signal.signal(signal.SIGCHLD, reap)
    _write(out_fd, {"ready": True})
    buffer = b""
    while True:
        try:
            chunk = os.read(in_fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            os._exit(0)
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
            except ValueError:
                continue
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
            try:
                pid = os.fork()
                if pid == 0:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                    _child(request, zygote_pid)
                _write(out_fd, {"worker_id": request["worker_id"], "pid": pid})
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


if __name__ == "__main__":
    main()
