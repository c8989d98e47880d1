"""Helpers Ray's test suites import from ``ray._common.test_utils`` / ``ray._private.test_utils``,
with Ray's signatures: actors to coordinate tasks (``SignalActor``, ``Semaphore``), waiting
for conditions and processes, running a driver script in a child process, and leak checks.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import time
from typing import Any

import ember
from ember._private.test_utils import wait_for_condition
from ember.util.queue import Empty, Queue, _QueueActor

#: Seconds a driver started by ``run_string_as_driver`` may run before it is killed.
DEFAULT_DRIVER_TIMEOUT_SECONDS = 300


@ember.remote(num_cpus=0)
class SignalActor:
    """A one-bit signal: tasks ``await signal.wait.remote()`` until someone calls ``send``."""

    def __init__(self) -> None:
        self.ready_event = asyncio.Event()
        self.num_waiters = 0

    def send(self, clear: bool = False) -> None:
        self.ready_event.set()
        if clear:
            self.ready_event.clear()

    async def wait(self, should_wait: bool = True) -> None:
        if should_wait:
            self.num_waiters += 1
            try:
                await self.ready_event.wait()
            finally:
                self.num_waiters -= 1

    async def cur_num_waiters(self) -> int:
        return self.num_waiters


@ember.remote(num_cpus=0)
class Semaphore:
    """A counting semaphore shared by tasks and actors."""

    def __init__(self, value: int = 1) -> None:
        self._sema = asyncio.Semaphore(value=value)

    async def acquire(self) -> None:
        await self._sema.acquire()

    async def release(self) -> None:
        self._sema.release()

    async def locked(self) -> bool:
        return self._sema.locked()


def run_string_as_driver(
    driver_script: str, env: dict[str, str] | None = None, encode: str = "utf-8",
    timeout: float | None = DEFAULT_DRIVER_TIMEOUT_SECONDS,
) -> str:
    """Run ``driver_script`` in a new Python process and return its output (stdout and stderr).

    Raises:
        subprocess.CalledProcessError: the script exited with a non-zero status (its output
            is in the exception's ``output``).
        subprocess.TimeoutExpired: it did not finish within ``timeout`` seconds (it is killed).
    """
    with subprocess.Popen(
        [sys.executable, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    ) as proc:
        try:
            output = proc.communicate(driver_script.encode(encode), timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        text = output.decode(encode, errors="replace")
        if proc.returncode:
            print(text)
            raise subprocess.CalledProcessError(proc.returncode, proc.args, text)
    return text


def run_string_as_driver_nonblocking(driver_script: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``driver_script`` in a new Python process and return its ``Popen`` (stdout and
    stderr are pipes; the caller waits for or kills it)."""
    runner = "import sys; script = sys.stdin.read(); sys.stdin.close(); del sys; exec(script)"
    proc = subprocess.Popen(
        [sys.executable, "-c", runner], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(driver_script.encode("utf-8"))
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() and wait() work as usual
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_pid_to_exit(pid: int, timeout: float = 20) -> None:
    """Return once process ``pid`` has exited; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out while waiting for process {pid} to exit.")
        time.sleep(0.05)  # polling interval


def kill_actor_and_wait_for_failure(actor: Any, timeout: float = 10, retry_interval_ms: float = 100) -> None:
    """``ember.kill(actor)`` and return once it is DEAD (or restarting: its restart count grew)."""
    from ember.state import actors

    actor_hex = actor._actor_id.hex()
    restarts = actors(actor_id=actor_hex).get("NumRestarts", 0)
    ember.kill(actor)

    def failed() -> bool:
        info = actors(actor_id=actor_hex)
        return info.get("State") == "DEAD" or info.get("NumRestarts", 0) > restarts

    try:
        wait_for_condition(failed, timeout=timeout, retry_interval_ms=retry_interval_ms)
    except RuntimeError:
        raise RuntimeError(f"It took too much time to kill an actor: {actor_hex}") from None


def placement_group_assert_no_leak(pgs_created: list[Any]) -> None:
    """Remove the groups, then wait until every group is REMOVED and every resource is back."""
    from ember.util.placement_group import placement_group_table, remove_placement_group

    for pg in pgs_created:
        remove_placement_group(pg)

    def all_removed() -> bool:
        return all(entry.get("state") == "REMOVED" for entry in placement_group_table().values())

    wait_for_condition(all_removed)
    total = ember.cluster_resources()
    total.pop("memory", None)
    total.pop("object_store_memory", None)

    def resources_back() -> bool:
        for name, amount in ember.available_resources().items():
            if "_group_" in name or (name in total and total[name] != amount):
                return False
        return True

    wait_for_condition(resources_back)


class _BatchQueueActor(_QueueActor):
    async def get_batch(
        self, batch_size: int | None = None, total_timeout: float | None = None, first_timeout: float | None = None,
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        try:
            batch = [await asyncio.wait_for(self.queue.get(), first_timeout)]
        except asyncio.TimeoutError:
            raise Empty from None
        # The rest of the batch shares total_timeout: None waits for batch_size items (with no
        # batch_size it means 0: take what is there).
        if total_timeout is None and batch_size is None:
            total_timeout = 0
        deadline = None if total_timeout is None else loop.time() + total_timeout
        while batch_size is None or len(batch) < batch_size:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                if self.queue.empty():
                    break
                batch.append(self.queue.get_nowait())
                continue
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch


class BatchQueue(Queue):
    """A ``Queue`` that can also hand out several items at once (``get_batch``)."""

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an integer >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        options = {"num_cpus": 0, **(actor_options or {})}
        self.actor = ember.remote(_BatchQueueActor).options(**options).remote(maxsize)

    def get_batch(
        self, batch_size: int | None = None, total_timeout: float | None = None, first_timeout: float | None = None,
    ) -> list[Any]:
        """Up to ``batch_size`` items (all there are if None) in order: waits up to ``first_timeout``
        for the first (``Empty`` if none comes), then up to ``total_timeout`` for the rest."""
        items: list[Any] = ember.get(self.actor.get_batch.remote(batch_size, total_timeout, first_timeout))
        return items


__all__ = [
    "BatchQueue", "DEFAULT_DRIVER_TIMEOUT_SECONDS", "Semaphore", "SignalActor", "kill_actor_and_wait_for_failure",
    "placement_group_assert_no_leak", "run_string_as_driver", "run_string_as_driver_nonblocking",
    "wait_for_condition", "wait_for_pid_to_exit",
]
