"""Job supervision, below the HTTP layer: the ``JobManager`` of the head's job API runs in
the test process against an ``ember start --head`` cluster, as the HTTP server runs it.

Each test starts its own cluster (free port, own EMBER_TMPDIR) and ends it by pid.
Entrypoints report pids and wait for files the test creates; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from cli_cluster import cli_env, ember_cli, end_everything, kill_gcs, restart_gcs, session_dirs

from ember._private import session
from ember._private.processes import pid_alive
from ember._private.test_utils import free_port, wait_for_condition, wait_for_file
from ember.jobs.common import JobStatus, JobSubmitRequest, JobType
from ember.jobs.manager import JobManager, JobNotFoundError, JobStateError
from ember.jobs.supervisor import SUPERVISOR_NAMESPACE, supervisor_name
from ember.rpc import EventLoopThread
from ember.rpc.sync_client import gcs_request

PY = sys.executable


class Head:
    """An ``ember start --head`` cluster and a JobManager on a loop thread of this process."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.env = cli_env(tmp)
        self.port = free_port()
        # --no-include-dashboard: this test's JobManager is the cluster's only job server.
        started = ember_cli(["start", "--head", "--port", str(self.port), "--num-cpus", "2",
                             "--object-store-memory", str(128 * 1024 * 1024), "--no-include-dashboard"], self.env)
        assert started.returncode == 0, started.stdout + started.stderr
        (self.session_dir,) = session_dirs(tmp)
        self.address = f"127.0.0.1:{self.port}"
        self.token = session.read_token(self.session_dir)
        self.io = EventLoopThread("jobs-test")
        self.manager = self.run(self._make_manager())

    async def _make_manager(self) -> JobManager:
        async def call(method: str, payload: Any) -> Any:
            return await asyncio.to_thread(gcs_request, self.address, self.token, method, payload)

        manager = JobManager(call, self.address, self.token, os.path.join(self.session_dir, "logs"))
        manager.start()
        return manager

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return self.io.run(coro, timeout)

    def submit(self, entrypoint: str, **fields: Any) -> str:
        return self.run(self.manager.submit(JobSubmitRequest(entrypoint=entrypoint, **fields)))

    def details(self, job_id: str) -> Any:
        return self.run(self.manager.get_job(job_id))

    def wait_status(self, job_id: str, *statuses: JobStatus, timeout: float = 60) -> Any:
        wait_for_condition(lambda: self.details(job_id).status in statuses, timeout=timeout)
        return self.details(job_id)

    def close(self) -> None:
        try:
            self.run(self.manager.close())
        finally:
            self.io.stop()
            end_everything(self.tmp)


@pytest.fixture
def head(tmp_path: Any) -> Iterator[Head]:
    cluster = Head(str(tmp_path / "cluster"))
    try:
        yield cluster
    finally:
        cluster.close()


def _script(tmp_path: Any, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_job_runs_its_driver_in_its_runtime_env_and_records_the_outcome(head, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "helper.py").write_text("def answer():\n    return 6 * 7\n")
    (work / "driver.py").write_text(
        "import os, ember\n"
        "ember.init()\n"
        "print('X=' + os.environ['X'], 'SID=' + os.environ['EMBER_JOB_SUBMISSION_ID'])\n"
        "@ember.remote\n"
        "def in_a_worker():\n"
        "    import helper\n"  # the job's working_dir reaches its tasks' workers
        "    return helper.answer(), os.environ['X']\n"
        "print('answer', ember.get(in_a_worker.remote()))\n"
    )
    ok = head.submit(f"{PY} driver.py", runtime_env={"env_vars": {"X": "1"}, "working_dir": str(work)},
                     metadata={"team": "a"}, submission_id="my-job-1")
    failing = head.submit("echo boom; echo last words >&2; exit 3")
    done = head.wait_status(ok, JobStatus.SUCCEEDED, JobStatus.FAILED)
    logs = head.run(head.manager.get_logs(ok))
    assert done.status is JobStatus.SUCCEEDED, (done.message, logs)
    assert "X=1 SID=my-job-1" in logs and "answer (42, '1')" in logs
    assert done.driver_exit_code == 0 and done.metadata == {"team": "a"} and done.end_time >= done.start_time
    # The driver registered with its submission id: the job's driver job id and pid are known.
    assert done.type is JobType.SUBMISSION and done.job_id and done.driver_info.pid
    assert os.path.exists(os.path.join(head.session_dir, "logs", "job-driver-my-job-1.log"))
    assert head.details(done.job_id).submission_id == "my-job-1"  # found by its driver job id too

    failed = head.wait_status(failing, JobStatus.FAILED)
    assert failed.driver_exit_code == 3 and failed.error_type == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert "exit code 3" in failed.message and "boom" in failed.message and "last words" in failed.message

    # A taken submission id is refused; a running job cannot be deleted; unknown ids are errors.
    with pytest.raises(ValueError, match="already exists"):
        head.submit("true", submission_id="my-job-1")
    with pytest.raises(JobNotFoundError):
        head.details("no-such-job")
    listed = {d.submission_id: d.status for d in head.run(head.manager.list_jobs()) if d.submission_id}
    assert listed == {"my-job-1": JobStatus.SUCCEEDED, failing: JobStatus.FAILED}

    assert head.run(head.manager.delete_job("my-job-1")) is True
    with pytest.raises(JobNotFoundError):
        head.details("my-job-1")
    assert not os.path.exists(os.path.join(head.session_dir, "logs", "job-driver-my-job-1.log"))
    assert head.run(head.manager.stop_job(failing)) is False  # already over


def test_stop_pending_job_ends_it_before_anything_runs(head, tmp_path):
    marker = tmp_path / "ran"
    job = head.submit(f"touch {marker}", entrypoint_resources={"accelerator_that_does_not_exist": 1})
    pending = head.details(job)
    assert pending.status is JobStatus.PENDING and "waiting for resources" in pending.message
    with pytest.raises(JobStateError):
        head.run(head.manager.delete_job(job))
    assert head.run(head.manager.stop_job(job)) is True
    stopped = head.details(job)
    assert stopped.status is JobStatus.STOPPED and stopped.end_time is not None
    # Its supervisor (which waited for the resource) is gone, so nothing can start later.
    wait_for_condition(lambda: gcs_request(head.address, head.token, "get_named_actor",
                                           {"name": supervisor_name(job), "namespace": SUPERVISOR_NAMESPACE}) is None)
    assert head.run(head.manager.stop_job(job)) is False
    assert not marker.exists()


def test_stop_running_job_ends_its_driver_children_tasks_and_actors(head, tmp_path):
    driver = _script(tmp_path, "driver.py", (
        "import os, subprocess, sys, ember\n"
        "from ember._private.test_utils import write_file_atomic\n"
        "ember.init()\n"
        "@ember.remote\n"
        "class A:\n"
        "    def pid(self):\n"
        "        return os.getpid()\n"
        "@ember.remote\n"
        "def busy():\n"
        f"    write_file_atomic({str(tmp_path / 'task_pid')!r}, str(os.getpid()))\n"
        "    import time\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"
        "a = A.remote()\n"
        "running = busy.remote()\n"
        "child = subprocess.Popen(['sleep', '1000'])\n"
        f"write_file_atomic({str(tmp_path / 'pids')!r}, f'{{os.getpid()}} {{child.pid}} {{ember.get(a.pid.remote())}}')\n"
        "print('ready', flush=True)\n"
        "child.wait()\n"
    ))
    job = head.submit(f"{PY} {driver}")
    pids = [int(p) for p in wait_for_file(str(tmp_path / "pids"), timeout=60).split()]
    pids.append(int(wait_for_file(str(tmp_path / "task_pid"), timeout=60)))
    assert head.details(job).status is JobStatus.RUNNING
    assert all(pid_alive(p) for p in pids)
    assert head.run(head.manager.stop_job(job)) is True
    stopped = head.wait_status(job, JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED)
    assert stopped.status is JobStatus.STOPPED, stopped.message
    # The driver, what it started, its running task's worker and its actor's worker are all gone.
    wait_for_condition(lambda: not any(pid_alive(p) for p in pids), timeout=30)
    assert "ready" in head.run(head.manager.get_logs(job))


def test_tail_streams_output_as_it_is_written(head, tmp_path):
    go = tmp_path / "go"
    job = head.submit(f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second")

    async def read_until_first(stream: Any) -> str:
        text = ""
        while "first" not in text:
            text += await stream.__anext__()
        return text

    async def rest(stream: Any) -> str:
        return "".join([chunk async for chunk in stream])

    stream = head.manager.tail_logs(job)
    assert "second" not in head.run(read_until_first(stream))
    go.touch()
    assert "second" in head.run(rest(stream))  # and the stream ends with the job
    assert head.details(job).status is JobStatus.SUCCEEDED


def test_finished_jobs_beyond_the_kept_count_are_deleted(head, monkeypatch):
    from ember._private.config import reset_config

    first = head.submit("echo one")
    head.wait_status(first, JobStatus.SUCCEEDED)
    second = head.submit("echo two")
    head.wait_status(second, JobStatus.SUCCEEDED)
    monkeypatch.setenv("EMBER_job_max_finished_kept", "1")
    reset_config()
    try:
        head.run(head.manager.check_jobs())
    finally:
        monkeypatch.delenv("EMBER_job_max_finished_kept")
        reset_config()
    with pytest.raises(JobNotFoundError):
        head.details(first)
    assert head.details(second).status is JobStatus.SUCCEEDED


def test_job_running_across_a_control_service_restart_finishes_with_its_record(head, tmp_path):
    go = tmp_path / "go"
    job = head.submit(f"echo before; while [ ! -e {go} ]; do sleep 0.05; done; echo after",
                      metadata={"kept": "yes"})
    head.wait_status(job, JobStatus.RUNNING)
    kill_gcs(head.session_dir)
    restarted = restart_gcs(head.session_dir, head.env)
    try:
        go.touch()  # the job ends while the control service may still be coming back
        wait_for_condition(lambda: gcs_request(head.address, head.token, "ping", timeout=1.0) == "pong", timeout=30)
        done = head.wait_status(job, JobStatus.SUCCEEDED, JobStatus.FAILED)
        assert done.status is JobStatus.SUCCEEDED, done.message
        assert done.metadata == {"kept": "yes"} and done.driver_exit_code == 0
        logs = head.run(head.manager.get_logs(job))
        assert "before" in logs and "after" in logs
    finally:
        restarted.kill()
        restarted.wait(timeout=10)


def test_job_with_entrypoint_resources_runs_on_the_node_that_has_them(head, tmp_path):
    side_env = dict(head.env, EMBER_CLUSTER_TOKEN=head.token)
    joined = ember_cli(["start", "--address", head.address, "--num-cpus", "1", "--resources", '{"side": 1}',
                        "--object-store-memory", str(64 * 1024 * 1024)], side_env)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    nodes = gcs_request(head.address, head.token, "get_nodes")
    side = next(n["NodeID"] for n in nodes if n["Alive"] and n["Resources"].get("side"))
    go = tmp_path / "go"
    job = head.submit(f"echo on the side node; while [ ! -e {go} ]; do sleep 0.05; done; echo done",
                      entrypoint_resources={"side": 1})
    running = head.wait_status(job, JobStatus.RUNNING)
    assert running.driver_node_id == side
    # Its log is on the other node: read through its supervisor while it runs...
    wait_for_condition(lambda: "on the side node" in head.run(head.manager.get_logs(job)))
    go.touch()
    head.wait_status(job, JobStatus.SUCCEEDED)
    # ... and from the copy it left in the cluster once it ended.
    wait_for_condition(lambda: gcs_request(head.address, head.token, "get_named_actor",
                                           {"name": supervisor_name(job), "namespace": SUPERVISOR_NAMESPACE}) is None)
    assert head.run(head.manager.get_logs(job)) == "on the side node\ndone\n"
    assert not os.path.exists(os.path.join(head.session_dir, "logs", f"job-driver-{job}.log"))


def test_jobs_outlive_the_manager_that_submitted_them(head, tmp_path):
    """The HTTP server (and its manager) may crash: running jobs go on, and a job still waiting
    for its resources starts once they appear, asked to run by the next manager."""
    go = tmp_path / "go"
    running = head.submit(f"echo running; while [ ! -e {go} ]; do sleep 0.05; done")
    waiting = head.submit("echo finally", entrypoint_resources={"later": 1})
    head.wait_status(running, JobStatus.RUNNING)
    head.run(head.manager.close())  # its driver connection ends: what it created and did not detach dies
    head.manager = head.run(head._make_manager())
    assert head.details(running).status is JobStatus.RUNNING
    go.touch()
    assert head.wait_status(running, JobStatus.SUCCEEDED, JobStatus.FAILED).status is JobStatus.SUCCEEDED
    assert head.details(waiting).status is JobStatus.PENDING
    joined = ember_cli(["start", "--address", head.address, "--num-cpus", "1", "--resources", '{"later": 1}',
                        "--object-store-memory", str(64 * 1024 * 1024)], dict(head.env, EMBER_CLUSTER_TOKEN=head.token))
    assert joined.returncode == 0, joined.stdout + joined.stderr
    done = head.wait_status(waiting, JobStatus.SUCCEEDED, JobStatus.FAILED)
    assert done.status is JobStatus.SUCCEEDED, done.message
    assert head.run(head.manager.get_logs(waiting)) == "finally\n"


def test_runtime_env_problems_fail_the_job_or_the_request(head):
    # Malformed: refused before anything is stored.
    with pytest.raises(ValueError, match="env_vars"):
        head.submit("true", runtime_env={"env_vars": {"A": 1}})
    assert head.run(head.manager.list_jobs()) == []
    # Well-formed but impossible to set up on the node: the job FAILS saying why.
    job = head.submit("echo never", runtime_env={"working_dir": "gcs://_ember_pkg_0000000000000000.zip"})
    failed = head.wait_status(job, JobStatus.FAILED, JobStatus.SUCCEEDED)
    assert failed.status is JobStatus.FAILED and failed.error_type == "RUNTIME_ENV_SETUP_FAILURE"
    assert "_ember_pkg_0000000000000000" in failed.message


def test_a_dead_supervisor_fails_its_job_and_takes_the_entrypoint_with_it(head, tmp_path):
    pid_file = tmp_path / "pid"
    job = head.submit(f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} && exec sleep 1000")
    entrypoint_pid = int(wait_for_file(str(pid_file), timeout=60))
    supervisor = gcs_request(head.address, head.token, "get_named_actor",
                             {"name": supervisor_name(job), "namespace": SUPERVISOR_NAMESPACE})
    os.kill(supervisor["pid"], 9)
    failed = head.wait_status(job, JobStatus.FAILED, JobStatus.SUCCEEDED, JobStatus.STOPPED)
    assert failed.status is JobStatus.FAILED and failed.error_type == "JOB_SUPERVISOR_ACTOR_DIED"
    assert "Job supervisor actor died" in failed.message
    wait_for_condition(lambda: not pid_alive(entrypoint_pid), timeout=10)
