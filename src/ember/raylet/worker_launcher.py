"""How the node daemon starts worker processes.

``ZygoteLauncher`` asks the fork server (``zygote.py``) for a fork: a new
worker in about a millisecond instead of the ~100 ms a fresh interpreter
needs to import the runtime. ``SpawnLauncher`` starts a fresh interpreter;
it is the fallback when the fork server is unavailable. Both hand back an
object with the small part of ``subprocess.Popen``'s interface the pool uses.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

from ember._private.config import config

logger = logging.getLogger(__name__)


class ForkedProcess:
    """A worker forked by the fork server; its exit status arrives from there."""

    def __init__(self, pid: int, launcher: ZygoteLauncher) -> None:
        self.pid = pid
        self._launcher = launcher
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._launcher.read_available()
            code = self._launcher.exit_codes.pop(self.pid, None)
            if code is not None:
                self.returncode = code
            elif self._launcher.dead:
                # The fork server is gone and cannot report: look at the process itself.
                from ember._private.processes import pid_alive

                if not pid_alive(self.pid):
                    self.returncode = -signal.SIGKILL
        return self.returncode

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            self._launcher.wait_readable(0.05)
        assert self.returncode is not None
        return self.returncode


class SpawnLauncher:
    """Starts ``python -m ember.core.worker_main`` (``python``: another interpreter, e.g. a venv's)."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def launch(self, worker_id_hex: str, out_path: str, err_path: str, env: dict[str, str],
               cwd: str | None = None, sys_path: list[str] | None = None) -> Any:
        # sys_path reaches the new interpreter through PYTHONPATH, which the env already holds.
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["EMBER_WORKER_ID"] = worker_id_hex
        full_env["PYTHONUNBUFFERED"] = "1"
        with open(out_path, "ab", buffering=0) as out, open(err_path, "ab", buffering=0) as err:
            return subprocess.Popen(
                [self.python, "-m", "ember.core.worker_main"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=full_env, close_fds=True, cwd=cwd,
            )

    def stop(self) -> None:
        pass


def fork_server_log(logs_dir: str, node_id: bytes) -> str:
    """Where a node's fork server writes its output (its errors while warming up among them)."""
    return os.path.join(logs_dir, f"zygote-{node_id.hex()[:12]}.log")


class ZygoteLauncher:
    def __init__(self, log_path: str) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "ab", buffering=0) as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ember.raylet.zygote"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, close_fds=True,
            )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self._out = self.proc.stdout.fileno()
        self.output_fd = self._out
        os.set_blocking(self._out, False)
        self._buffer = b""
        self.exit_codes: dict[int, int] = {}
        self._pids: dict[str, int] = {}
        self.dead = False
        self.ready = False
        self._fallback = SpawnLauncher()

    def launch(self, worker_id_hex: str, out_path: str, err_path: str, env: dict[str, str],
               cwd: str | None = None, sys_path: list[str] | None = None, timeout: float | None = None) -> Any:
        timeout = config().fork_server_launch_timeout_s if timeout is None else timeout
        self.read_available()
        if not self.ready:
            # Still importing (the pool waits for it; only a direct caller gets here).
            return self._fallback.launch(worker_id_hex, out_path, err_path, env, cwd, sys_path)
        request = {"worker_id": worker_id_hex, "out": out_path, "err": err_path, "env": env, "cwd": cwd, "sys_path": sys_path or []}
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.dead = True
            raise RuntimeError(f"the fork server is gone: {exc}") from exc
        deadline = time.monotonic() + timeout
        while worker_id_hex not in self._pids:
            if self.dead or time.monotonic() > deadline:
                self.dead = True
                raise RuntimeError("the fork server did not answer")
            self.wait_readable(max(0.0, deadline - time.monotonic()))
        return ForkedProcess(self._pids.pop(worker_id_hex), self)

    def wait_readable(self, timeout: float) -> None:
        if self.dead:
            return
        ready, _, _ = select.select([self._out], [], [], timeout)
        if ready:
            self.read_available()

    def read_available(self) -> None:
        if self.dead:
            return
        while True:
            try:
                chunk = os.read(self._out, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.dead = True
                break
            self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                logger.warning("bad line from the fork server: %r", line[:200])
                continue
            if "ready" in message:
                self.ready = True
            elif "exited" in message:
                self.exit_codes[int(message["exited"])] = int(message["code"])
            elif "pid" in message:
                self._pids[str(message["worker_id"])] = int(message["pid"])

    def kill(self) -> None:
        """End it now (it never got ready); its forks, if any, go with it (parent-death signal)."""
        self.dead = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
