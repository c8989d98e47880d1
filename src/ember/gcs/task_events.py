"""The task-event aggregator: what the state API says about tasks (``list_tasks``, summaries, timeline).

Processes send batches of events (``core/task_events.py``); one ``TaskRecord`` per task
merges what its owner saw (pending states, the result, the error) with what the worker
that ran it saw (``RUNNING``, worker, node, pid, execution times). The state is the
terminal one once the owner reported it, else the latest reported.

Retention is bounded per job (``task_events_max_tasks_per_job``): beyond it the oldest
*finished* task of that job is dropped first, a live one only when the job has no
finished task left. Every drop (here, or in a process whose buffer overflowed) is
counted per job and returned with every query, so truncation is never silent.
"""

from __future__ import annotations

import builtins
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ember._private.state_filters import matches
from ember.protocol.gcs import TaskListing, TaskSummary, TaskSummaryRow

TERMINAL = frozenset(("FINISHED", "FAILED"))
END = "END"


class TaskRecord:
    __slots__ = (
        "task_id", "job_id", "attempt", "name", "type", "parent", "actor", "node", "worker", "pid",
        "state", "events", "error_type", "error", "start", "end", "res", "terminal_seen", "last_ts",
    )

    def __init__(self, task_id: bytes, job_id: bytes) -> None:
        self.task_id = task_id
        self.job_id = job_id
        self.attempt = 0
        self.name = ""
        self.type = "NORMAL_TASK"
        self.parent: bytes | None = None
        self.actor: bytes | None = None
        self.node: bytes | None = None
        self.worker: bytes | None = None
        self.pid: int | None = None
        self.state = "PENDING_ARGS_AVAIL"
        #: [state, time_s, state, time_s, ...] in arrival order.
        self.events: list[Any] = []
        self.error_type: str | None = None
        self.error: str | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.res: dict[str, float] | None = None
        self.terminal_seen = False
        #: Time of the latest live state: owner and worker batches arrive in any order.
        self.last_ts = 0.0

    def public(self, detail: bool) -> dict[str, Any]:
        """Ray's ``TaskState`` fields (ids in hex, times in ms)."""
        out: dict[str, Any] = {
            "task_id": self.task_id.hex(),
            "attempt_number": self.attempt,
            "name": self.name,
            "state": self.state,
            "job_id": self.job_id.hex(),
            "actor_id": self.actor.hex() if self.actor else None,
            "type": self.type,
            "func_or_class_name": self.name,
            "parent_task_id": self.parent.hex() if self.parent else None,
            "node_id": self.node.hex() if self.node else None,
            "worker_id": self.worker.hex() if self.worker else None,
            "worker_pid": self.pid,
            "error_type": self.error_type,
        }
        if detail:
            events = self.events
            steps = [{"state": events[i], "created_ms": events[i + 1] * 1000.0} for i in range(0, len(events), 2)]
            out.update({
                "language": "PYTHON",
                "required_resources": dict(self.res or {}),
                "runtime_env_info": None,
                "placement_group_id": None,
                "events": steps,
                "profiling_data": None,
                "creation_time_ms": steps[0]["created_ms"] if steps else None,
                "start_time_ms": self.start * 1000.0 if self.start is not None else None,
                "end_time_ms": self.end * 1000.0 if self.end is not None else None,
                "task_log_info": None,
                "error_message": self.error,
                "is_debugger_paused": None,
                "call_site": None,
                "label_selector": None,
            })
        return out


#: Filter keys answered from the record without building its public form.
_FAST_KEYS: dict[str, Callable[[TaskRecord], Any]] = {
    "task_id": lambda r: r.task_id.hex(),
    "state": lambda r: r.state,
    "name": lambda r: r.name,
    "func_or_class_name": lambda r: r.name,
    "job_id": lambda r: r.job_id.hex(),
    "type": lambda r: r.type,
    "node_id": lambda r: r.node.hex() if r.node else None,
    "worker_id": lambda r: r.worker.hex() if r.worker else None,
    "actor_id": lambda r: r.actor.hex() if r.actor else None,
    "worker_pid": lambda r: r.pid,
    "error_type": lambda r: r.error_type,
    "attempt_number": lambda r: r.attempt,
    "parent_task_id": lambda r: r.parent.hex() if r.parent else None,
}

#: Every filterable key (Ray's ``TaskState`` fields).
TASK_FIELDS = frozenset(TaskRecord(b"", b"").public(detail=True))


class TaskEventStore:
    def __init__(self, max_tasks_per_job: int) -> None:
        self.max_per_job = max_tasks_per_job
        self.records: dict[bytes, TaskRecord] = {}
        #: Per job: every task id (oldest first) and its finished ones (oldest first).
        self._by_job: dict[bytes, OrderedDict[bytes, None]] = {}
        self._finished: dict[bytes, OrderedDict[bytes, None]] = {}
        self.dropped: dict[bytes, int] = {}
        self._resources: dict[tuple[Any, ...], dict[str, float]] = {}
        #: One copy of each node, worker and job id (every record of a worker shares it).
        self._ids: dict[bytes, bytes] = {}

    def _intern(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            return value
        if len(self._ids) > 1_000_000:
            self._ids.clear()
        return self._ids.setdefault(value, value)

    # ---------------------------------------------------------------- intake
    def add_batch(self, batch: dict[str, Any]) -> None:
        self.add_events(batch.get("events") or (), int(batch.get("dropped") or 0), batch.get("job") or b"")

    def add_events(self, events: Iterable[Sequence[Any]], dropped: int, job: bytes) -> None:
        """One reporter's batch: ``[task_id, attempt, state, ts, info]`` events, and how many it dropped."""
        if dropped:
            self.dropped[job] = self.dropped.get(job, 0) + dropped
        for task_id, attempt, state, ts, info in events:
            self._add(task_id, attempt, state, ts, info, job)

    def _add(self, task_id: bytes, attempt: int, state: str, ts: float, info: dict[str, Any] | None,
             batch_job: bytes) -> None:
        rec = self.records.get(task_id)
        if rec is None:
            job = self._intern((info or {}).get("job") or batch_job)
            rec = self.records[task_id] = TaskRecord(task_id, job)
            self._by_job.setdefault(job, OrderedDict())[task_id] = None
            self._evict(job)
            if task_id not in self.records:
                return
        if info:
            self._describe(rec, info)
        if state == END:
            rec.end = ts
            return
        if attempt > rec.attempt:
            rec.attempt = attempt
        rec.events += (state, ts)
        if state == "RUNNING":
            rec.start, rec.end = ts, None
        if state in TERMINAL:
            if not rec.terminal_seen:
                rec.terminal_seen = True
                self._finished.setdefault(rec.job_id, OrderedDict())[task_id] = None
            rec.state = state
            if rec.end is None and rec.start is not None:
                rec.end = ts  # the worker's own end time, when it comes, is more exact
            if state == "FINISHED":
                rec.error_type = rec.error = None
        elif not rec.terminal_seen and ts >= rec.last_ts:
            rec.state, rec.last_ts = state, ts

    def _describe(self, rec: TaskRecord, info: dict[str, Any]) -> None:
        if "name" in info and not rec.name:
            rec.name = sys.intern(str(info["name"]))
        if "type" in info:
            rec.type = info["type"]
        if info.get("parent"):
            rec.parent = info["parent"]
        if info.get("actor"):
            rec.actor = info["actor"]
            if rec.type == "NORMAL_TASK":
                rec.type = "ACTOR_TASK"
        if "worker" in info:
            rec.worker, rec.node, rec.pid = self._intern(info["worker"]), self._intern(info.get("node")), info.get("pid")
        if "error_type" in info:
            rec.error_type, rec.error = info["error_type"], info.get("error")
        if info.get("res"):
            key = tuple(sorted(info["res"].items()))
            rec.res = self._resources.setdefault(key, dict(key))

    def _evict(self, job: bytes) -> None:
        ids = self._by_job[job]
        while len(ids) > self.max_per_job:
            finished = self._finished.get(job)
            victim = finished.popitem(last=False)[0] if finished else next(iter(ids))
            del ids[victim]
            self.records.pop(victim, None)
            self.dropped[job] = self.dropped.get(job, 0) + 1

    # ---------------------------------------------------------------- queries
    def list(self, filters: list[tuple[str, str, str]], limit: int, detail: bool) -> TaskListing:
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

    def summary(self) -> TaskSummary:
        """Ray's ``TaskSummaries``: counts by function and state (exact over what is kept)."""
        summary: dict[str, TaskSummaryRow] = {}
        total = actor_tasks = 0
        for rec in self.records.values():
            row = summary.get(rec.name)
            if row is None:
                row = summary[rec.name] = {"func_or_class_name": rec.name, "type": rec.type, "state_counts": {}}
            counts = row["state_counts"]
            counts[rec.state] = counts.get(rec.state, 0) + 1
            total += 1
            if rec.type == "ACTOR_TASK":
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
        return [r for r in self.records.values() if r.start is not None]
