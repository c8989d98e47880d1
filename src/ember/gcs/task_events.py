"""The task-event aggregator: what the state API says about tasks (``list_tasks``, summaries, timeline).

Processes send batches of rows (``core/task_events.py``, ``protocol/gcs.py``): a task's
owner sends one ``TaskRow`` (its states with their times, the result's error, and the
latest execution's start, end, worker, node and pid, which the reply told it); a
worker sends a ``RunRow`` only for an execution still running after a batch period
(the batch says which worker, node and pid).

Every task of the cluster passes through here, nearly always as the one row its owner
sends when it ends. Those rows come encoded, by job (``EndedRows``), and are *kept
encoded*: intake files the bytes and counts them, and a query decodes them. Most are
dropped by retention without ever being read, so decoding them as they came would be
most of this service's work under load. Rows of live tasks (and the rare ended one
whose owner forgot its oldest steps) are decoded as they come into ``tasks``, the latest
per task; an ended task's row supersedes its live one (its chunk's task ids are read
then, only if live rows are kept). Decoded rows are ``gc=False`` structs sharing their
repeated values, so the many kept cost the garbage collector nothing.

A query assembles a ``TaskView`` per task from its rows (``TaskView.public``): the
latest execution is the owner's or the worker's, whichever started later (the owner's
when the same); the state is the owner's once terminal, else ``RUNNING`` if that
execution started after the owner's latest state, else the owner's.

Retention is bounded per job (``task_events_max_tasks_per_job``): beyond it the oldest
*ended* tasks of that job are dropped first, live ones only when the job has no ended
task left. Every drop (here, or in a process whose buffer overflowed) is counted per
job and returned with every query, so truncation is never silent.
"""
from __future__ import annotations

import bisect
import builtins
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ember._private.state_filters import matches
from ember.exceptions import ProtocolError
from ember.protocol.gcs import (
    TASK_KINDS,
    TASK_STATES,
    EndedRows,
    RunRow,
    TaskEventBatch,
    TaskListing,
    TaskRow,
    TaskSummary,
    TaskSummaryRow,
    ended_rows,
    ended_task_ids,
    run_rows,
    task_rows,
)

logger = logging.getLogger(__name__)

TERMINAL = frozenset(("FINISHED", "FAILED"))
#: How far the clocks of the hosts whose workers report end times may run ahead of this one's.
CLOCK_SKEW_ALLOWANCE_S = 300.0
RUNNING = "RUNNING"
_TERMINAL_CODES = frozenset(TASK_STATES.index(s) for s in TERMINAL)
_ACTOR_TASK = "ACTOR_TASK"

#: (worker id, node id, pid) of the process that ran an execution.
Host = tuple[bytes | None, bytes | None, int | None]
#: The latest execution of a task and where it ran.
Run = tuple[RunRow, Host]


def _state_of(owner: TaskRow | None, start: float | None) -> str:
    if owner is not None and owner.states:
        last = owner.states[-1]
        if last in _TERMINAL_CODES or start is None or start < owner.times[-1]:
            return TASK_STATES[last]
        return RUNNING
    return RUNNING if start is not None else "PENDING_ARGS_AVAIL"


class TaskView:
    """One task as the state API shows it, assembled from its rows when asked."""

    __slots__ = ("task_id", "owner", "run", "host", "start", "run_end", "state")

    def __init__(self, task_id: bytes, owner: TaskRow | None, run: Run | None) -> None:
        self.task_id = task_id
        self.owner = owner
        #: The worker's row of an execution still running (None: none, or the owner's is newer).
        self.run: RunRow | None = None
        self.host: Host | None = None
        self.start: float | None = None
        self.run_end: float | None = None
        if run is not None:
            self.run, self.host, self.start = run[0], run[1], run[0].start
        if owner is not None and owner.worker is not None:
            if owner.start is not None and (self.start is None or owner.start >= self.start):
                self.run, self.start, self.run_end = None, owner.start, owner.end
                self.host = (owner.worker, owner.node, owner.pid)
            elif self.start is None:
                self.host = (owner.worker, owner.node, owner.pid)  # pushed, not (known to have) run
        self.state = _state_of(owner, self.start)

    @property
    def job_id(self) -> bytes:
        if self.owner is not None:
            return self.owner.job
        return self.run.job if self.run is not None else b""

    @property
    def name(self) -> str:
        owner, run = self.owner, self.run
        if owner is not None and owner.name:
            return owner.name
        return run.name if run is not None else ""

    @property
    def actor(self) -> bytes | None:
        owner, run = self.owner, self.run
        if owner is not None and owner.actor:
            return owner.actor
        return run.actor if run is not None else None

    @property
    def type(self) -> str:
        kind = TASK_KINDS[self.owner.kind] if self.owner is not None else "NORMAL_TASK"
        return _ACTOR_TASK if kind == "NORMAL_TASK" and self.actor else kind

    @property
    def parent(self) -> bytes | None:
        return self.owner.parent if self.owner is not None else None

    @property
    def attempt(self) -> int:
        return max(self.owner.attempt if self.owner else 0, self.run.attempt if self.run else 0)

    @property
    def worker(self) -> bytes | None:
        return self.host[0] if self.host else None

    @property
    def node(self) -> bytes | None:
        return self.host[1] if self.host else None

    @property
    def pid(self) -> int | None:
        return self.host[2] if self.host else None

    @property
    def error_type(self) -> str | None:
        owner = self.owner
        return owner.error_type if owner is not None and self.state != "FINISHED" else None

    @property
    def error(self) -> str | None:
        owner = self.owner
        return owner.error if owner is not None and self.state != "FINISHED" else None

    @property
    def end(self) -> float | None:
        """When the latest execution ended; for a task whose worker never said (it died), when it ended."""
        if self.start is None:
            return None
        if self.run_end is None and self.state in TERMINAL and self.owner is not None:
            return self.owner.times[-1]
        return self.run_end

    def steps(self) -> list[tuple[str, float]]:
        """Every state with its start time, oldest first (the owner's and the latest execution's)."""
        owner, start = self.owner, self.start
        steps = [(TASK_STATES[c], t) for c, t in zip(owner.states, owner.times)] if owner is not None else []
        if start is not None:
            at = bisect.bisect_right([t for _, t in steps], start)
            steps.insert(at, (RUNNING, start))
        return steps

    def public(self, detail: bool) -> dict[str, Any]:
        """Ray's ``TaskState`` fields (ids in hex, times in ms)."""
        parent, actor, node, worker = self.parent, self.actor, self.node, self.worker
        out: dict[str, Any] = {
            "task_id": self.task_id.hex(),
            "attempt_number": self.attempt,
            "name": self.name,
            "state": self.state,
            "job_id": self.job_id.hex(),
            "actor_id": actor.hex() if actor else None,
            "type": self.type,
            "func_or_class_name": self.name,
            "parent_task_id": parent.hex() if parent else None,
            "node_id": node.hex() if node else None,
            "worker_id": worker.hex() if worker else None,
            "worker_pid": self.pid,
            "error_type": self.error_type,
        }
        if detail:
            steps = [{"state": state, "created_ms": at * 1000.0} for state, at in self.steps()]
            start, end = self.start, self.end
            out.update({
                "language": "PYTHON",
                "required_resources": dict(self.owner.resources or {}) if self.owner else {},
                "runtime_env_info": None,
                "placement_group_id": None,
                "events": steps,
                "profiling_data": None,
                "creation_time_ms": steps[0]["created_ms"] if steps else None,
                "start_time_ms": start * 1000.0 if start is not None else None,
                "end_time_ms": end * 1000.0 if end is not None else None,
                "task_log_info": None,
                "error_message": self.error,
                "is_debugger_paused": None,
                "call_site": None,
                "label_selector": None,
            })
        return out


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value else None


#: Filter keys answered from the view without building its public form.
_FAST_KEYS: dict[str, Callable[[TaskView], Any]] = {
    "task_id": lambda r: r.task_id.hex(),
    "state": lambda r: r.state,
    "name": lambda r: r.name,
    "func_or_class_name": lambda r: r.name,
    "job_id": lambda r: r.job_id.hex(),
    "type": lambda r: r.type,
    "node_id": lambda r: _hex(r.node),
    "worker_id": lambda r: _hex(r.worker),
    "actor_id": lambda r: _hex(r.actor),
    "worker_pid": lambda r: r.pid,
    "error_type": lambda r: r.error_type,
    "attempt_number": lambda r: r.attempt,
    "parent_task_id": lambda r: _hex(r.parent),
}

def _unmatched_chunks(filters: list[tuple[str, str, str]]) -> Callable[[_Ended], bool] | None:
    """Which chunks of ended tasks no row of can match ``filters``, as far as is known without
    decoding them: every row's state is FINISHED or FAILED, and its job the chunk's. So the
    query the state API exists for, the running tasks among many finished, reads no chunk."""
    states = [value for key, op, value in filters if key == "state" and op == "="]
    if any(not any(matches(state, "=", value) for state in TERMINAL) for value in states):
        return lambda ended: True
    jobs = [value for key, op, value in filters if key == "job_id" and op == "="]
    if jobs:
        return lambda ended: not all(matches(ended.chunk.job.hex(), "=", value) for value in jobs)
    return None


#: Every filterable key (Ray's ``TaskState`` fields).
TASK_FIELDS = frozenset(TaskView(b"", None, None).public(detail=True))


class _Ended:
    """Rows of ended tasks of one job as one process sent them (``EndedRows``), kept encoded; the
    first ``skip`` were dropped by retention."""

    __slots__ = ("seq", "chunk", "skip", "received", "ids")

    def __init__(self, seq: int, chunk: EndedRows) -> None:
        self.seq = seq
        self.chunk = chunk
        self.skip = 0
        #: Its rows' task ids (all, the dropped ones too), once retention started dropping them
        #: while executions are kept: each drop then does not read them again.
        self.ids: list[bytes] | None = None
        #: When it came (this host's clock): its tasks had ended by then.
        self.received = time.time()

    @property
    def kept(self) -> int:
        return self.chunk.count - self.skip


class TaskEventStore:
    def __init__(self, max_tasks_per_job: int) -> None:
        self.max_per_job = max_tasks_per_job
        #: The latest decoded owner row of kept tasks (live ones, and ended ones whose owner forgot
        #: their oldest steps), all jobs, in the order tasks were first reported.
        self.tasks: dict[bytes, TaskRow] = {}
        #: Rows of ended tasks, kept encoded, per job, oldest first.
        self.ended: dict[bytes, deque[_Ended]] = {}
        self._seq = 0
        #: The latest execution of every task that ran (also of tasks whose owner row has not come).
        self.runs: dict[bytes, Run] = {}
        #: Kept tasks per job.
        self._kept: dict[bytes, int] = {}
        self.dropped: dict[bytes, int] = {}
        #: One copy of each repeated value of the decoded rows (names, jobs, parents, resources,
        #: hosts): see _share_values.
        self._shared: dict[Any, Any] = {}

    # ---------------------------------------------------------------- intake
    def add_batch(self, batch: TaskEventBatch) -> None:
        """One process's rows, and how many it dropped (``ProtocolError``: its rows are malformed)."""
        job = batch.job or b""
        for chunk in batch.ended:
            if not 0 < chunk.count <= len(chunk.rows):
                raise ProtocolError(f"bad add_task_events ended rows: {chunk.count} rows in {len(chunk.rows)} bytes")
        rows = task_rows(batch)
        runs = run_rows(batch)
        if batch.dropped:
            self.dropped[job] = self.dropped.get(job, 0) + batch.dropped
        if rows:
            self._share_values(rows)
            self._add_tasks(rows)
        for chunk in batch.ended:  # after the live rows: these tasks ended since
            self._add_ended(chunk)
        if runs:
            self._share_values(runs)
            key: Host = (batch.worker, batch.node, batch.pid)
            self._add_runs(runs, self._shared.setdefault(key, key))

    def _share_values(self, rows: list[TaskRow] | list[RunRow]) -> None:
        """Rows of one function repeat its name, job, parent, resources and (per worker) host:
        keep one copy of each (decoding makes a new object per row; shared, a retained task
        costs ~40% less). Neighbouring rows mostly repeat the previous row's values, so each
        is first compared with that (cheaper than hashing it again)."""
        shared = self._shared
        if len(shared) > 100_000:
            shared.clear()
        share = shared.setdefault
        name: Any = None
        job: Any = None
        if isinstance(rows[0], RunRow):
            for run in rows:
                run.name = name = name if run.name == name else share(run.name, run.name)
                run.job = job = job if run.job == job else share(run.job, run.job)
            return
        parent: Any = None
        worker: Any = None
        node: Any = None
        resources: Any = None
        for row in rows:  # one plain loop, no helper calls: this runs for every row decoded here
            row.name = name = name if row.name == name else share(row.name, row.name)
            row.job = job = job if row.job == job else share(row.job, row.job)
            value = row.parent
            if value is not None:
                row.parent = parent = parent if value == parent else share(value, value)
            value = row.worker
            if value is not None:
                row.worker = worker = worker if value == worker else share(value, value)
                value = row.node
                if value is not None:
                    row.node = node = node if value == node else share(value, value)
            needs = row.resources
            if needs:
                row.resources = resources = resources if needs == resources else share(tuple(needs.items()), needs)

    def _add_tasks(self, rows: list[TaskRow]) -> None:
        tasks = self.tasks
        incoming = {row.task_id: row for row in rows}
        for task_id in incoming.keys() & tasks.keys():  # rows that replace a task's earlier row
            old, row = tasks[task_id], incoming[task_id]
            if old.times and row.times and row.times[0] > old.times[0]:
                # The owner forgot its oldest steps (a long history): keep them from its earlier row.
                keep = bisect.bisect_left(old.times, row.times[0])
                row.states, row.times = old.states[:keep] + row.states, old.times[:keep] + row.times
        before = len(tasks)
        tasks.update(incoming)
        added = len(tasks) - before
        if not added:
            return
        jobs = {row.job for row in rows}
        kept = self._kept
        if len(jobs) == 1:
            (job,) = jobs
            kept[job] = kept.get(job, 0) + added
        else:  # rows of several jobs (a worker that ran tasks of several, rare): recount those jobs
            counts = dict.fromkeys(jobs, 0)
            for row in tasks.values():
                if row.job in counts:
                    counts[row.job] += 1
            for chunks in (self.ended.get(job, ()) for job in counts):
                for ended in chunks:
                    counts[ended.chunk.job] += ended.kept
            kept.update(counts)
        for job in jobs:
            self._enforce_limit(job)

    def _add_ended(self, chunk: EndedRows) -> None:
        """Rows of tasks that ended: kept as they came. Decoded rows of the same tasks (sent while
        they were live) are superseded: only then are the chunk's task ids read."""
        tasks, kept = self.tasks, self._kept
        if tasks:
            for task_id in ended_task_ids(chunk):
                row = tasks.pop(task_id, None)
                if row is not None:
                    kept[row.job] -= 1
        self._seq += 1
        job = chunk.job
        self.ended.setdefault(job, deque()).append(_Ended(self._seq, chunk))
        kept[job] = kept.get(job, 0) + chunk.count
        self._enforce_limit(job)

    def _add_runs(self, runs: list[RunRow], host: Host) -> None:
        stored = self.runs
        incoming = {run.task_id: (run, host) for run in runs}
        for task_id in incoming.keys() & stored.keys():
            if incoming[task_id][0].start < stored[task_id][0].start:
                incoming[task_id] = stored[task_id]  # an older execution (batches of two workers crossed)
        stored.update(incoming)
        # Executions whose owner row never comes (its owner died, or records nothing) are bounded too.
        if len(stored) > sum(self._kept.values()) + max(self.max_per_job, 1024):
            self._drop_orphan_runs()

    def _drop_orphan_runs(self) -> None:
        """Drop executions of tasks not kept (rare: reads every kept task's id)."""
        stored = self.runs
        kept_ids = self._ended_task_ids()
        kept_ids.update(self.tasks)
        excess = len(stored) - len(kept_ids) - self.max_per_job // 2
        for task_id in [t for t in stored if t not in kept_ids][:max(excess, 0)]:
            run = stored.pop(task_id)[0]
            self.dropped[run.job] = self.dropped.get(run.job, 0) + 1

    def _enforce_limit(self, job: bytes) -> None:
        """Keep at most ``max_per_job`` tasks of ``job``: the oldest ended ones go first, then the
        oldest live ones; each is counted as dropped."""
        excess = self._kept[job] - self.max_per_job
        if excess <= 0:
            return
        chunks = self.ended.get(job)
        gone = 0
        while chunks and gone < excess:
            oldest = chunks[0]
            take = min(oldest.kept, excess - gone)
            if self.runs:
                if oldest.ids is None:
                    oldest.ids = self._chunk_ids(oldest)
                self._forget_runs(oldest.ids[oldest.skip:oldest.skip + take])
            oldest.skip += take
            gone += take
            if not oldest.kept:
                chunks.popleft()
        if gone:
            self._kept[job] -= gone
            self.dropped[job] = self.dropped.get(job, 0) + gone
        if excess > gone:
            self._evict(job, excess - gone)

    @staticmethod
    def _chunk_ids(ended: _Ended) -> list[bytes]:
        """The task ids of all a chunk's rows, the dropped ones too (none if it is unreadable:
        a query drops it, and counts it)."""
        try:
            return ended_task_ids(ended.chunk)
        except ProtocolError as exc:
            logger.warning("task events of job %s are unreadable: %s", ended.chunk.job.hex(), exc)
            return []

    def _ended_task_ids(self) -> set[bytes]:
        """The ids of every kept ended task (reads every chunk's ids)."""
        ids: set[bytes] = set()
        for chunks in self.ended.values():
            for ended in chunks:
                ids.update(self._chunk_ids(ended)[ended.skip:])
        return ids

    def _forget_runs(self, task_ids: list[bytes]) -> None:
        runs = self.runs
        for task_id in task_ids:
            runs.pop(task_id, None)

    def _evict(self, job: bytes, count: int) -> None:
        """Drop ``count`` decoded tasks of ``job``: the oldest finished first, then the oldest live."""
        tasks = self.tasks
        victims: list[bytes] = []
        live: list[bytes] = []
        terminal = _TERMINAL_CODES
        for task_id, row in tasks.items():
            if row.job != job:
                continue
            states = row.states
            if states and states[-1] in terminal:
                victims.append(task_id)
                if len(victims) == count:
                    break
            elif len(live) < count:
                live.append(task_id)
        victims += live[:count - len(victims)]
        for task_id in victims:
            del tasks[task_id]
        self._forget_runs(victims)
        self._kept[job] -= len(victims)
        self.dropped[job] = self.dropped.get(job, 0) + len(victims)

    # ---------------------------------------------------------------- queries
    def _ended_rows(self, skip: Callable[[_Ended], bool] | None = None) -> Iterator[TaskRow]:
        """Every kept row of an ended task, newest first, but those of chunks ``skip`` says no row
        of could match. A chunk that cannot be decoded (a bug in the process that sent it) is
        dropped, logged and counted."""
        chunks = sorted((ended for chunks in self.ended.values() for ended in chunks),
                        key=lambda ended: ended.seq, reverse=True)
        for ended in chunks:
            if skip is not None and skip(ended):
                continue
            chunk = ended.chunk
            try:
                rows = ended_rows(chunk)
            except ProtocolError as exc:
                logger.warning("task events of job %s are unreadable, %d rows dropped: %s",
                               chunk.job.hex(), ended.kept, exc)
                self.ended[chunk.job].remove(ended)
                self._kept[chunk.job] -= ended.kept
                self.dropped[chunk.job] = self.dropped.get(chunk.job, 0) + ended.kept
                continue
            yield from reversed(rows[ended.skip:])

    def views(self, skip: Callable[[_Ended], bool] | None = None) -> Iterator[TaskView]:
        """Every kept task, newest first: tasks known only from an execution (their owner's row
        has not come, or never will), decoded rows (live tasks: newer than any ended row of
        theirs), then ended ones (but those of the chunks ``skip`` rules out)."""
        runs = self.runs
        for item in self._kept_tasks(skip):
            yield item if isinstance(item, TaskView) else TaskView(item.task_id, item, runs.get(item.task_id))

    def _kept_tasks(self, skip: Callable[[_Ended], bool] | None = None) -> Iterator[TaskView | TaskRow]:
        """``views``, but an ended task's row as it is when it alone says what is known of the task
        (no execution row kept for it): its state is its last, its host and times its own."""
        tasks, runs = self.tasks, self.runs
        orphans = [task_id for task_id in runs if task_id not in tasks]
        if orphans:
            ended = self._ended_task_ids()
            orphans = [task_id for task_id in orphans if task_id not in ended]
        for task_id in reversed(orphans):
            yield TaskView(task_id, None, runs[task_id])
        for task_id, row in reversed(tasks.items()):
            yield TaskView(task_id, row, runs.get(task_id))
        seen = set(tasks)
        terminal = _TERMINAL_CODES
        for row in self._ended_rows(skip):
            task_id = row.task_id
            if task_id in seen:  # an older row of a task run again (lineage reconstruction)
                continue
            seen.add(task_id)
            if task_id in runs or not row.states or row.states[-1] not in terminal:
                yield TaskView(task_id, row, runs.get(task_id))
            else:
                yield row

    def list(self, filters: list[tuple[str, str, str]], limit: int, detail: bool) -> TaskListing:
        """Newest first; filters apply before the limit; ``total`` counts every match."""
        fast = [(_FAST_KEYS[k], op, v) for k, op, v in filters if k in _FAST_KEYS]
        slow = [(k, op, v) for k, op, v in filters if k not in _FAST_KEYS]
        result: list[dict[str, Any]] = []
        total = stored = 0
        skip = _unmatched_chunks(filters)
        if skip is not None:
            stored = sum(ended.kept for chunks in self.ended.values() for ended in chunks if skip(ended))
        for view in self.views(skip):
            stored += 1
            if not all(matches(get(view), op, v) for get, op, v in fast):
                continue
            if slow:
                full = view.public(True)
                if not all(matches(full.get(k), op, v) for k, op, v in slow):
                    continue
            total += 1
            if len(result) < limit:
                result.append(view.public(detail))
        return {
            "result": result, "total": total, "num_after_truncation": len(result),
            "num_filtered": total, "dropped": sum(self.dropped.values()), "stored": stored,
        }

    def summary(self) -> TaskSummary:
        """Ray's ``TaskSummaries``: counts by function and state (exact over what is kept)."""
        summary: dict[str, TaskSummaryRow] = {}
        total = actor_tasks = 0
        for name, kind, state in self._facts():
            row = summary.get(name)
            if row is None:
                row = summary[name] = {"func_or_class_name": name, "type": kind, "state_counts": {}}
            counts = row["state_counts"]
            counts[state] = counts.get(state, 0) + 1
            total += 1
            if kind == _ACTOR_TASK:
                actor_tasks += 1
        return {"summary": summary, "total_tasks": total - actor_tasks, "total_actor_tasks": actor_tasks,
                "total_actor_scheduled": 0, "summary_by": "func_name", "dropped": sum(self.dropped.values())}

    def counts_by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _name, _kind, state in self._facts():
            out[state] = out.get(state, 0) + 1
        return out

    def _facts(self) -> Iterator[tuple[str, str, str]]:
        """Name, type and state of every kept task (read straight off an ended task's row when it
        alone is known: a ``TaskView`` would cost more than the rest of a summary)."""
        states, kinds = TASK_STATES, TASK_KINDS
        for item in self._kept_tasks():
            if isinstance(item, TaskView):
                yield item.name, item.type, item.state
            else:
                kind = kinds[item.kind]
                yield item.name, _ACTOR_TASK if kind == "NORMAL_TASK" and item.actor else kind, states[item.states[-1]]

    def executions(self, since: float = 0.0, job: bytes | None = None) -> builtins.list[TaskView]:  # `list`: the method above
        """Tasks that ran or run, still running or ended after ``since`` (seconds), of ``job`` if
        given (the timeline, and the web UI's task stream, which asks for the last minute often):
        chunks that came before ``since`` (less an allowance for clocks) are not read."""
        cutoff = since - CLOCK_SKEW_ALLOWANCE_S

        def skip(ended: _Ended) -> bool:
            return ended.received < cutoff or (job is not None and ended.chunk.job != job)

        return [view for view in self.views(skip) if view.start is not None
                and (view.end is None or view.end >= since) and (job is None or view.job_id == job)]
