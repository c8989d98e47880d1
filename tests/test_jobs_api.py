"""The job API end to end: ``JobSubmissionClient`` and ``ember job`` against the HTTP server
of an ``ember start --head`` cluster (the seed chapter's deployment example).

Each test starts its own cluster (free ports, own EMBER_TMPDIR) and ends it by pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cli_cluster import cli_env, ember_cli, end_everything, kill_gcs, restart_gcs, session_dirs

from ember._private import session
from ember._private.test_utils import free_port, wait_for_condition
from ember.exceptions import JobAuthenticationError, JobServerUnreachableError, JobSubmissionError
from ember.job_submission import JobStatus, JobSubmissionClient, JobType

PY = sys.executable


class Cluster:
    """``ember start --head`` with its HTTP server; ``url`` is the job API's address."""

    def __init__(self, tmp: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.env = cli_env(tmp)
        started = ember_cli(["start", "--head", "--port", str(free_port()), "--num-cpus", "2",
                             "--dashboard-port", str(free_port()),
                             "--object-store-memory", str(128 * 1024 * 1024)], self.env)
        assert started.returncode == 0, started.stdout + started.stderr
        (self.session_dir,) = session_dirs(tmp)
        wait_for_condition(lambda: session.dashboard_url(self.session_dir) is not None, timeout=30)
        self.url = "http://" + str(session.dashboard_url(self.session_dir))
        self.token = session.read_token(self.session_dir)
        # This process finds the cluster like a user's shell would: through EMBER_TMPDIR's records.
        monkeypatch.setenv("EMBER_TMPDIR", tmp)
        for name in ("EMBER_ADDRESS", "RAY_ADDRESS", "EMBER_CLUSTER_TOKEN"):
            monkeypatch.delenv(name, raising=False)

    def wait_done(self, client: JobSubmissionClient, job_id: str, timeout: float = 60) -> JobStatus:
        wait_for_condition(lambda: client.get_job_status(job_id).is_terminal(), timeout=timeout)
        return client.get_job_status(job_id)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return ember_cli(["job", *args], self.env, timeout=timeout)


@pytest.fixture
def cluster(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    tmp = str(tmp_path / "cluster")
    try:
        yield Cluster(tmp, monkeypatch)
    finally:
        end_everything(tmp)


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_seed_example_submit_poll_and_read_logs(cluster, tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    (work / "helper.py").write_text("GREETING = 'hello from the working dir'\n")
    (work / "main.py").write_text(
        "import os, ember, helper\n"
        "ember.init()\n"
        "@ember.remote\n"
        "def square(x):\n"
        "    return x * x\n"
        "print(helper.GREETING, os.environ['STAGE'])\n"
        "print('squares', ember.get([square.remote(i) for i in range(4)]))\n"
    )
    client = JobSubmissionClient()  # address and token found from this machine's records
    assert client.address == cluster.url
    job_id = client.submit_job(
        entrypoint="python main.py",
        runtime_env={"working_dir": str(work), "env_vars": {"STAGE": "prod"}},
        metadata={"owner": "seed"},
    )
    status = cluster.wait_done(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status is JobStatus.SUCCEEDED, (client.get_job_info(job_id).message, logs)
    assert "hello from the working dir prod" in logs and "squares [0, 1, 4, 9]" in logs
    info = client.get_job_info(job_id)
    assert info.type is JobType.SUBMISSION and info.submission_id == job_id and info.metadata == {"owner": "seed"}
    assert info.driver_exit_code == 0 and info.job_id and info.driver_info.pid
    assert job_id in {j.submission_id for j in client.list_jobs()}

    failing = client.submit_job(entrypoint="echo about to fail; exit 7")
    assert cluster.wait_done(client, failing) is JobStatus.FAILED
    failed = client.get_job_info(failing)
    assert "exit code 7" in failed.message and "about to fail" in failed.message

    assert client.delete_job(job_id) is True
    with pytest.raises(JobSubmissionError, match="does not exist") as missing:
        client.get_job_info(job_id)
    assert missing.value.status == 404 and isinstance(missing.value, RuntimeError)


def test_the_job_api_takes_the_token_and_refuses_bad_input(cluster, tmp_path):
    marker = tmp_path / "ran"
    # Without the token nothing runs (Ray's open job API was exploited to run code).
    status, text = _post(cluster.url + "/api/jobs/", {"entrypoint": f"touch {marker}"})
    assert status == 401, text
    status, _ = _post(cluster.url + "/api/jobs/", {"entrypoint": f"touch {marker}"},
                      {"Authorization": "Bearer not-the-token"})
    assert status == 401
    with pytest.raises(JobAuthenticationError, match="EMBER_CLUSTER_TOKEN"):
        JobSubmissionClient(cluster.url, headers={"Authorization": "Bearer not-the-token"})
    client = JobSubmissionClient(cluster.url, headers={"Authorization": f"Bearer {cluster.token}"})
    assert client.list_jobs() == [] and not marker.exists()
    # Ray's SDK and CLI check this first and refuse a server below Ray 2.0.
    ray_version = client._request("GET", "/api/version")["ray_version"]
    assert tuple(int(p) for p in ray_version.split(".")[:2]) >= (2, 0)

    # Bad requests get 400 naming the problem and leave no job behind.
    auth = {"Authorization": f"Bearer {cluster.token}"}
    for body, needle in [({"entrypoint": ""}, "empty"), ({"entrypoint": "x", "entrypoint_num_cpus": "two"}, "entrypoint_num_cpus"),
                         ({"entrypoint": "x", "runtime_env": {"env_vars": {"A": 1}}}, "env_vars"),
                         ({"cmd": "x"}, "unknown field")]:
        status, text = _post(cluster.url + "/api/jobs/", body, auth)
        assert status == 400 and needle in text, (body, status, text)
    with pytest.raises((ValueError, TypeError), match="env_vars"):
        client.submit_job(entrypoint="true", runtime_env={"env_vars": {"A": 1}})
    assert client.list_jobs() == []

    with pytest.raises(JobServerUnreachableError, match="Could not reach"):
        JobSubmissionClient(f"http://127.0.0.1:{free_port()}")


def test_stop_pending_job_and_tail_a_running_one(cluster, tmp_path):
    client = JobSubmissionClient()
    pending = client.submit_job(entrypoint="echo never", entrypoint_num_gpus=4)  # the cluster has no GPU
    assert client.get_job_status(pending) is JobStatus.PENDING
    assert client.stop_job(pending) is True
    assert client.get_job_status(pending) is JobStatus.STOPPED
    assert client.stop_job(pending) is False

    go = tmp_path / "go"
    job = client.submit_job(entrypoint=f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second")

    async def follow() -> str:
        seen = ""
        async for chunk in client.tail_job_logs(job):
            seen += chunk
            if "first" in seen and not go.exists():
                go.touch()  # the job goes on only once the stream has shown its first line
        return seen

    assert asyncio.run(follow()) == "first\nsecond\n"
    assert cluster.wait_done(client, job) is JobStatus.SUCCEEDED


def test_ember_job_cli(cluster, tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint('job says', sys.argv[1])\nsys.exit(int(sys.argv[2]))\n")
    ok = cluster.cli("submit", "--submission-id", "cli-ok", "--", PY, str(script), "hi", "0")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "job says hi" in ok.stdout and "succeeded" in ok.stderr
    env_file = tmp_path / "env.yaml"
    env_file.write_text("env_vars:\n  CODE: '3'\n")
    bad = cluster.cli("submit", "--runtime-env", str(env_file), "--", "sh", "-c", f"{PY} {script} no $CODE")
    assert bad.returncode == 1 and "job says no" in bad.stdout and "exit code 3" in bad.stderr

    queued = cluster.cli("submit", "--no-wait", "--submission-id", "cli-wait", "--entrypoint-num-cpus", "64", "--", "true")
    assert queued.returncode == 0 and "cli-wait" in queued.stderr
    status = cluster.cli("status", "cli-wait")
    assert "PENDING" in status.stdout
    stopped = cluster.cli("stop", "cli-wait")
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout

    listed = cluster.cli("list")
    assert "cli-ok" in listed.stdout and "SUCCEEDED" in listed.stdout and "cli-wait" in listed.stdout
    logs = cluster.cli("logs", "cli-ok")
    assert logs.stdout == "job says hi\n"
    assert cluster.cli("delete", "cli-ok").returncode == 0
    missing = cluster.cli("status", "cli-ok")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert cluster.cli("submit", "--runtime-env-json", "{nope", "--", "true").returncode == 2


def test_a_job_outlives_a_crash_of_the_http_server_and_of_the_control_service(cluster, tmp_path):
    client = JobSubmissionClient()
    go = tmp_path / "go"
    job = client.submit_job(entrypoint=f"echo before; while [ ! -e {go} ]; do sleep 0.05; done; echo after",
                            metadata={"kept": "yes"})
    wait_for_condition(lambda: client.get_job_status(job) is JobStatus.RUNNING, timeout=30)
    # SIGKILL the HTTP server, then the control service; the restarted control service
    # brings the HTTP server back (dashboard_restart_args.json).
    os.kill(session.read_pid_files(cluster.session_dir)["dashboard"], signal.SIGKILL)
    kill_gcs(cluster.session_dir)
    restart_gcs(cluster.session_dir, cluster.env)
    go.touch()  # the job ends while both are down or coming back

    def finished() -> bool:
        try:
            return client.get_job_status(job).is_terminal()
        except JobSubmissionError:  # not back yet (unreachable, or 503 while it reconnects)
            return False

    wait_for_condition(finished, timeout=60)
    info = client.get_job_info(job)
    assert info.status is JobStatus.SUCCEEDED, info.message
    assert info.metadata == {"kept": "yes"} and client.get_job_logs(job) == "before\nafter\n"
    # The new server runs new jobs as before.
    again = client.submit_job(entrypoint="echo again")
    assert cluster.wait_done(client, again) is JobStatus.SUCCEEDED
