"""The state API on a real cluster: task events, filters before limits, summaries, logs, timeline,
the CLI and the HTTP routes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest
from http_helpers import http, session_token

import ember
from ember._private.test_utils import wait_for_condition, wait_for_file
from ember.exceptions import WorkerCrashedError
from ember.util.state import (
    get_log,
    get_task,
    list_actors,
    list_jobs,
    list_logs,
    list_nodes,
    list_placement_groups,
    list_tasks,
    list_workers,
    summarize_actors,
    summarize_tasks,
)
from ember.util.state.common import ActorState, TaskState


def _gate(tmp_path, name="go"):
    return str(tmp_path / name)


@ember.remote(num_cpus=0)  # blocked tasks hold no CPU: the 2 CPUs stay for the other tasks
def wait_for_gate(path: str, report: str) -> str:
    import os
    import time

    from ember._private.test_utils import write_file_atomic

    write_file_atomic(report, str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)  # the test opens the gate by creating the file
    return "done"


@ember.remote
def noop(i: int) -> int:
    return i


def _state_of(task_id: str) -> str | None:
    task = get_task(task_id)
    return task.state if task is not None else None


def test_a_task_is_seen_running_then_finished(ember_local, tmp_path):
    gate = _gate(tmp_path)
    ref = wait_for_gate.remote(gate, str(tmp_path / "pid"))
    task_id = ref.task_id().hex()
    wait_for_condition(lambda: _state_of(task_id) == "RUNNING", timeout=20)
    task = get_task(ref)  # by ObjectRef too
    assert isinstance(task, TaskState) and task.name == "wait_for_gate" and task.type == "NORMAL_TASK"
    assert task.worker_pid == int(wait_for_file(str(tmp_path / "pid")))
    assert task.node_id == ember.get_runtime_context().get_node_id() and task.job_id
    open(gate, "w").close()
    assert ember.get(ref) == "done"
    wait_for_condition(lambda: _state_of(task_id) == "FINISHED", timeout=20)
    detail = get_task(task_id)
    states = [e["state"] for e in detail.events]
    assert states[0] == "PENDING_ARGS_AVAIL" and "RUNNING" in states and states[-1] == "FINISHED"
    assert detail.start_time_ms <= detail.end_time_ms


def test_running_filter_finds_the_three_running_among_20000_finished(ember_local, tmp_path):
    gate = _gate(tmp_path)
    blocked = [wait_for_gate.remote(gate, str(tmp_path / f"pid{i}")) for i in range(3)]
    for i in range(3):
        wait_for_file(str(tmp_path / f"pid{i}"), timeout=30)
    assert sum(ember.get([noop.remote(i) for i in range(20_000)])) == sum(range(20_000))

    def finished() -> int:
        counts = summarize_tasks()["cluster"]["summary"].get("noop", {}).get("state_counts", {})
        return counts.get("FINISHED", 0)

    wait_for_condition(lambda: finished() == 20_000, timeout=60)
    running = list_tasks(filters=[("state", "=", "RUNNING")])
    assert sorted(t.task_id for t in running) == sorted(r.task_id().hex() for r in blocked)
    summary = summarize_tasks()["cluster"]
    assert summary["summary"]["noop"]["state_counts"] == {"FINISHED": 20_000}
    assert summary["summary"]["wait_for_gate"]["state_counts"] == {"RUNNING": 3}
    assert summary["total_tasks"] == 20_003
    # The limit cuts after the filters; the caller is told how many match.
    with pytest.warns(UserWarning, match="Showing 5 of 20000 tasks"):
        assert len(list_tasks(filters=[("name", "=", "noop")], limit=5)) == 5
    open(gate, "w").close()
    assert ember.get(blocked) == ["done"] * 3


def test_a_killed_workers_task_failed_with_its_error_type(ember_local, tmp_path):
    gate = _gate(tmp_path)
    ref = wait_for_gate.options(max_retries=0).remote(gate, str(tmp_path / "pid"))
    os.kill(int(wait_for_file(str(tmp_path / "pid"))), signal.SIGKILL)
    with pytest.raises(WorkerCrashedError):
        ember.get(ref)
    wait_for_condition(lambda: _state_of(ref.task_id().hex()) == "FAILED", timeout=20)
    task = get_task(ref)
    assert task.error_type == "WORKER_DIED" and task.error_message


def test_an_application_error_and_actor_tasks_are_recorded(ember_local):
    @ember.remote
    def boom():
        raise KeyError("lost key")

    @ember.remote
    class Counter:
        def incr(self):
            print("counter incremented")
            return 1

    counter = Counter.remote()
    assert ember.get([counter.incr.remote() for _ in range(3)]) == [1, 1, 1]
    with pytest.raises(KeyError):
        ember.get(boom.remote())
    actor_id = counter._actor_id.hex()

    def recorded() -> bool:
        return len(list_tasks(filters=[("actor_id", "=", actor_id), ("type", "=", "ACTOR_TASK")])) == 3

    wait_for_condition(recorded, timeout=20)
    failed = wait_for_condition(lambda: list_tasks(filters=[("state", "=", "FAILED")], detail=True), timeout=20)
    assert [(t.name, t.error_type) for t in failed] == [("boom", "TASK_EXECUTION_EXCEPTION")]
    assert "lost key" in failed[0].error_message
    (actor,) = list_actors(filters=[("class_name", "=", "Counter")])
    assert isinstance(actor, ActorState) and actor.state == "ALIVE" and actor.actor_id == actor_id
    assert summarize_actors()["cluster"]["summary"]["Counter"]["state_counts"] == {"ALIVE": 1}
    (node,) = list_nodes()
    assert node.state == "ALIVE" and node.is_head_node
    assert [j.status for j in list_jobs()] == ["RUNNING"]
    assert any(w.pid == actor.pid for w in list_workers())
    assert list_placement_groups() == []
    # Logs by actor id: that actor's output, without the runtime's marker lines.
    wait_for_condition(lambda: "counter incremented" in "".join(get_log(actor_id=actor_id)), timeout=20)
    assert ":ember_task:" not in "".join(get_log(actor_id=actor_id))
    assert any(name.startswith("raylet") for name in list_logs()["raylet"])
    assert "".join(get_log(filename="gcs_server.log", tail=1)).count("\n") == 1


@pytest.mark.parametrize("name", ["../token", "/etc/passwd", "..", ".hidden", "sub/dir"])
def test_logs_cannot_be_read_outside_the_log_folder(ember_local, name):
    with pytest.raises((ValueError, Exception)) as info:
        list(get_log(filename=name))
    assert "not a log file name" in str(info.value) or "no log file" in str(info.value)


def test_a_link_out_of_the_log_folder_is_refused(ember_local):
    logs = os.path.join(ember_local["session_dir"], "logs")
    os.symlink(os.path.join(ember_local["session_dir"], "token"), os.path.join(logs, "evil.log"))
    with pytest.raises(ValueError, match="not a log file name"):
        list(get_log(filename="evil.log"))


def test_bad_arguments_are_refused(ember_local):
    with pytest.raises(ValueError, match="unsupported predicate"):
        list_tasks(filters=[("state", "~", "RUNNING")])
    with pytest.raises(ValueError, match="cannot filter on"):
        list_actors(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="limit"):
        list_tasks(limit=-1)
    with pytest.raises(ValueError, match="exactly one"):
        list(get_log(actor_id="00", pid=3))


def test_timeline_writes_one_event_per_execution_on_worker_rows(ember_local, tmp_path):
    assert ember.get([noop.remote(i) for i in range(10)]) == list(range(10))
    wait_for_condition(lambda: len(list_tasks(filters=[("state", "=", "FINISHED")])) == 10, timeout=20)
    wait_for_condition(lambda: len([e for e in ember.timeline() if e["ph"] == "X"]) == 10, timeout=20)
    path = str(tmp_path / "trace.json")
    assert ember.timeline(path) is None
    with open(path) as f:
        events = [e for e in json.load(f) if e["ph"] == "X"]
    assert len(events) == 10 and all(e["name"] == "noop" and e["dur"] >= 0 for e in events)
    pids = {t.worker_pid for t in list_tasks()}
    assert {e["tid"] for e in events} == {f"worker pid {p}" for p in pids}


def _cli(args: list[str], address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ember.cli", *args, "--address", address],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_cli_lists_summarizes_and_prints_an_actors_logs(ember_local):
    @ember.remote
    class Talker:
        def say(self, text):
            print(text)
            return text

    talker = Talker.remote()
    assert ember.get(talker.say.remote("words from the talker")) == "words from the talker"
    address = ember_local["gcs_address"]
    actor_id = talker._actor_id.hex()
    wait_for_condition(lambda: any(t.name == "Talker.say" and t.state == "FINISHED" for t in list_tasks()), timeout=20)

    logs = _cli(["logs", "--actor-id", actor_id], address)
    assert logs.returncode == 0, logs.stderr
    assert "words from the talker" in logs.stdout
    listed = _cli(["list", "tasks", "--format", "json", "--filter", "name=Talker.say"], address)
    assert listed.returncode == 0, listed.stderr
    assert [t["state"] for t in json.loads(listed.stdout)] == ["FINISHED"]
    table = _cli(["list", "actors"], address)
    assert table.returncode == 0 and actor_id[:12] in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    summary = _cli(["summary", "tasks"], address)
    assert summary.returncode == 0 and "Talker.say" in summary.stdout
    bad = _cli(["list", "tasks", "--filter", "nonsense"], address)
    assert bad.returncode != 0 and "key=value" in bad.stderr
    got = _cli(["get", "actors", actor_id], address)
    assert got.returncode == 0 and f"actor_id: {actor_id}" in got.stdout


def test_http_routes(ember_start):
    ctx = ember_start(include_dashboard=True, dashboard_port=0)
    url, token = ctx.dashboard_url, session_token(ctx["session_dir"])
    assert ember.get([noop.remote(i) for i in range(4)]) == list(range(4))
    wait_for_condition(lambda: len(list_tasks(filters=[("state", "=", "FINISHED")])) == 4, timeout=20)
    assert http(url, "/api/v0/tasks").status == 401
    reply = http(url, "/api/v0/tasks?limit=2&filter_keys=state&filter_predicates=%3D&filter_values=FINISHED",
                 token=token)
    assert reply.status == 200, reply.text
    body = reply.json()["data"]["result"]
    assert body["total"] == 4 and body["num_after_truncation"] == 2 and len(body["result"]) == 2
    assert body["warnings"] and "Showing 2 of 4" in body["warnings"][0]
    summary = http(url, "/api/v0/tasks/summarize", token=token).json()["data"]["result"]
    assert summary["node_id_to_summary"]["cluster"]["summary"]["noop"]["state_counts"] == {"FINISHED": 4}
    for resource in ("actors", "nodes", "jobs", "workers", "placement_groups", "objects"):
        assert http(url, f"/api/v0/{resource}", token=token).status == 200, resource
    assert http(url, "/api/v0/tasks?limit=many", token=token).status == 400
    bad_filter = http(url, "/api/v0/tasks?filter_keys=colour&filter_predicates=%3D&filter_values=x", token=token)
    assert bad_filter.status == 400 and "cannot filter on" in bad_filter.text
    assert http(url, "/api/v0/logs/file?filename=..%2Ftoken", token=token).status == 400
    assert http(url, "/api/v0/logs/file?filename=gcs_server.log").status == 401
    log = http(url, "/api/v0/logs/file?filename=gcs_server.log&lines=1", token=token)
    assert log.status == 200 and log.text.count("\n") == 1
    assert "gcs_server.log" in http(url, "/api/v0/logs", token=token).json()["data"]["result"]["gcs_server"]
    # The workers' RUNNING batches may come after the owner's FINISHED ones.
    wait_for_condition(lambda: len([e for e in http(url, "/api/v0/timeline", token=token).json()
                                    if e["ph"] == "X"]) == 4, timeout=20)
    assert http(url, "/api/v0/nothing", token=token).status == 404


def test_recording_can_be_turned_off(ember_env, ember_start):
    ember_env(task_events_enabled="0")
    ember_start()
    assert ember.get(noop.remote(1)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list_tasks() == []
