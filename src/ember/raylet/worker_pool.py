"""Worker processes of one node: starting, registering, idling, dying.

State machine of a worker (transitions in ``WORKER_TRANSITIONS``)::

    STARTING --register--> IDLE --lease--> LEASED --return--> IDLE
        \\                     \\               \\
         +------------------------+---------------+--> DEAD
"""

from __future__ import annotations

import enum
import json
import logging
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

from ember._private import ids
from ember._private.state_machine import History, TransitionTable
from ember.exceptions import InvariantViolation
from ember.raylet.worker_launcher import ForkedProcess, SpawnLauncher
from ember.rpc import Connection

if TYPE_CHECKING:
    from ember.runtime_env.process_context import ProcessContext

logger = logging.getLogger(__name__)


class WorkerState(enum.Enum):
    STARTING = "STARTING"  # process spawned, not yet registered
    IDLE = "IDLE"  # registered, waiting for a lease
    LEASED = "LEASED"  # granted to a lease holder
    DEAD = "DEAD"  # exited or killed; never leaves this state


W = WorkerState
WORKER_TRANSITIONS: TransitionTable[WorkerState] = TransitionTable("worker", {
    (W.STARTING, W.IDLE): "registered with its node daemon",
    (W.STARTING, W.DEAD): "exited before registering",
    (W.IDLE, W.LEASED): "granted to a lease holder",
    (W.IDLE, W.DEAD): "exited, was killed or reaped while idle",
    (W.LEASED, W.IDLE): "its lease was returned",
    (W.LEASED, W.DEAD): "exited or was killed while leased",
})


class WorkerHandle:
    state: WorkerState
    def __init__(self, worker_id: bytes, proc: Any, out_path: str, err_path: str, env_key: str = "") -> None:
        self.worker_id = worker_id
        #: The runtime env this worker runs in ("" for the default one): it only takes leases of that env.
        self.env_key = env_key
        #: Killed to make room for a worker of another env; no longer counts against the cap.
        self.evicted = False
        self.proc = proc
        self.pid = proc.pid
        self.out_path = out_path
        self.err_path = err_path
        self.conn: Connection | None = None
        self.address: list[Any] | None = None
        self.history = History()
        WORKER_TRANSITIONS.start(self, WorkerState.STARTING, f"spawned as pid {self.pid}")
        self.lease_id: bytes | None = None
        #: Leased to an actor for its whole life: not counted against the task-worker cap.
        self.dedicated = False
        #: Forked by the fork server (False: a fresh interpreter, ~2x the memory and 0.1 s of CPU).
        self.forked = False
        self.started_at = time.monotonic()
        self.idle_since = time.monotonic()
        self.exit_detail = ""
        #: Why the node daemon ended this worker itself ("" when it died on its own).
        self.end_reason = ""
        #: SIGKILLed by the node daemon: never leased again, whatever its state until its death is seen.
        self.killed = False

    @property
    def label(self) -> str:
        return f"worker {self.worker_id.hex()} (pid {self.pid})"

    def transition(self, new: WorkerState, reason: str) -> None:
        WORKER_TRANSITIONS.move(self, new, reason)
        if new is WorkerState.IDLE:
            self.idle_since = time.monotonic()


class WorkerPool:
    def __init__(self, logs_dir: str, env: dict[str, str], max_workers: int) -> None:
        self.launcher: Any = SpawnLauncher()
        self.logs_dir = logs_dir
        self.env = env
        self.max_workers = max_workers
        self.workers: dict[bytes, WorkerHandle] = {}
        self.idle: list[WorkerHandle] = []
        #: Workers that may be starting (forked, not yet registered) at once.
        self.startup_concurrency = 8
        #: Runtime envs whose workers exited before registering: env key -> their stderr files.
        self.failed_starts: dict[str, list[str]] = {}

    # ------------------------------------------------------------- counting
    def alive(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.state is not WorkerState.DEAD]

    def num_starting(self, env_key: str | None = None) -> int:
        return sum(
            1 for w in self.workers.values()
            if w.state is WorkerState.STARTING and (env_key is None or w.env_key == env_key)
        )

    def num_dedicated(self) -> int:
        return sum(1 for w in self.workers.values() if w.dedicated and w.state is not WorkerState.DEAD)

    def can_start(self, blocked: int = 0) -> bool:
        """Whether another worker may start for tasks (``max_workers``).

        Workers blocked in ``get`` do not count, so nested tasks can always make
        progress; actors' workers do not count either: an actor holds its process
        for its life (as in Ray, actors are limited by real limits, not this cap).
        Workers evicted to make room for another env's no longer count.
        """
        return sum(1 for w in self.alive() if not w.evicted and not w.dedicated) - blocked < self.max_workers

    def evict_idle(self, env_key: str) -> bool:
        """Kill the longest-idle worker of another env to make room for one of ``env_key``."""
        others = [w for w in self.idle if w.state is WorkerState.IDLE and w.env_key != env_key and not w.evicted]
        if not others:
            return False
        victim = min(others, key=lambda w: w.idle_since)
        self.idle.remove(victim)
        victim.evicted = True
        self.kill(victim)
        return True

    def launch_ready(self) -> bool:
        """Whether another worker may start now (the caller retries when one registers).

        At most ``startup_concurrency`` start at once (as Ray's
        ``maximum_startup_concurrency``): on a small machine a burst of a thousand
        actors would otherwise fork a thousand interpreters that fight for the
        CPUs, and starve this daemon's own loop. None starts while the fork server
        warms up: its "ready" line (or its death) schedules again.
        """
        starting = [w for w in self.workers.values() if w.state is WorkerState.STARTING]
        if len(starting) >= self.startup_concurrency:
            return False
        launcher = self.launcher
        if getattr(launcher, "ready", True) or getattr(launcher, "dead", False):
            return True
        launcher.read_available()
        return bool(launcher.ready or launcher.dead)

    # -------------------------------------------------------------- starting
    def start_worker(self, env_key: str = "", ctx: ProcessContext | None = None, env_wire: dict[str, Any] | None = None) -> WorkerHandle:
        """Start a worker, in the runtime env ``ctx`` describes when given.

        A worker needing another interpreter (pip/uv venv, py_executable) or start-up
        variables (PYTHON*, LD_*) starts fresh; the others are forked by the fork server,
        which moves them to the env's folder and path before the runtime starts.
        """
        worker_id = ids.random_unique_id()
        name = worker_id.hex()[:16]
        out_path = os.path.join(self.logs_dir, f"worker-{name}.out")
        err_path = os.path.join(self.logs_dir, f"worker-{name}.err")
        env = self.env
        place: dict[str, Any] = {}
        launcher = self.launcher
        if ctx is not None:
            env = {**self.env, **ctx.env_vars, "EMBER_RUNTIME_ENV": json.dumps(env_wire or {})}
            place = {"cwd": ctx.cwd, "sys_path": ctx.sys_path}
            if ctx.fresh_interpreter:
                launcher = SpawnLauncher(ctx.python)
        try:
            proc = launcher.launch(worker_id.hex(), out_path, err_path, env, **place)
        except RuntimeError as exc:
            logger.warning("fork server failed (%s); starting workers as new interpreters", exc)
            self.launcher = SpawnLauncher()
            proc = self.launcher.launch(worker_id.hex(), out_path, err_path, env, **place)
        handle = WorkerHandle(worker_id, proc, out_path, err_path, env_key)
        handle.forked = isinstance(proc, ForkedProcess)
        self.workers[worker_id] = handle
        return handle

    def register(self, conn: Connection, worker_id: bytes, address: list[Any]) -> WorkerHandle | None:
        handle = self.workers.get(worker_id)
        if handle is None or handle.state is not WorkerState.STARTING:
            return None
        handle.conn = conn
        handle.address = address
        self.failed_starts.pop(handle.env_key, None)
        handle.transition(WorkerState.IDLE, "registered")
        self.idle.append(handle)
        return handle

    # --------------------------------------------------------------- leasing
    def pop_idle(self, env_key: str = "") -> WorkerHandle | None:
        """The most recently idle worker of ``env_key`` (a task never runs in another env's worker)."""
        for index in range(len(self.idle) - 1, -1, -1):
            handle = self.idle[index]
            if handle.state is not WorkerState.IDLE or handle.killed:
                del self.idle[index]
            elif handle.env_key == env_key:
                del self.idle[index]
                return handle
        return None

    def lease_worker(self, handle: WorkerHandle, lease_id: bytes, dedicated: bool) -> None:
        """An idle worker (taken with :meth:`pop_idle`) now serves ``lease_id``."""
        handle.transition(WorkerState.LEASED, f"lease {lease_id.hex()[:12]}")
        handle.lease_id = lease_id
        handle.dedicated = dedicated

    def return_worker(self, handle: WorkerHandle) -> None:
        """Its lease was returned: the worker is idle again (unless it is being killed)."""
        handle.lease_id = None
        if handle.state is WorkerState.LEASED and not handle.killed:
            handle.transition(WorkerState.IDLE, "lease returned")
            self.idle.append(handle)

    def leased_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.state is WorkerState.LEASED]

    # ----------------------------------------------------------------- death
    def mark_dead(self, handle: WorkerHandle) -> None:
        if handle.state is WorkerState.DEAD:
            return
        code = handle.proc.poll()
        handle.exit_detail = f"exit code {code}" if code is not None else "connection closed"
        handle.transition(WorkerState.DEAD, handle.exit_detail)
        if handle in self.idle:
            self.idle.remove(handle)

    def kill(self, handle: WorkerHandle, reason: str = "") -> None:
        """SIGKILL the worker; ``reason`` (why the node daemon chose to) is what its death report says."""
        if reason and not handle.end_reason:
            handle.end_reason = reason
        handle.killed = True
        if handle.proc.poll() is None:
            try:
                handle.proc.kill()
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        """Forget dead workers whose processes have exited."""
        for wid, handle in list(self.workers.items()):
            if handle.state is WorkerState.DEAD and handle.proc.poll() is not None:
                del self.workers[wid]
            elif handle.state is WorkerState.DEAD and time.monotonic() - handle.started_at > 0:
                # It dropped its connection but lingers: make sure it ends.
                self.kill(handle)
            elif handle.state is WorkerState.STARTING and handle.proc.poll() is not None:
                logger.error(
                    "worker %s (pid %d) exited with code %s before registering; see %s",
                    wid.hex()[:12], handle.pid, handle.proc.returncode, handle.err_path,
                )
                handle.transition(WorkerState.DEAD, f"exited with code {handle.proc.returncode} before registering")
                del self.workers[wid]
                if handle.env_key:
                    self.failed_starts.setdefault(handle.env_key, []).append(handle.err_path)

    def validate(self) -> None:
        """Check the pool's bookkeeping; raise ``InvariantViolation`` naming what is wrong.

        Every idle-listed worker is known and listed once; every IDLE worker that may still
        be handed out is listed; a STARTING worker has no connection, a registered one has;
        a worker with a lease id is LEASED.
        """
        problems = []
        listed = [id(w) for w in self.idle]
        if len(set(listed)) != len(listed):
            problems.append("a worker is on the idle list twice")
        problems += [f"{w.label} is on the idle list but not in the pool" for w in self.idle
                     if self.workers.get(w.worker_id) is not w]
        for worker in self.workers.values():
            if worker.state is WorkerState.IDLE and not worker.killed and id(worker) not in listed:
                problems.append(f"{worker.label} is IDLE but not on the idle list")
            if worker.state is WorkerState.STARTING and worker.conn is not None:
                problems.append(f"{worker.label} is STARTING with a connection")
            if worker.state in (WorkerState.IDLE, WorkerState.LEASED) and worker.conn is None:
                problems.append(f"{worker.label} is {worker.state.name} without a connection")
            if worker.lease_id is not None and worker.state is not WorkerState.LEASED:
                problems.append(f"{worker.label} holds lease {worker.lease_id.hex()[:12]} in state {worker.state.name}")
        if problems:
            raise InvariantViolation("worker pool: " + "; ".join(problems))

    def stop_all(self, timeout: float) -> None:
        for handle in self.workers.values():
            if handle.proc.poll() is None:
                try:
                    handle.proc.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for handle in self.workers.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                handle.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                handle.proc.kill()
                try:
                    handle.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    logger.error("worker pid %d did not exit after SIGKILL", handle.pid)
        self.launcher.stop()
