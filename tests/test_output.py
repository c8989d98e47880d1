"""Worker output reaches the driver; every process has a log file in the session folder."""

from __future__ import annotations

import os
import sys
import threading

import pytest

import ember
from ember._private import runtime, session
from ember._private.test_utils import wait_for_condition


class _Tee:
    """Records what is written to a stream and passes it on (thread safe)."""

    def __init__(self, inner):
        self.inner = inner
        self.text = ""
        self._lock = threading.Lock()

    def write(self, data):
        with self._lock:
            self.text += data
        return self.inner.write(data)

    def flush(self):
        self.inner.flush()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _Captured:
    """The driver's stdout/stderr as the tests see them.

    Waiting polls a recording of ``sys.stdout``/``sys.stderr`` (which is where the
    driver prints workers' lines); ``capfd.readouterr()`` is not polled, because
    it truncates the capture file and would drop a line written by the driver's
    I/O thread at that moment. ``fd_text()`` then checks that the lines really
    reached file descriptors 1 and 2.
    """

    def __init__(self, capfd, monkeypatch):
        self.capfd = capfd
        self.stdout = _Tee(sys.stdout)
        self.stderr = _Tee(sys.stderr)
        monkeypatch.setattr(sys, "stdout", self.stdout)
        monkeypatch.setattr(sys, "stderr", self.stderr)

    @property
    def out(self):
        return self.stdout.text

    @property
    def err(self):
        return self.stderr.text

    def wait_for(self, *lines, stream="out", timeout=10):
        def arrived():
            text = self.out if stream == "out" else self.err
            return all(line in text for line in lines)

        try:
            wait_for_condition(arrived, timeout=timeout)
        except RuntimeError:
            raise AssertionError(
                f"{lines!r} did not reach the driver's std{stream} within {timeout}s; "
                f"stdout so far: {self.out!r}; stderr so far: {self.err!r}"
            ) from None

    def fd_text(self):
        out, err = self.capfd.readouterr()
        return out, err


def test_print_in_task_appears_in_driver_stdout_with_prefix(ember_shared, capfd, monkeypatch):
    @ember.remote
    def chatty(n):
        for i in range(n):
            print(f"chatty line {i}")
        return os.getpid()

    captured = _Captured(capfd, monkeypatch)
    pid = ember.get(chatty.remote(3))
    expected = [f"(chatty pid={pid}) chatty line {i}" for i in range(3)]
    captured.wait_for(*expected)
    lines = [line for line in captured.out.splitlines() if "chatty line" in line]
    assert lines == expected  # in order, each exactly once
    fd_out, _ = captured.fd_text()
    assert all(line in fd_out for line in expected)  # written to file descriptor 1


def test_stderr_in_task_appears_in_driver_stderr(ember_shared, capfd, monkeypatch):
    @ember.remote
    def complain():
        print("to stderr", file=sys.stderr)
        return os.getpid()

    captured = _Captured(capfd, monkeypatch)
    pid = ember.get(complain.remote())
    captured.wait_for(f"(complain pid={pid}) to stderr", stream="err")
    assert "to stderr" not in captured.out
    fd_out, fd_err = captured.fd_text()
    assert f"(complain pid={pid}) to stderr" in fd_err and "to stderr" not in fd_out


def test_output_is_attributed_to_the_task_that_printed_it(ember_shared, capfd, monkeypatch):
    @ember.remote
    def first():
        print("printed by first")
        return os.getpid()

    @ember.remote
    def second():
        print("printed by second")
        return os.getpid()

    captured = _Captured(capfd, monkeypatch)
    pid1 = ember.get(first.remote())
    pid2 = ember.get(second.remote())
    captured.wait_for(f"(first pid={pid1}) printed by first", f"(second pid={pid2}) printed by second")
    # The internal marker lines that attribute output are never shown.
    assert ":ember_task:" not in captured.out + captured.err


def test_output_uses_the_options_name(ember_shared, capfd, monkeypatch):
    @ember.remote
    def plain():
        print("named output")
        return os.getpid()

    captured = _Captured(capfd, monkeypatch)
    pid = ember.get(plain.options(name="custom_name").remote())
    captured.wait_for(f"(custom_name pid={pid}) named output")


def test_log_to_driver_false_keeps_output_out_of_the_driver(ember_start, capfd, monkeypatch):
    ember_start(num_cpus=1, log_to_driver=False)

    @ember.remote
    def quiet():
        print("should stay in the log file")
        return os.getpid()

    captured = _Captured(capfd, monkeypatch)
    pid = ember.get(quiet.remote())
    logs = os.path.join(runtime.core_worker().session_dir, "logs")

    def in_log_file():
        for name in os.listdir(logs):
            if name.startswith("worker-") and name.endswith(".out"):
                with open(os.path.join(logs, name)) as f:
                    if "should stay in the log file" in f.read():
                        return True
        return False

    wait_for_condition(in_log_file, timeout=10)
    # The node daemon tails that file every 50 ms; give a published line ample
    # time to arrive (with log_to_driver=True it shows up within ~0.1 s).
    with pytest.raises(AssertionError, match="did not reach"):
        captured.wait_for("should stay in the log file", timeout=1.5)
    assert f"pid={pid}" not in captured.out
    assert "should stay in the log file" not in captured.fd_text()[0]


def test_every_process_has_a_log_file(ember_shared):
    worker = runtime.core_worker()
    logs = os.path.join(worker.session_dir, "logs")
    names = os.listdir(logs)
    assert "gcs_server.log" in names
    node_hex = worker.node_id.hex()[:12]
    assert f"raylet-{node_hex}.log" in names

    @ember.remote
    def pid():
        return os.getpid()

    ember.get([pid.remote() for _ in range(4)])
    workers = worker.raylet_call("get_info", None)["workers"]
    assert workers
    for w in workers:
        stem = f"worker-{w['worker_id'].hex()[:16]}"
        assert f"{stem}.out" in os.listdir(logs), f"no stdout log for worker pid {w['pid']}"
        assert f"{stem}.err" in os.listdir(logs), f"no stderr log for worker pid {w['pid']}"

    with open(os.path.join(logs, "gcs_server.log")) as f:
        assert "control service listening" in f.read()
    with open(os.path.join(logs, f"raylet-{node_hex}.log")) as f:
        assert "node daemon" in f.read()


def test_worker_log_file_holds_its_output(ember_shared, capfd, monkeypatch):
    worker = runtime.core_worker()
    captured = _Captured(capfd, monkeypatch)

    @ember.remote
    def write_out():
        from ember._private import runtime as rt

        print("line for the log file")
        return rt.core_worker().worker_id.hex()

    worker_id = ember.get(write_out.remote())
    path = os.path.join(worker.session_dir, "logs", f"worker-{worker_id[:16]}.out")

    def logged():
        with open(path) as f:
            return "line for the log file" in f.read()

    wait_for_condition(logged, timeout=10)
    # The driver prints it too: wait for it here, or it lands after this test, past pytest's capture.
    captured.wait_for("line for the log file")


def test_session_latest_points_at_the_newest_session(ember_shared):
    worker = runtime.core_worker()
    root = session.temp_root()
    assert root == os.environ["EMBER_TMPDIR"]
    assert os.path.dirname(worker.session_dir) == root
    assert os.path.basename(worker.session_dir).startswith("session_")
    latest = os.path.join(root, "session_latest")
    assert os.path.islink(latest)
    assert os.path.realpath(latest) == os.path.realpath(worker.session_dir)
    for sub in ("logs", "pids"):
        assert os.path.isdir(os.path.join(worker.session_dir, sub))


def test_temp_root_defaults_to_tmp_ember(monkeypatch):
    monkeypatch.delenv("EMBER_TMPDIR", raising=False)
    assert session.temp_root() == "/tmp/ember"
    assert session.current_cluster_file() == "/tmp/ember/ember_current_cluster"


def test_new_session_moves_session_latest(ember_start, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_TMPDIR", str(tmp_path))
    first = session.create_session_dir()
    ember_start(num_cpus=1)
    second = runtime.core_worker().session_dir
    assert first != second
    assert os.path.realpath(os.path.join(str(tmp_path), "session_latest")) == os.path.realpath(second)
