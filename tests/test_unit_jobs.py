"""Job records, status transitions, request validation and the SDK's address rules (no cluster)."""

from __future__ import annotations

import asyncio

import pytest
from protocol_helpers import via_wire

from ember.jobs.common import (
    TRANSITIONS,
    IllegalJobTransition,
    JobDetails,
    JobInfo,
    JobStatus,
    JobSubmitRequest,
    JobType,
    new_submission_id,
)
from ember.jobs.supervisor import driver_environment, read_tail

#: Ray 2.60's JobDetails fields (what its dashboard and SDK read).
RAY_JOB_DETAILS_FIELDS = {
    "type", "job_id", "submission_id", "driver_info", "status", "entrypoint", "message", "error_type",
    "start_time", "end_time", "metadata", "runtime_env", "driver_agent_http_address", "driver_node_id",
    "driver_exit_code", "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory", "entrypoint_resources",
}


@pytest.mark.parametrize("old,new", [
    (JobStatus.PENDING, JobStatus.RUNNING), (JobStatus.PENDING, JobStatus.STOPPED),
    (JobStatus.PENDING, JobStatus.FAILED), (JobStatus.RUNNING, JobStatus.SUCCEEDED),
    (JobStatus.RUNNING, JobStatus.FAILED), (JobStatus.RUNNING, JobStatus.STOPPED),
])
def test_allowed_transitions(old, new):
    info = JobInfo(status=old, entrypoint="x")
    moved = info.moved_to(new)
    assert moved.status is new and info.status is old
    assert (moved.end_time is not None) == new.is_terminal()


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED])
def test_final_statuses_never_change(final):
    assert final.is_terminal()
    for status in JobStatus:
        assert not TRANSITIONS.allows(final, status)
        with pytest.raises(IllegalJobTransition):
            JobInfo(status=final, entrypoint="x").moved_to(status)


def test_running_cannot_go_back_to_pending_or_skip_to_success_from_pending():
    with pytest.raises(IllegalJobTransition):
        JobInfo(status=JobStatus.RUNNING, entrypoint="x").moved_to(JobStatus.PENDING)
    with pytest.raises(IllegalJobTransition):
        JobInfo(status=JobStatus.PENDING, entrypoint="x").moved_to(JobStatus.SUCCEEDED)


def test_record_round_trip_and_default_messages():
    info = JobInfo(status=JobStatus.PENDING, entrypoint="python x.py", metadata={"a": "b"},
                   runtime_env={"env_vars": {"X": "1"}}, entrypoint_num_cpus=1, start_time=5)
    assert "waiting for resources" in info.message and "runtime environment" in info.message
    assert JobInfo.decode(info.encode()) == info
    assert info.moved_to(JobStatus.RUNNING).message == "Job is currently running."
    failed = info.moved_to(JobStatus.FAILED, message="boom", driver_exit_code=3)
    assert failed.message == "boom" and failed.driver_exit_code == 3


def test_job_details_have_rays_fields_and_json_shape():
    details = JobDetails(type=JobType.SUBMISSION, status=JobStatus.RUNNING, entrypoint="x", submission_id="s",
                         driver_info={"id": "01000000", "node_ip_address": "127.0.0.1", "pid": "42"})
    data = details.to_json()
    assert set(data) == RAY_JOB_DETAILS_FIELDS
    assert data["type"] == "SUBMISSION" and data["status"] == "RUNNING" and data["driver_info"]["pid"] == "42"
    assert JobDetails.from_json({**data, "a_field_from_a_newer_server": 1}) == details


@pytest.mark.parametrize("body,error,match", [
    ({}, TypeError, "no 'entrypoint'"),
    ({"entrypoint": "  "}, ValueError, "empty"),
    ({"entrypoint": 3}, TypeError, "entrypoint must be a string"),
    ({"entrypoint": "x", "submission_id": "a/b"}, ValueError, "letters"),
    ({"entrypoint": "x", "runtime_env": []}, TypeError, "runtime_env"),
    ({"entrypoint": "x", "metadata": {"a": 1}}, TypeError, "metadata"),
    ({"entrypoint": "x", "entrypoint_num_cpus": -1}, TypeError, "entrypoint_num_cpus"),
    ({"entrypoint": "x", "entrypoint_num_gpus": "1"}, TypeError, "entrypoint_num_gpus"),
    ({"entrypoint": "x", "entrypoint_memory": 1.5}, TypeError, "entrypoint_memory"),
    ({"entrypoint": "x", "entrypoint_resources": {"CPU": 1}}, ValueError, "entrypoint_num_cpus"),
    ({"entrypoint": "x", "entrypoint_resources": {"a": True}}, TypeError, "entrypoint_resources"),
    ({"entrypoint": "x", "shell": True}, TypeError, "unknown field"),
    ([], TypeError, "JSON object"),
])
def test_bad_submit_requests_name_the_problem(body, error, match):
    with pytest.raises(error, match=match):
        JobSubmitRequest.from_json(body)


def test_good_submit_request_and_ids():
    request = JobSubmitRequest.from_json({
        "entrypoint": "python x.py", "submission_id": "job-1", "runtime_env": {"env_vars": {"A": "1"}},
        "entrypoint_num_cpus": 0.5, "entrypoint_resources": {"disk": 1}, "entrypoint_label_selector": None,
    })
    assert request.submission_id == "job-1" and request.entrypoint_num_cpus == 0.5
    ids = {new_submission_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("embersubmit_") for i in ids)


def test_driver_environment_connects_the_driver_and_drops_worker_only_variables():
    base = {"PATH": "/bin", "EMBER_WORKER_ID": "ab", "EMBER_RAYLET_ADDRESS": "x", "RAY_ADDRESS": "http://h:8265"}
    env = driver_environment(base, gcs_address="10.0.0.1:6379", token="t0k", submission_id="s1",
                             runtime_env={"env_vars": {"X": "1"}, "working_dir": "/w"})
    assert env["EMBER_ADDRESS"] == "10.0.0.1:6379" and env["EMBER_CLUSTER_TOKEN"] == "t0k"
    assert env["EMBER_JOB_SUBMISSION_ID"] == "s1" and env["X"] == "1" and env["PATH"] == "/bin"
    assert '"working_dir": "/w"' in env["EMBER_JOB_RUNTIME_ENV"]
    assert "EMBER_WORKER_ID" not in env and "EMBER_RAYLET_ADDRESS" not in env and "RAY_ADDRESS" not in env


def test_read_tail(tmp_path):
    path = tmp_path / "log"
    path.write_text("a" * 100 + "END")
    assert read_tail(str(path), 5) == "aaEND"
    assert read_tail(str(tmp_path / "missing"), 5) == ""


def test_sdk_address_rules(monkeypatch, tmp_path):
    from ember._private import session
    from ember.job_submission.sdk import resolve_address

    for name in ("EMBER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EMBER_TMPDIR", str(tmp_path))
    assert resolve_address(None) == "http://127.0.0.1:8265"
    # The head started here last, with its HTTP server's address recorded in its session.
    session_dir = tmp_path / "session_x"
    session_dir.mkdir()
    (session_dir / session.DASHBOARD_URL_FILE).write_text('{"url": "127.0.0.1:18265", "pid": 1}')
    session.write_current_cluster({"gcs_address": "127.0.0.1:1", "session_dir": str(session_dir)})
    assert resolve_address(None) == "http://127.0.0.1:18265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert resolve_address(None) == "http://head:8265"
    monkeypatch.setenv("EMBER_ADDRESS", "10.0.0.1:6379")  # a control-service address: not for HTTP
    assert resolve_address(None) == "http://head:8265"
    assert resolve_address("h:1") == "http://h:1"
    with pytest.raises(ValueError, match="http"):
        resolve_address("ray://h:10001")


def test_token_discovery_by_http_address_reads_only_this_users_private_records(monkeypatch, tmp_path):
    import os

    from ember._private import session
    from ember.job_submission.sdk import find_token

    monkeypatch.delenv("EMBER_CLUSTER_TOKEN", raising=False)
    monkeypatch.setenv("EMBER_TMPDIR", str(tmp_path))
    session_dir = session.create_session_dir()
    token = session.create_token(session_dir)
    (tmp_path / os.path.basename(session_dir) / session.DASHBOARD_URL_FILE).write_text('{"url": "localhost:18265"}')
    session.register_cluster("127.0.0.1:16379", session_dir)
    assert find_token("http://127.0.0.1:18265") == token
    assert find_token("http://127.0.0.1:18266") is None  # another server gets no token
    os.chmod(os.path.join(session_dir, "token"), 0o644)  # readable by others: not trusted
    assert find_token("http://127.0.0.1:18265") is None
    monkeypatch.setenv("EMBER_CLUSTER_TOKEN", "explicit")
    assert find_token("http://127.0.0.1:18266") == "explicit"


def _store_on_a_control_service(tmp_path):
    """A JobStore over a real control service's KV handlers (in this process, no network)."""
    from ember.gcs.server import GcsServer
    from ember.gcs.storage import SqliteStorage
    from ember.jobs.store import JobStore

    gcs = GcsServer(str(tmp_path), "token", SqliteStorage(str(tmp_path / "gcs.sqlite")))

    async def call(method, payload):
        await asyncio.sleep(0)  # let the other writer in between every request
        return getattr(via_wire(gcs), "rpc_" + method)(None, payload)

    return JobStore(call), gcs


def test_store_status_changes_are_compare_and_set(tmp_path):
    store, gcs = _store_on_a_control_service(tmp_path)

    async def scenario():
        info = JobInfo(status=JobStatus.PENDING, entrypoint="x")
        assert await store.create("j", info) and not await store.create("j", info)
        await store.transition("j", JobStatus.RUNNING)
        # The supervisor (SUCCEEDED) and the manager (STOPPED) race: one wins, the other is refused.
        results = await asyncio.gather(store.try_transition("j", JobStatus.SUCCEEDED),
                                       store.try_transition("j", JobStatus.STOPPED))
        assert sum(r is not None for r in results) == 1
        winner = next(r for r in results if r is not None)
        assert (await store.get("j")).status is winner.status
        with pytest.raises(KeyError):
            await store.transition("missing", JobStatus.RUNNING)
        assert set(await store.list()) == {"j"}
        assert await store.delete("j") and await store.get("j") is None

    asyncio.run(scenario())
    gcs.storage.close()
