"""``ember job submit|status|logs|stop|list|delete``: the job API from the shell (Ray's ``ray job``).

``submit`` without ``--no-wait`` follows the job's output and exits with its outcome:
0 when it SUCCEEDED, 1 when it FAILED or was STOPPED.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from ember.cli import main

_address_option = click.option(
    "--address", default=None,
    help="The head's HTTP address (default: EMBER_ADDRESS/RAY_ADDRESS if http(s), else http://127.0.0.1:8265).")
_headers_option = click.option("--headers", default=None, help='Extra HTTP headers as JSON, e.g. \'{"Authorization": "Bearer ..."}\'.')


def _json_option(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"{name} is not valid JSON: {exc}") from exc


def _read_env_file(path: str) -> Any:
    """A runtime_env file: YAML when PyYAML is installed (JSON is YAML too), else JSON."""
    with open(path) as f:
        text = f.read()
    try:
        import yaml
    except ImportError:
        return _json_option(text, "--runtime-env")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"--runtime-env {path} is not valid YAML: {exc}") from exc


def _client(address: str | None, headers: str | None) -> Any:
    from ember.exceptions import JobSubmissionError
    from ember.job_submission import JobSubmissionClient

    parsed = _json_option(headers, "--headers")
    if parsed is not None and not isinstance(parsed, dict):
        raise click.BadParameter("--headers must be a JSON object")
    try:
        return JobSubmissionClient(address, headers=parsed)
    except (JobSubmissionError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an SDK call; its errors become a one-line message and exit status 1."""
    from ember.exceptions import JobSubmissionError

    try:
        return fn(*args, **kwargs)
    except (JobSubmissionError, ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from exc


def _follow(client: Any, job_id: str) -> None:
    """Print the job's output until it ends."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            click.echo(chunk, nl=False)

    try:
        import aiohttp  # noqa: F401
    except ImportError:  # no WebSocket client: poll the logs instead
        printed = 0
        while True:
            status = _call(client.get_job_status, job_id)
            logs = _call(client.get_job_logs, job_id)
            click.echo(logs[printed:], nl=False)
            printed = len(logs)
            if status.is_terminal():
                return
            time.sleep(1.0)
    _call(asyncio.run, tail())


def _wait_for_end(client: Any, job_id: str, timeout_s: float = 30.0) -> Any:
    """The job's status once final (the log stream ends a moment before the record says so)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = _call(client.get_job_status, job_id)
        if status.is_terminal() or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


@main.group()
def job() -> None:
    """Submit, follow and manage jobs on a cluster (Ray's `ray job`)."""


@job.command(context_settings={"ignore_unknown_options": True})
@_address_option
@click.option("--submission-id", "--job-id", "submission_id", default=None, help="The job's id (default: a new one).")
@click.option("--runtime-env", "runtime_env_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A file holding the job's runtime_env (YAML, or JSON).")
@click.option("--runtime-env-json", default=None, help="The job's runtime_env as JSON.")
@click.option("--working-dir", default=None, help="A local folder: the job's working directory (runtime_env working_dir).")
@click.option("--metadata-json", default=None, help="Metadata for the job as a JSON object of strings.")
@click.option("--entrypoint-num-cpus", type=float, default=None, help="CPUs to reserve for the entrypoint.")
@click.option("--entrypoint-num-gpus", type=float, default=None, help="GPUs to reserve for the entrypoint.")
@click.option("--entrypoint-memory", type=int, default=None, help="Memory (bytes) to reserve for the entrypoint.")
@click.option("--entrypoint-resources", default=None, help="Custom resources for the entrypoint as JSON.")
@click.option("--no-wait", is_flag=True, help="Return once the job is submitted instead of following it.")
@_headers_option
@click.argument("entrypoint", nargs=-1, required=True, type=click.UNPROCESSED)
def submit(address: str | None, submission_id: str | None, runtime_env_file: str | None,
           runtime_env_json: str | None, working_dir: str | None,
           metadata_json: str | None, entrypoint_num_cpus: float | None, entrypoint_num_gpus: float | None,
           entrypoint_memory: int | None, entrypoint_resources: str | None, no_wait: bool, headers: str | None,
           entrypoint: tuple[str, ...]) -> None:
    """Submit ENTRYPOINT (after `--`) as a job; follow it unless --no-wait."""
    import shlex

    from ember.jobs.common import JobStatus

    if runtime_env_file and runtime_env_json:
        raise click.UsageError("Give --runtime-env or --runtime-env-json, not both.")
    runtime_env = (_read_env_file(runtime_env_file) if runtime_env_file
                   else _json_option(runtime_env_json, "--runtime-env-json")) or {}
    if not isinstance(runtime_env, dict):
        raise click.BadParameter("the runtime_env must be a mapping (a JSON object)")
    if working_dir is not None:
        runtime_env["working_dir"] = working_dir
    client = _client(address, headers)
    command = entrypoint[0] if len(entrypoint) == 1 else shlex.join(entrypoint)
    job_id = _call(
        client.submit_job, entrypoint=command, submission_id=submission_id, runtime_env=runtime_env or None,
        metadata=_json_option(metadata_json, "--metadata-json"), entrypoint_num_cpus=entrypoint_num_cpus,
        entrypoint_num_gpus=entrypoint_num_gpus, entrypoint_memory=entrypoint_memory,
        entrypoint_resources=_json_option(entrypoint_resources, "--entrypoint-resources"),
    )
    click.echo(f"Job '{job_id}' submitted successfully.", err=True)
    if no_wait:
        click.echo(f"  Status:  ember job status {job_id}\n  Logs:    ember job logs --follow {job_id}\n"
                   f"  Stop:    ember job stop {job_id}", err=True)
        return
    try:
        _follow(client, job_id)
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; the job goes on. Stop it with: ember job stop {job_id}", err=True)
        raise SystemExit(130) from None
    status = _wait_for_end(client, job_id)
    info = _call(client.get_job_info, job_id)
    if status is JobStatus.SUCCEEDED:
        click.echo(f"Job '{job_id}' succeeded.", err=True)
        return
    first_line = (info.message or "").splitlines()[0] if info.message else ""
    click.echo(f"Job '{job_id}' {status.value}: {first_line}", err=True)
    raise SystemExit(1)


@job.command()
@_address_option
@_headers_option
@click.argument("job_id")
def status(address: str | None, headers: str | None, job_id: str) -> None:
    """Print a job's status and message."""
    info = _call(_client(address, headers).get_job_info, job_id)
    click.echo(f"Status for job '{job_id}': {info.status.value}")
    if info.message:
        click.echo(f"Status message: {info.message}")


@job.command()
@_address_option
@_headers_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the job ends.")
@click.argument("job_id")
def logs(address: str | None, headers: str | None, follow: bool, job_id: str) -> None:
    """Print a job's output."""
    client = _client(address, headers)
    if follow:
        _follow(client, job_id)
    else:
        click.echo(_call(client.get_job_logs, job_id), nl=False)


@job.command()
@_address_option
@_headers_option
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting until the job has stopped.")
@click.argument("job_id")
def stop(address: str | None, headers: str | None, no_wait: bool, job_id: str) -> None:
    """Stop a job (in any state)."""
    client = _client(address, headers)
    if not _call(client.stop_job, job_id):
        click.echo(f"Job '{job_id}' had already ended: {_call(client.get_job_status, job_id).value}.")
        return
    click.echo(f"Stopping job '{job_id}'.")
    if not no_wait:
        click.echo(f"Job '{job_id}' is {_wait_for_end(client, job_id).value}.")


@job.command(name="list")
@_address_option
@_headers_option
def list_(address: str | None, headers: str | None) -> None:
    """List the cluster's jobs (submitted jobs and drivers)."""
    jobs = _call(_client(address, headers).list_jobs)
    if not jobs:
        click.echo("No jobs.")
        return
    click.echo(f"{'SUBMISSION ID':32} {'JOB ID':10} {'TYPE':10} {'STATUS':10} ENTRYPOINT")
    for info in jobs:
        click.echo(f"{info.submission_id or '-':32} {info.job_id or '-':10} {info.type.value:10} "
                   f"{info.status.value:10} {info.entrypoint[:60]}")


@job.command()
@_address_option
@_headers_option
@click.argument("job_id")
def delete(address: str | None, headers: str | None, job_id: str) -> None:
    """Delete a finished job's record and logs."""
    _call(_client(address, headers).delete_job, job_id)
    click.echo(f"Job '{job_id}' deleted.")
