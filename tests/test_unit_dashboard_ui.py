"""The web UI's server-side parts without a cluster: log files, history, shared documents, traces."""

from __future__ import annotations

import asyncio
import os

import pytest

from ember.dashboard.ui.history import ClusterHistory
from ember.dashboard.ui.jobs_source import job_row_from_details, job_row_from_driver
from ember.dashboard.ui.log_files import LogFiles
from ember.dashboard.ui.shared_document import DocumentCache, SharedDocument
from ember.dashboard.ui.task_counts import TaskCounts, fold
from ember.dashboard.ui.trace import chrome_trace


@pytest.fixture
def logs(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    (d / "worker-abc.out").write_text("".join(f"line {i}\n" for i in range(1, 101)))
    (tmp_path / "secret").write_text("token")
    return LogFiles(str(d), max_read=64, max_matches=3)


def test_log_tail_starts_at_a_line_and_follow_reads_only_new_bytes(logs):
    first = logs.read("worker-abc.out", None, 30)
    assert first["text"].startswith("line ") and first["text"].endswith("line 100\n")
    assert first["offset"] + first["length"] == first["size"]
    assert logs.read("worker-abc.out", first["size"], None)["text"] == ""
    with open(os.path.join(logs.logs_dir, "worker-abc.out"), "a") as f:
        f.write("appended\n")
    more = logs.read("worker-abc.out", first["size"], None)
    assert more["text"] == "appended\n" and more["offset"] == first["size"]


def test_log_reads_are_bounded_and_end_on_a_whole_line(logs):
    chunk = logs.read("worker-abc.out", 0, None)
    assert 0 < chunk["length"] <= 64 and chunk["text"].endswith("\n")
    assert chunk["text"].startswith("line 1\n")


def test_log_offset_past_the_end_restarts_from_the_beginning(logs):
    assert logs.read("worker-abc.out", 10**9, None)["offset"] == 0


def test_log_search_counts_every_match_and_returns_the_last(logs):
    result = logs.search("worker-abc.out", "LINE 1")  # case-insensitive: 1, 10-19, 100
    assert result["total"] == 12
    assert [n for n, _ in result["matches"]] == [18, 19, 100]
    with pytest.raises(ValueError):
        logs.search("worker-abc.out", "")


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", ".hidden", "a/b", "", "x\x00y"])
def test_log_names_outside_the_folder_are_refused(logs, name):
    with pytest.raises(ValueError):
        logs.read(name, None, 10)


def test_a_link_out_of_the_logs_folder_is_refused(logs, tmp_path):
    os.symlink(tmp_path / "secret", os.path.join(logs.logs_dir, "link.log"))
    with pytest.raises(ValueError):
        logs.read("link.log", None, 10)
    with pytest.raises(FileNotFoundError):
        logs.read("missing.log", None, 10)


def test_log_files_are_grouped_by_node(logs):
    open(os.path.join(logs.logs_dir, "raylet-bbbbbbbbbbbb.log"), "w").close()
    nodes = [{"NodeID": "a" * 32, "IsHead": True}, {"NodeID": "b" * 32, "IsHead": False}]
    logs.learn_owners({"b" * 32: {"workers": [{"pid": 9, "log_files": ["worker-abc.out", "worker-abc.err"]}]}})
    groups = logs.by_node(nodes)
    assert [f["name"] for f in groups["b" * 32]] == ["raylet-bbbbbbbbbbbb.log", "worker-abc.out"]
    assert groups["a" * 32] == []
    assert logs.stdout_of("b" * 32, 9) == "worker-abc.out" and logs.stdout_of("a" * 32, 9) is None


def test_history_is_a_bounded_ring_with_rates():
    history = ClusterHistory(None, 1.0, samples=3)  # type: ignore[arg-type]
    for i in range(5):
        history.record({"t": 100.0 + 2 * i, "cpu_used": 1, "cpu_total": 4, "finished": 10 * i, "failed": i})
    series = history.series()
    assert series["t"] == [104.0, 106.0, 108.0]
    assert series["cpu_pct"] == [25.0, 25.0, 25.0]
    assert series["finished_rate"] == [0.0, 5.0, 5.0]
    assert series["failed_rate"] == [0.0, 0.5, 0.5]
    assert series["mem_pct"] == [0.0, 0.0, 0.0]  # no total: 0, not a division by zero


def test_a_shared_document_is_built_once_for_concurrent_readers():
    builds = []

    async def build():
        builds.append(1)
        await asyncio.sleep(0)
        return {"n": len(builds)}

    async def main():
        doc = SharedDocument(build, ttl=60)
        answers = await asyncio.gather(*(doc.current() for _ in range(10)))
        return answers

    answers = asyncio.run(main())
    assert len(builds) == 1
    assert len({etag for _, etag in answers}) == 1 and answers[0][0] == b'{"n":1}'


def test_a_shared_document_is_rebuilt_after_its_ttl_and_keeps_its_etag_when_unchanged():
    async def main():
        doc = SharedDocument(lambda: asyncio.sleep(0, {"same": True}), ttl=0)
        _, first = await doc.current()
        _, second = await doc.current()
        return first, second

    first, second = asyncio.run(main())
    assert first == second


def test_the_document_cache_keeps_only_the_newest():
    cache = DocumentCache(capacity=2, ttl=1)
    a = cache.get("a", None)  # type: ignore[arg-type]
    cache.get("b", None)  # type: ignore[arg-type]
    assert cache.get("a", None) is a  # type: ignore[arg-type]
    cache.get("c", None)  # type: ignore[arg-type]
    assert cache.get("b", None) is not None and len(cache._documents) == 2  # type: ignore[arg-type]


def test_chrome_trace_has_one_complete_event_per_execution():
    trace = chrome_trace([
        {"node_id": "n" * 32, "node_ip": "10.0.0.1", "pid": 7, "name": "f", "start": 1.0, "end": 1.5, "state": "FINISHED"},
        {"node_id": "n" * 32, "node_ip": "10.0.0.1", "pid": 8, "name": "g", "start": 2.0, "end": 2.25, "state": "FAILED"},
    ])
    complete = [e for e in trace if e["ph"] == "X"]
    assert [(e["name"], e["tid"], e["ts"], e["dur"]) for e in complete] == [
        ("f", "worker pid 7", 1e6, 0.5e6), ("g", "worker pid 8", 2e6, 0.25e6)]
    assert sum(1 for e in trace if e["ph"] == "M") == 1


def test_job_rows_from_the_jobs_api_and_from_driver_records():
    row = job_row_from_details({"type": "SUBMISSION", "job_id": "02000000", "submission_id": "raysubmit_1",
                                "status": "FAILED", "entrypoint": "python x.py", "start_time": 9000,
                                "end_time": 13000, "message": "exit 1", "driver_info": {"pid": "12"}})
    assert (row["id"], row["kind"], row["status"], row["duration"], row["message"]) == (
        "raysubmit_1", "SUBMISSION", "FAILED", 4.0, "exit 1")
    driver = job_row_from_driver({"job_id": "01000000", "start_time": 10.0, "end_time": None, "status": "RUNNING",
                                  "entrypoint": "x.py", "driver_pid": 5})
    assert (driver["id"], driver["kind"], driver["status"]) == ("01000000", "DRIVER", "RUNNING")
    assert driver["duration"] > 0


def test_task_counts_fold_owner_and_executor_rows_exactly():
    job = bytes.fromhex("01000000")
    rows = [
        ["f", "FINISHED", "0", "owner", job, 45], ["f", "FAILED", "0", "owner", job, 3],
        ["f", "FAILED", "1", "owner", job, 2], ["f", "SUBMITTED_TO_WORKER", "0", "owner", job, 4],
        ["f", "PENDING_NODE_ASSIGNMENT", "0", "owner", job, 6], ["f", "RUNNING", "0", "executor", job, 3],
        ["g", "RUNNING", "0", "executor", job, 1],
    ]
    counts = fold(rows)
    assert counts[("01000000", "f")] == {"PENDING": 7, "RUNNING": 3, "FINISHED": 45, "FAILED": 5}
    assert counts[("01000000", "g")] == {"PENDING": 0, "RUNNING": 1, "FINISHED": 0, "FAILED": 0}


def test_task_counts_of_a_job_whose_driver_left_are_kept_and_no_longer_pending():
    reports = [[["f", "FINISHED", "0", "owner", b"\x01", 10], ["f", "PENDING_ARGS_AVAIL", "0", "owner", b"\x01", 2]]]

    async def fetch():
        return reports[-1]

    async def main():
        counts = TaskCounts(fetch, remembered_jobs=1)
        assert await counts.state_counts() == {"PENDING": 2, "RUNNING": 0, "FINISHED": 10, "FAILED": 0}
        reports.append([])  # the driver disconnected: its node daemon dropped its counts
        assert await counts.function_counts("01") == [
            {"name": "f", "counts": {"PENDING": 0, "RUNNING": 0, "FINISHED": 10, "FAILED": 0}}]
        reports.append([["g", "FINISHED", "0", "owner", b"\x02", 1]])
        assert await counts.function_counts("01") == []  # only the newest job is remembered
        assert (await counts.state_counts("02"))["FINISHED"] == 1

    asyncio.run(main())
