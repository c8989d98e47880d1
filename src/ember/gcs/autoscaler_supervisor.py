"""The control service keeps the head's autoscaler running: it restarts one that dies.

``ember start --head --autoscaling-config`` (and ``ember up``) start the autoscaler and
then exit, so the longest-lived process of the head, the control service, supervises it.
The autoscaler's command is recorded in the session (``autoscaler_restart_args.json``,
``session.write_autoscaler_restart_args``); ``ember stop`` and ``ember down`` withdraw
that file before they end the autoscaler, so a stop on purpose is never undone.

How a death is seen: the autoscaler holds one connection to the control service and
reports on it (its report names its pid). When that connection closes, the supervisor
waits (``autoscaler_exit_wait_s``, through a pidfd: no polling) for that pid to exit; a
process still running will reconnect by itself and is left alone. A dead one is started
again from the recorded command after a pause that doubles per death in a row
(``autoscaler_restart_backoff_initial_s`` .. ``_max_s``; a run of
``autoscaler_restart_stable_s`` starts over); a restarted one that dies before its first
report is restarted the same way. Each death and restart is an event of the autoscaler's
status (``ember status`` shows them; the restarted autoscaler keeps them). Meanwhile the
node types' shapes stay with the node daemons, so demand a node type fits still waits
quietly for its node instead of being called infeasible; the cluster keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from typing import Callable

from ember._private import session
from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember._private.processes import spawn

logger = logging.getLogger(__name__)

#: The autoscaler's name in the session's ``pids/`` folder (as ``ember.autoscaler.main`` writes it).
PID_NAME = "autoscaler"


async def wait_for_exit(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` exits within ``timeout`` seconds (any process: a pidfd, not a child wait)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(exited, timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class AutoscalerSupervisor:
    """Restarts the head's autoscaler when it dies (see the module's docstring)."""

    def __init__(self, session_dir: str, background: BackgroundTasks,
                 event: Callable[[str, str], None], gave_up: Callable[[], None]) -> None:
        self.session_dir = session_dir
        self._background = background
        #: Records an event in the autoscaler's status: ``(kind, message)``.
        self._event = event
        #: No autoscaler will come back (stopped on purpose, or alive but silent): its shapes go.
        self._gave_up = gave_up
        #: The autoscaler processes this control service started (reaped when they end).
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        #: Deaths in a row (reset by a run of ``autoscaler_restart_stable_s``).
        self._deaths = 0
        #: When the current autoscaler first reported (monotonic; None: not yet).
        self._running_since: float | None = None
        self._reported: dict[int, asyncio.Event] = {}
        #: How many autoscalers this control service has started.
        self.restarts = 0
        #: True from a death until the restarted autoscaler reports (or supervision ends).
        self.restarting = False

    def on_report(self, pid: int) -> None:
        """An autoscaler ``pid`` reported."""
        if self._running_since is None:
            self._running_since = time.monotonic()
        self.restarting = False
        waiter = self._reported.get(pid)
        if waiter is not None:
            waiter.set()

    def connection_closed(self, pid: int | None) -> bool:
        """The connection of autoscaler ``pid`` closed: True if it will be restarted should it
        have died (its node types' shapes are then kept meanwhile)."""
        if pid is None or session.read_autoscaler_restart_args(self.session_dir) is None:
            return False
        self.restarting = True
        self._background.spawn_if_open(self._supervise(pid), f"supervise the autoscaler (pid {pid})")
        return True

    async def _supervise(self, pid: int) -> None:
        cfg = config()
        if not await wait_for_exit(pid, cfg.autoscaler_exit_wait_s):
            logger.info("the autoscaler (pid %d) closed its connection but runs on: it will reconnect", pid)
            self.restarting = False
            self._gave_up()
            return
        while True:
            how = self._how_it_ended(pid)
            now = time.monotonic()
            if self._running_since is not None and now - self._running_since >= cfg.autoscaler_restart_stable_s:
                self._deaths = 0
            self._running_since = None
            self._deaths += 1
            pause = min(cfg.autoscaler_restart_backoff_max_s,
                        cfg.autoscaler_restart_backoff_initial_s * 2.0 ** (self._deaths - 1))
            self._event("autoscaler_died", f"the autoscaler (pid {pid}) {how}; restarting it in {pause:g}s")
            await asyncio.sleep(pause)  # the restart backoff itself, not a synchronisation
            args = session.read_autoscaler_restart_args(self.session_dir)
            if args is None:
                self._event("autoscaler_stopped", "not restarted: the cluster is being stopped")
                self.restarting = False
                self._gave_up()
                return
            try:
                proc = spawn(args, log_path=os.path.join(self.session_dir, "logs", "monitor.log"), detach=True)
            except OSError as exc:
                self._event("autoscaler_restart_failed", f"could not start the autoscaler: {exc}")
                continue
            session.write_pid_file(self.session_dir, PID_NAME, proc.pid)
            self._children[proc.pid] = proc
            self.restarts += 1
            self._event("autoscaler_restarted", f"started the autoscaler again as pid {proc.pid} "
                        f"(restart {self.restarts}); it adopts the nodes its provider runs")
            pid = proc.pid
            reported = self._reported.setdefault(pid, asyncio.Event())
            try:
                if await self._reports_or_exits(pid, reported):
                    return  # its connection's close callback supervises it from now on
            finally:
                self._reported.pop(pid, None)

    async def _reports_or_exits(self, pid: int, reported: asyncio.Event) -> bool:
        """True once ``pid`` reports; False if it exits first (it is then restarted)."""
        report = asyncio.ensure_future(reported.wait())
        exit_ = asyncio.ensure_future(wait_for_exit(pid, config().autoscaler_start_timeout_s))
        try:
            while True:
                done, _ = await asyncio.wait({report, exit_}, return_when=asyncio.FIRST_COMPLETED)
                if report in done:
                    return True
                if exit_.result():
                    return False
                # Neither reported nor exited within the start timeout: keep waiting for either.
                exit_ = asyncio.ensure_future(wait_for_exit(pid, config().autoscaler_start_timeout_s))
        finally:
            for fut in (report, exit_):
                fut.cancel()

    def _how_it_ended(self, pid: int) -> str:
        proc = self._children.pop(pid, None)
        code = proc.wait() if proc is not None else None  # it has exited: this only reaps it
        if code is None:
            return "exited"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"
