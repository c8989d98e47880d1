"""``ember list|get|summary|logs|timeline``: the state API from the terminal (Ray's commands).

Tables fit an 80-column terminal (ids shortened; ``--format json|yaml`` gives every
field in full and is meant for programs).
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import click

from ember.cli import main

LIST_RESOURCES = ("tasks", "actors", "objects", "nodes", "jobs", "placement-groups", "workers")

#: Columns of each resource's table: (field, header, width; 0 = the rest of the line).
COLUMNS: dict[str, list[tuple[str, str, int]]] = {
    "tasks": [("task_id", "TASK_ID", 14), ("name", "NAME", 20), ("state", "STATE", 23), ("worker_pid", "PID", 7),
              ("error_type", "ERROR", 0)],
    "actors": [("actor_id", "ACTOR_ID", 14), ("class_name", "CLASS", 18), ("state", "STATE", 17), ("pid", "PID", 7),
               ("name", "NAME", 0)],
    "objects": [("object_id", "OBJECT_ID", 18), ("object_size", "SIZE", 10), ("reference_type", "REFERENCE", 22),
                ("type", "TYPE", 7), ("pid", "PID", 0)],
    "nodes": [("node_id", "NODE_ID", 14), ("node_ip", "IP", 16), ("is_head_node", "HEAD", 6), ("state", "STATE", 7),
              ("state_message", "MESSAGE", 0)],
    "jobs": [("job_id", "JOB_ID", 10), ("submission_id", "SUBMISSION_ID", 18), ("status", "STATUS", 10),
             ("entrypoint", "ENTRYPOINT", 0)],
    "placement_groups": [("placement_group_id", "PLACEMENT_GROUP_ID", 20), ("name", "NAME", 16),
                         ("creator_job_id", "JOB", 10), ("state", "STATE", 0)],
    "workers": [("worker_id", "WORKER_ID", 14), ("node_id", "NODE_ID", 14), ("ip", "IP", 16), ("pid", "PID", 8),
                ("is_alive", "ALIVE", 0)],
}
WIDTH = 80


def _resource(name: str) -> str:
    return name.replace("-", "_")


def parse_filter(text: str) -> tuple[str, str, str]:
    """``key=value`` or ``key!=value``."""
    if "!=" in text:
        key, value = text.split("!=", 1)
        op = "!="
    elif "=" in text:
        key, value = text.split("=", 1)
        op = "="
    else:
        raise click.BadParameter(f"{text!r} is not key=value or key!=value", param_hint="--filter")
    if not key.strip():
        raise click.BadParameter(f"{text!r} has no key", param_hint="--filter")
    return key.strip(), op, value.strip()


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    if width and len(text) > width - 1:
        text = text[: max(width - 2, 1)] + "…"
    return text.ljust(width) if width else text


def format_table(resource: str, rows: list[dict[str, Any]]) -> str:
    columns = COLUMNS[resource]
    used = sum(w for _, _, w in columns)
    lines = ["".join(_cell(h, w) for _, h, w in columns).rstrip()]
    for row in rows:
        cells = [_cell(row.get(f), w) for f, _, w in columns[:-1]]
        last_field, _, _ = columns[-1]
        cells.append(_cell(row.get(last_field), max(WIDTH - used, 8)))
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, default=str)
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).rstrip()


def _run(fn: Any) -> Any:
    """Call the state API; its errors become one clear line, its warnings go to stderr."""
    from ember.exceptions import RayStateApiException

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except (ValueError, ConnectionError, RayStateApiException) as exc:
            raise click.ClickException(str(exc)) from exc
    for w in caught:
        click.echo(f"Warning: {w.message}", err=True)
    return result


_address = click.option("--address", default=None, help="HOST:PORT of the control service (default: this machine's cluster).")
_timeout = click.option("--timeout", default=30, show_default=True, type=int, help="Seconds to wait for the cluster.")
_format = click.option("--format", "fmt", type=click.Choice(["default", "table", "json", "yaml"]), default="default",
                       help="Output format (default: a table, or yaml with --detail).")


@main.command(name="list")
@click.argument("resource", type=click.Choice(LIST_RESOURCES))
@click.option("--filter", "filters", multiple=True, help='A "key=value" or "key!=value" filter (repeatable).')
@click.option("--limit", default=100, show_default=True, type=click.IntRange(0), help="Most rows to show.")
@click.option("--detail", is_flag=True, help="Every field of each row.")
@_format
@_address
@_timeout
def list_command(resource: str, filters: tuple[str, ...], limit: int, detail: bool, fmt: str,
                 address: str | None, timeout: int) -> None:
    """List tasks, actors, objects, nodes, jobs, placement groups or workers (filters apply before the limit)."""
    from ember.util.state import api

    name = _resource(resource)
    parsed = [parse_filter(f) for f in filters]
    fn = getattr(api, f"list_{name}")
    rows = _run(lambda: fn(address=address, filters=parsed, limit=limit, timeout=timeout, detail=detail,
                           raise_on_missing_output=False))
    dicts = [r.asdict() for r in rows]
    if fmt == "default":
        fmt = "yaml" if detail else "table"
    click.echo(format_table(name, dicts) if fmt == "table" else _dump(dicts, fmt))


@main.command(name="get")
@click.argument("resource", type=click.Choice(LIST_RESOURCES))
@click.argument("id")
@_address
@_timeout
def get_command(resource: str, id: str, address: str | None, timeout: int) -> None:
    """Show one task, actor, node, job, placement group, worker or object by id (every field, yaml)."""
    from ember.util.state import api

    name = _resource(resource)
    getter = getattr(api, "get_objects" if name == "objects" else f"get_{name[:-1]}")
    found = _run(lambda: getter(id, address=address, timeout=timeout))
    if not found:
        raise click.ClickException(f"no {name[:-1].replace('_', ' ')} with id {id}")
    items = found if isinstance(found, list) else [found]
    click.echo(_dump([r.asdict() for r in items] if len(items) > 1 else items[0].asdict(), "yaml"))


@main.command(name="summary")
@click.argument("resource", type=click.Choice(["tasks", "actors", "objects"]))
@_format
@_address
@_timeout
def summary_command(resource: str, fmt: str, address: str | None, timeout: int) -> None:
    """Counts by function (tasks), class (actors) or call site (objects), by state."""
    from ember.util.state import api

    fn = getattr(api, f"summarize_{resource}")
    result = _run(lambda: fn(address=address, timeout=timeout, raise_on_missing_output=False))["cluster"]
    if fmt in ("json", "yaml"):
        click.echo(_dump(result, fmt))
        return
    click.echo(format_summary(resource, result))


def format_summary(resource: str, result: dict[str, Any]) -> str:
    if resource == "objects":
        lines = [f"Objects: {result['total_objects']}, {result['total_size_mb']:.2f} MiB",
                 f"{'CALL SITE':<40}{'OBJECTS':>9}{'MiB':>10}  REFERENCES"]
        for site, row in sorted(result["summary"].items()):
            refs = ", ".join(f"{k}: {v}" for k, v in sorted(row["ref_type_counts"].items()))
            lines.append(f"{_cell(site, 40)}{row['total_objects']:>9}{row['total_size_mb']:>10.2f}  {refs}")
        return "\n".join(lines)
    key = "func_or_class_name" if resource == "tasks" else "class_name"
    total = (f"Tasks: {result['total_tasks']}, actor tasks: {result['total_actor_tasks']}" if resource == "tasks"
             else f"Actors: {result['total_actors']}")
    lines = [total, f"{'NAME':<32}{'TYPE':<22}STATE COUNTS"]
    for _name, row in sorted(result["summary"].items()):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(row["state_counts"].items()))
        lines.append(f"{_cell(row[key], 32)}{_cell(row.get('type', 'ACTOR'), 22)}{counts}")
    return "\n".join(lines)


@main.command(name="logs")
@click.argument("filename", required=False)
@click.option("--node-id", default=None, help="The node whose files to read (default: the head).")
@click.option("--actor-id", default=None, help="The stdout of this actor's worker.")
@click.option("--task-id", default=None, help="The stdout of the worker that ran this task.")
@click.option("--pid", type=int, default=None, help="The stdout of the worker with this pid.")
@click.option("--err", is_flag=True, help="Standard error instead of standard output (with --actor-id/--task-id/--pid).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what is appended.")
@click.option("--tail", type=int, default=-1, help="Only the last N lines (-1: all).")
@_address
@_timeout
def logs_command(filename: str | None, node_id: str | None, actor_id: str | None, task_id: str | None,
                 pid: int | None, err: bool, follow: bool, tail: int, address: str | None, timeout: int) -> None:
    """Print a log file; without a file or id, list the node's log files (FILENAME may be a glob)."""
    from ember.util.state.logs import get_log, list_logs

    by_id = sum(x is not None for x in (actor_id, task_id, pid))
    if by_id > 1 or (by_id and filename):
        raise click.UsageError("give one of FILENAME, --actor-id, --task-id or --pid")
    if not by_id and (filename is None or any(c in filename for c in "*?[")):
        listing = _run(lambda: list_logs(address=address, node_id=node_id, glob_filter=filename, timeout=timeout))
        for category, names in sorted(listing.items()):
            click.echo(f"{category}:")
            for name in names:
                click.echo(f"  {name}")
        return
    chunks = get_log(address=address, node_id=node_id, filename=filename, actor_id=actor_id, task_id=task_id,
                     pid=pid, follow=follow, tail=tail, timeout=timeout, suffix="err" if err else "out",
                     errors="replace")
    try:
        _run(lambda: [sys.stdout.write(c) or sys.stdout.flush() for c in chunks])
    except KeyboardInterrupt:
        pass


@main.command(name="timeline")
@click.option("--output", "-o", default=None, help="File to write (default: timeline-<time>.json here).")
@_address
def timeline_command(output: str | None, address: str | None) -> None:
    """Write the cluster's task executions as a Chrome trace (open it in chrome://tracing or Perfetto)."""
    import time

    from ember.util.state.timeline import timeline

    path = output or time.strftime("timeline-%Y-%m-%d_%H-%M-%S.json")
    _run(lambda: timeline(path, address=address))
    click.echo(f"Wrote {path}; open it in chrome://tracing or https://ui.perfetto.dev")
