"""This process's task events: what it saw of each task, one row per task, batched.

As *owner* a process reports each task it submitted as one ``TaskRow``: its states
(``PENDING_ARGS_AVAIL``, ``PENDING_NODE_ASSIGNMENT``, ``SUBMITTED_TO_WORKER``,
``FINISHED``, ``FAILED`` with the error's type and message) with the time each began.
The row is built when the task ends, from the history its ``TaskEntry`` keeps anyway
(``_private/state_machine.py``): nothing is recorded per transition. Actor calls, which
have no entry, note their few steps in a list here. An execution's start and end
times ride back to the owner in the task's reply (``PushReply.t``), and the owner's row
carries them with where the task ran (the lease's worker, node and pid): a short task
costs its worker nothing here and the control service one row. As *executor* a process
notes when each execution began, and reports an execution still running after a batch
period as a ``RunRow`` (the batch says which worker, node and pid).

Tasks still live are reported from the batch itself: every
``task_events_report_period_s`` the I/O loop walks the live tasks (the submitter's,
the actor calls', the executions running here) and adds a row for each one whose
state is older than the previous batch and not yet reported, so a task that ends
within a period is sent once, and a long one shows up within two periods. The
batch goes as one ``add_task_events`` notification: live rows first, then the rows of
tasks that ended, encoded by job (``EndedRows``, which the control service keeps
encoded until asked); ``gcs/task_events.py`` merges owner and executor rows. While
the control service is unreachable, rows wait here, up to ``task_events_buffer_size``
of each kind; older ones are dropped and the count is sent with the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ember._private.config import config
from ember.core.task_context import TaskContext
from ember.core.task_state import TaskEntry, TaskStatus
from ember.protocol.core_worker import ActorCallSpec, ActorCreationPush, CallSpec
from ember.protocol.gcs import (
    TASK_KINDS,
    TASK_STATES,
    EndedRows,
    RunRow,
    TaskEventBatch,
    TaskRow,
    encode_rows,
)

if TYPE_CHECKING:
    from ember.core.links import ClusterLinks, ProcessInfo

logger = logging.getLogger(__name__)

NORMAL_TASK = TASK_KINDS.index("NORMAL_TASK")
ACTOR_TASK = TASK_KINDS.index("ACTOR_TASK")
ACTOR_CREATION_TASK = TASK_KINDS.index("ACTOR_CREATION_TASK")
#: A state's wire code by its name (``TaskStatus`` values are the names).
STATE_CODES = {name: code for code, name in enumerate(TASK_STATES)}
_PENDING_ARGS = STATE_CODES["PENDING_ARGS_AVAIL"]
_FINISHED = STATE_CODES["FINISHED"]
_FAILED = STATE_CODES["FAILED"]
assert set(STATE_CODES) >= {s.value for s in TaskStatus}

#: Ray's ``ErrorType`` names for Ember's exceptions (the state API's ``error_type``).
_ERROR_TYPES = {
    "RayTaskError": "TASK_EXECUTION_EXCEPTION",
    "WorkerCrashedError": "WORKER_DIED",
    "TaskCancelledError": "TASK_CANCELLED",
    "OutOfMemoryError": "OUT_OF_MEMORY",
    "NodeDiedError": "NODE_DIED",
    "ActorDiedError": "ACTOR_DIED",
    "RayActorError": "ACTOR_DIED",
    "ActorUnavailableError": "ACTOR_UNAVAILABLE",
    "ObjectLostError": "OBJECT_LOST",
    "OwnerDiedError": "OWNER_DIED",
    "ObjectReconstructionFailedError": "OBJECT_UNRECONSTRUCTABLE",
    "TaskUnschedulableError": "TASK_UNSCHEDULABLE_ERROR",
    "ActorUnschedulableError": "ACTOR_UNSCHEDULABLE_ERROR",
    "RuntimeEnvSetupError": "RUNTIME_ENV_SETUP_FAILED",
    "LocalRayletDiedError": "LOCAL_RAYLET_DIED",
}


def error_type_of(error: BaseException) -> str:
    for cls in type(error).__mro__:
        if cls.__name__ in _ERROR_TYPES:
            return _ERROR_TYPES[cls.__name__]
    return "TASK_EXECUTION_EXCEPTION"


def describe_error(error: Any, reason: str) -> tuple[str, str]:
    """Ray's ``ErrorType`` name and the message of a stored error (a memory-store entry
    ``(kind, data)``). Failures are rare: the error is decoded here."""
    from ember._private import serialization

    try:
        _flags, exc = serialization.deserialize_inline(error[1])
    except Exception as decode_error:  # an exception class the owner cannot import
        return "TASK_EXECUTION_EXCEPTION", f"{reason} (its error could not be decoded here: {decode_error})"
    if isinstance(exc, BaseException):
        return error_type_of(exc), str(exc)[-4000:]
    return "TASK_EXECUTION_EXCEPTION", reason


def _no_live_tasks() -> Iterable[TaskEntry]:
    return ()


#: Where an execution ran: (worker id, node id, pid).
Host = tuple[bytes, bytes, int]

#: A ``TaskRow`` as a tuple of its fields in order (the trailing ones may be left out): the
#: owner builds one for every task it owns, and a tuple costs half a ``TaskRow`` to build and
#: to free, and encodes to the same array.
OwnerRow = tuple[Any, ...]
Row = TaskRow | OwnerRow
#: The states of a task that finished in four steps: it can only have gone straight through
#: (``task_state.py``'s transitions; a test checks it), so its row needs no per-step lookups.
_STRAIGHT_CODES = tuple(STATE_CODES[s] for s in (
    "PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "FINISHED"))
_FINISHED_STATUS = TaskStatus.FINISHED
_NOT_RUN = (None, None)


def _set_run(row: TaskRow, ran: list[float] | None, host: Host | None) -> None:
    """Where the task's latest execution ran and, if its reply said, when (``[start, end]``)."""
    if host is not None:
        row.worker, row.node, row.pid = host
        if ran:
            row.start, row.end = ran[0], ran[1]


def _drain(rows: deque[Row]) -> list[Row]:
    """Take what ``rows`` holds now (other threads may append meanwhile)."""
    take = rows.popleft
    return [take() for _ in range(len(rows))]


class TaskEventRecorder:
    def __init__(self, info: ProcessInfo, context: TaskContext, links: ClusterLinks) -> None:
        cfg = config()
        self._info = info
        self._context = context
        self._links = links
        self.enabled = cfg.task_events_enabled
        self._period = cfg.task_events_report_period_s
        self._limit = max(1, cfg.task_events_buffer_size)
        #: Rows of tasks that ended, by job, waiting for the next batch (appended on any thread,
        #: taken on the I/O loop); ``_merged``: those whose owner forgot their oldest steps (the
        #: control service merges them with the task's earlier row).
        self._ended: dict[bytes, deque[Row]] = {}
        self._merged: deque[Row] = deque(maxlen=self._limit)
        self._dropped = 0
        self._pid = os.getpid()
        #: The tasks this process submitted and that have not ended (set by the core worker:
        #: the submitter's pending tasks; read on the I/O loop only).
        self.live_tasks: Callable[[], Iterable[TaskEntry]] = _no_live_tasks
        #: Actor calls submitted here and not ended, by task id: [spec, code, time, code, time, ...].
        self._calls: dict[bytes, list[Any]] = {}
        #: Executions running here, by task id: (spec, start time, actor id).
        self._running: dict[bytes, tuple[CallSpec, float, bytes | None]] = {}
        #: Live tasks, calls and executions already reported, with what was reported (rebuilt per batch).
        self._reported: dict[bytes, int] = {}
        self._reported_runs: set[bytes] = set()
        self._last_batch = time.time()

    def close(self) -> None:
        self.live_tasks = _no_live_tasks

    # ------------------------------------------------------------------ owner: tasks
    def _add_task(self, row: Row, job: bytes, merged: bool = False) -> None:
        """A task's last row (it ended); ``merged``: its history lost its oldest steps."""
        if merged:
            rows = self._merged
        else:
            by_job = self._ended.get(job)  # a deque per job: kept, as another thread may hold it
            rows = by_job if by_job is not None else self._ended.setdefault(job, deque(maxlen=self._limit))
        if len(rows) == self._limit:
            self._dropped += 1
        rows.append(row)

    def _task_row(self, entry: TaskEntry, error_type: str | None = None, error: str | None = None) -> OwnerRow:
        """The row of a task this process owns (runs for every task: see ``OwnerRow``)."""
        spec = entry.spec
        steps = entry.history.steps
        if len(steps) == 4 and steps[3][2] is _FINISHED_STATUS:
            codes: Sequence[int] = _STRAIGHT_CODES
            times = [steps[0][0], steps[1][0], steps[2][0], steps[3][0]]
        else:
            codes = [STATE_CODES[step[2]._value_] for step in steps]
            times = [step[0] for step in steps]
        lease = entry.lease
        if lease is None:
            start = end = worker = node = pid = None
        else:  # pushed: where it ran, and when if the reply said
            start, end = entry.ran or _NOT_RUN
            worker, node, pid = lease.worker_id, lease.node_id, lease.pid
        return (spec["tid"], entry.attempt - 1 if entry.attempt else 0, entry.name, spec["job"],
                entry.parent or self._context.driver_task_id, NORMAL_TASK, None, spec.get("res"),
                codes, times, error_type, error, start, end, worker, node, pid)

    def task_finished(self, entry: TaskEntry) -> None:
        """The owner stored a task's results (on the I/O loop)."""
        if self.enabled:
            self._add_task(self._task_row(entry), entry.spec["job"], entry.history.dropped > 0)

    def task_failed(self, entry: TaskEntry, error: Any, reason: str) -> None:
        """The owner stored ``error`` (a memory-store entry ``(kind, data)``) as a task's result."""
        if self.enabled:
            self._add_task(self._task_row(entry, *describe_error(error, reason)), entry.spec["job"],
                           entry.history.dropped > 0)

    # ------------------------------------------------------------------ owner: actor calls
    def actor_call(self, spec: ActorCallSpec, state: str, ran: list[float] | None = None,
                   host: Host | None = None) -> None:
        """An actor call's state as its caller sees it (on the I/O loop): queued, pushed or
        finished (``ran``: the execution's start and end from the reply; ``host``: the actor's
        worker id, node id and pid)."""
        if not self.enabled:
            return
        code = STATE_CODES[state]
        if code == _PENDING_ARGS:
            self._calls[spec["tid"]] = [spec, code, time.time()]
        elif code == _FINISHED:
            row = self._call_row(spec, self._calls.pop(spec["tid"], None), code)
            _set_run(row, ran, host)
            self._add_task(row, row.job)
        else:
            steps = self._calls.get(spec["tid"])
            if steps is not None:
                steps += (code, time.time())

    def actor_call_failed(self, spec: ActorCallSpec, error: Any, reason: str, ran: list[float] | None = None,
                          host: Host | None = None) -> None:
        """The caller stored ``error`` as an actor call's result."""
        if self.enabled:
            row = self._call_row(spec, self._calls.pop(spec["tid"], None), _FAILED, *describe_error(error, reason))
            _set_run(row, ran, host)
            self._add_task(row, row.job)

    def _call_row(self, spec: ActorCallSpec, steps: list[Any] | None, end: int | None,
                  error_type: str | None = None, error: str | None = None) -> TaskRow:
        steps = steps[1:] if steps is not None else []
        if end is not None:
            steps += (end, time.time())
        return TaskRow(spec["tid"], 0, spec["name"], spec["job"], self._context.driver_task_id, ACTOR_TASK,
                       spec["aid"], None, tuple(steps[0::2]), tuple(steps[1::2]), error_type, error)

    # ------------------------------------------------------------------ executor
    def actor_constructed(self, task_id: bytes, spec: ActorCreationPush, error: BaseException | None) -> None:
        """The actor's constructor (its creation task) returned or raised, in its worker (while
        its execution is still noted as running here)."""
        if self.enabled:
            message = None if error is None else f"{type(error).__name__}: {error}"
            now = time.time()
            row = TaskRow(
                task_id, 0, "", spec["job"], None, ACTOR_CREATION_TASK, spec["actor_id"], None,
                (_FINISHED if error is None else _FAILED,), (now,),
                None if error is None else "TASK_EXECUTION_EXCEPTION", message,
            )
            started = self._running.get(task_id)
            info = self._info
            _set_run(row, [started[1], now] if started else None, (info.worker_id, info.node_id, self._pid))
            self._add_task(row, row.job)

    def execution_started(self, spec: CallSpec, actor_id: bytes | None) -> None:
        """A task starts running in this thread (the hot path of every execution)."""
        if self.enabled:
            self._running[spec["tid"]] = (spec, time.time(), actor_id)

    def execution_ended(self, task_id: bytes) -> list[float] | None:
        """The execution's ``[start, end]``, for its reply (None with events off)."""
        if self.enabled:
            started = self._running.pop(task_id, None)
            if started is not None:
                return [started[1], time.time()]
        return None

    @staticmethod
    def _run_row(task_id: bytes, started: tuple[CallSpec, float, bytes | None]) -> RunRow:
        spec, start, actor_id = started
        return RunRow(task_id, max(spec.get("attempt", 1) - 1, 0), start, spec["name"], spec["job"], actor_id)

    # ------------------------------------------------------------------ sending
    def _live_rows(self, since: float) -> tuple[list[Row], list[RunRow]]:
        """Rows of live tasks whose state began before ``since`` and was not reported yet."""
        tasks: list[Row] = []
        reported: dict[bytes, int] = {}
        previous = self._reported
        for entry in self.live_tasks():
            history = entry.history
            steps = history.steps
            if steps[-1][0] >= since:
                continue  # a recent state: the task may end before the next batch
            task_id = entry.spec["tid"]
            version = reported[task_id] = len(steps) + history.dropped
            if previous.get(task_id) != version:
                tasks.append(self._task_row(entry))
        for task_id, call in self._calls.items():
            if call[-1] < since:
                version = reported[task_id] = len(call)
                if previous.get(task_id) != version:
                    tasks.append(self._call_row(call[0], call, None))
        self._reported = reported
        runs: list[RunRow] = []
        running: set[bytes] = set()
        for task_id, started in self._running.copy().items():  # a copy: other threads add and remove
            if started[1] < since:
                running.add(task_id)
                if task_id not in self._reported_runs:
                    runs.append(self._run_row(task_id, started))
        self._reported_runs = running
        return tasks, runs

    def take_batch(self) -> TaskEventBatch | None:
        """What to send now (on the I/O loop); None if nothing happened."""
        now = time.time()
        tasks, runs = self._live_rows(self._last_batch)
        self._last_batch = now
        tasks += _drain(self._merged)
        ended: list[EndedRows] = []
        for job, rows in list(self._ended.items()):
            if rows:
                taken = _drain(rows)
                ended.append(EndedRows(job, len(taken), encode_rows(taken)))
        dropped, self._dropped = self._dropped, 0
        if not tasks and not runs and not ended and not dropped:
            return None
        info = self._info
        return TaskEventBatch(
            tasks=encode_rows(tasks) if tasks else b"", runs=encode_rows(runs) if runs else b"",
            ended=ended, dropped=dropped, job=self._context.current_job_id,
            worker=info.worker_id if runs else None, node=info.node_id if runs else None,
            pid=self._pid if runs else None,
        )

    def flush(self) -> None:
        """Send what accumulated (on the I/O loop); kept for later if the control service is away."""
        gcs = self._links.gcs
        if gcs is None or gcs.closed:
            return
        batch = self.take_batch()
        if batch is not None:
            gcs.notify("add_task_events", batch)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            self.flush()
