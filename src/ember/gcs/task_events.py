"""The task-event aggregator: what the state API says about tasks (``list_tasks``, summaries, timeline).

Processes send batches of rows (``core/task_events.py``, ``protocol/gcs.py``): a task's
owner sends one ``TaskRow`` (its states with their times, the result's error), the
worker that ran it one ``RunRow`` per execution (start, end; the batch says which
worker, node and pid). A ``TaskRecord`` keeps the latest of each, as received, and
its state; everything else the state API shows (``TaskRecord.public``) is derived
from them when asked. The state is the owner's once terminal; else ``RUNNING`` if the
latest execution started after the owner's latest state, else the owner's.

Intake is the hot part (every task of the cluster passes through it): per row, a
dict lookup, a few assignments, and the state. Rows are ``gc=False`` structs, so the
many records kept cost the garbage collector nothing.

Retention is bounded per job (``task_events_max_tasks_per_job``): beyond it the oldest
*finished* task of that job is dropped first, a live one only when the job has no
finished task left. Every drop (here, or in a process whose buffer overflowed) is
counted per job and returned with every query, so truncation is never silent.
"""

from __future__ import annotations

import bisect
import builtins
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from ember._private.state_filters import matches
from ember.protocol.gcs import (
    TASK_KINDS,
    TASK_STATES,
    RunRow,
    TaskEventBatch,
    TaskRow,
    run_rows,
    task_rows,
)

TERMINAL = frozenset(("FINISHED", "FAILED"))
RUNNING = "RUNNING"
_TERMINAL_CODES = frozenset(TASK_STATES.index(s) for s in TERMINAL)
_ACTOR_TASK = "ACTOR_TASK"

#: (worker id, node id, pid) of the process that ran an execution.
Host = tuple[bytes | None, bytes | None, int | None]


class TaskRecord(msgspec.Struct, gc=False):
    """One task: the latest row of its owner and of its latest execution, and its state.

    ``gc=False``: nothing here can be part of a cycle, and a store of many records
    then costs the garbage collector nothing."""

    task_id: bytes
    job_id: bytes
    owner: TaskRow | None = None
    run: RunRow | None = None
    host: Host | None = None
    state: str = "PENDING_ARGS_AVAIL"

    # ------------------------------------------------------------ derived fields
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
        owner = self.owner
        kind = TASK_KINDS[owner.kind] if owner is not None else "NORMAL_TASK"
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
    def start(self) -> float | None:
        return self.run.start if self.run is not None else None

    @property
    def end(self) -> float | None:
        """When the latest execution ended; for a task whose worker never said (it died), when it ended."""
        run = self.run
        if run is None:
            return None
        if run.end is None and self.state in TERMINAL and self.owner is not None:
            return self.owner.times[-1]
        return run.end

    def steps(self) -> list[tuple[str, float]]:
        """Every state with its start time, oldest first (the owner's and the latest execution's)."""
        owner, run = self.owner, self.run
        steps = [(TASK_STATES[c], t) for c, t in zip(owner.states, owner.times)] if owner is not None else []
        if run is not None:
            at = bisect.bisect_right([t for _, t in steps], run.start)
            steps.insert(at, (RUNNING, run.start))
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


#: Filter keys answered from the record without building its public form.
_FAST_KEYS: dict[str, Callable[[TaskRecord], Any]] = {
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

#: Every filterable key (Ray's ``TaskState`` fields).
TASK_FIELDS = frozenset(TaskRecord(b"", b"").public(detail=True))


def _state_of(owner: TaskRow | None, run: RunRow | None) -> str:
    if owner is not None and owner.states:
        last = owner.states[-1]
        if last in _TERMINAL_CODES or run is None or run.start < owner.times[-1]:
            return TASK_STATES[last]
        return RUNNING
    return RUNNING if run is not None else "PENDING_ARGS_AVAIL"


class TaskEventStore:
    def __init__(self, max_tasks_per_job: int) -> None:
        self.max_per_job = max_tasks_per_job
        self.records: dict[bytes, TaskRecord] = {}
        #: Per job: how many tasks are kept, their ids (oldest first) and the ids of finished
        #: ones (in the order they finished). Both queues may hold ids already dropped (skipped
        #: when met; the first is compacted when it holds twice what is kept).
        self._kept: dict[bytes, int] = {}
        self._by_job: dict[bytes, deque[bytes]] = {}
        self._finished: dict[bytes, deque[bytes]] = {}
        self.dropped: dict[bytes, int] = {}
        self._resources: dict[tuple[Any, ...], dict[str, float]] = {}
        #: One copy of each job, parent and actor id, task name and host (shared by every record).
        self._shared: dict[Any, Any] = {}

    # ---------------------------------------------------------------- intake
    def add_batch(self, batch: TaskEventBatch) -> None:
        """One process's rows, and how many it dropped (``ProtocolError``: its rows are malformed)."""
        job = batch.job or b""
        if batch.dropped:
            self.dropped[job] = self.dropped.get(job, 0) + batch.dropped
        shared = self._shared
        if len(shared) > 1_000_000:
            shared.clear()
        share = shared.setdefault
        for row in task_rows(batch):
            self._add_task(row, job, share)
        runs = run_rows(batch)
        if runs:
            host = share((batch.worker, batch.node, batch.pid), (batch.worker, batch.node, batch.pid))
            for run in runs:
                self._add_run(run, host, job, share)

    def _record(self, task_id: bytes, job: bytes) -> TaskRecord | None:
        """The task's record, made (and the job's oldest dropped beyond its bound) if new."""
        rec = self.records.get(task_id)
        if rec is not None:
            return rec
        job = self._shared.setdefault(job, job)
        rec = self.records[task_id] = TaskRecord(task_id, job)
        ids = self._by_job.get(job)
        if ids is None:
            ids = self._by_job[job] = deque()
        ids.append(task_id)
        kept = self._kept[job] = self._kept.get(job, 0) + 1
        if kept > self.max_per_job:
            self._evict(job)
            return self.records.get(task_id)
        return rec

    def _add_task(self, row: TaskRow, batch_job: bytes, share: Callable[[Any, Any], Any]) -> None:
        if len(row.states) != len(row.times):
            raise ValueError(f"a task row of {len(row.states)} states and {len(row.times)} times")
        rec = self.records.get(row.task_id) or self._record(row.task_id, row.job or batch_job)
        if rec is None:
            return
        row.task_id, row.job, row.name = rec.task_id, rec.job_id, share(row.name, row.name)
        if row.parent is not None:
            row.parent = share(row.parent, row.parent)
        if row.actor is not None:
            row.actor = share(row.actor, row.actor)
        if row.resources:
            key = tuple(row.resources.items())
            row.resources = self._resources.setdefault(key, row.resources)
        old = rec.owner
        if old is not None and old.times and row.times and row.times[0] > old.times[0]:
            # The owner forgot its oldest steps (a long history): keep them from its earlier row.
            keep = bisect.bisect_left(old.times, row.times[0])
            row.states, row.times = old.states[:keep] + row.states, old.times[:keep] + row.times
        rec.owner = row
        self._set_state(rec, _state_of(row, rec.run))

    def _add_run(self, run: RunRow, host: Host, batch_job: bytes, share: Callable[[Any, Any], Any]) -> None:
        rec = self.records.get(run.task_id) or self._record(run.task_id, run.job or batch_job)
        if rec is None:
            return
        old = rec.run
        if old is not None and (run.attempt < old.attempt or (
                run.attempt == old.attempt and run.end is None and old.end is not None and run.start == old.start)):
            return  # an older execution, or the "still running" row of one that ended
        run.task_id, run.job, run.name = rec.task_id, rec.job_id, share(run.name, run.name)
        if run.actor is not None:
            run.actor = share(run.actor, run.actor)
        rec.run, rec.host = run, host
        if rec.state not in TERMINAL:
            self._set_state(rec, _state_of(rec.owner, run))

    def _set_state(self, rec: TaskRecord, state: str) -> None:
        was_terminal = rec.state in TERMINAL
        rec.state = state
        if state in TERMINAL:
            if not was_terminal:
                finished = self._finished.get(rec.job_id)
                if finished is None:
                    finished = self._finished[rec.job_id] = deque()
                finished.append(rec.task_id)
        # A finished task run again (its result was lost) stays queued as finished: when its
        # turn comes it is skipped while live (``_evict``).

    def _evict(self, job: bytes) -> None:
        records = self.records
        finished = self._finished.get(job)
        victim = None
        while finished:
            task_id = finished.popleft()
            rec = records.get(task_id)
            if rec is not None and rec.state in TERMINAL and rec.job_id == job:
                victim = task_id
                break
        ids = self._by_job[job]
        if victim is None:  # no finished task left: the oldest live one goes
            while victim is None:
                task_id = ids.popleft()
                if task_id in records:
                    victim = task_id
        del records[victim]
        self._kept[job] -= 1
        self.dropped[job] = self.dropped.get(job, 0) + 1
        if len(ids) > 2 * self._kept[job] + 1024:
            self._by_job[job] = deque(task_id for task_id in ids if task_id in records)

    # ---------------------------------------------------------------- queries
    def list(self, filters: list[tuple[str, str, str]], limit: int, detail: bool) -> dict[str, Any]:
        """Newest first; filters apply before the limit; ``total`` counts every match."""
        fast = [(_FAST_KEYS[k], op, v) for k, op, v in filters if k in _FAST_KEYS]
        slow = [(k, op, v) for k, op, v in filters if k not in _FAST_KEYS]
        result: list[dict[str, Any]] = []
        total = 0
        for rec in reversed(self.records.values()):
            if not all(matches(get(rec), op, v) for get, op, v in fast):
                continue
            if slow:
                full = rec.public(True)
                if not all(matches(full.get(k), op, v) for k, op, v in slow):
                    continue
            total += 1
            if len(result) < limit:
                result.append(rec.public(detail))
        return {
            "result": result, "total": total, "num_after_truncation": len(result),
            "num_filtered": total, "dropped": sum(self.dropped.values()),
            "stored": len(self.records),
        }

    def summary(self) -> dict[str, Any]:
        """Ray's ``TaskSummaries``: counts by function and state (exact over what is kept)."""
        summary: dict[str, dict[str, Any]] = {}
        total = actor_tasks = 0
        for rec in self.records.values():
            name = rec.name
            row = summary.get(name)
            kind = rec.type
            if row is None:
                row = summary[name] = {"func_or_class_name": name, "type": kind, "state_counts": {}}
            counts = row["state_counts"]
            counts[rec.state] = counts.get(rec.state, 0) + 1
            total += 1
            if kind == _ACTOR_TASK:
                actor_tasks += 1
        return {"summary": summary, "total_tasks": total - actor_tasks, "total_actor_tasks": actor_tasks,
                "total_actor_scheduled": 0, "summary_by": "func_name", "dropped": sum(self.dropped.values())}

    def counts_by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.records.values():
            out[rec.state] = out.get(rec.state, 0) + 1
        return out

    def executions(self) -> builtins.list[TaskRecord]:  # `list` here is the method above
        """Records with a start time (for the timeline)."""
        return [r for r in self.records.values() if r.run is not None]
