"""The suite's own guards work: leaks fail a test, and "no tests collected" fails the run.

Each case runs an inner pytest (in a subprocess) with a copy of this suite's
conftest.py on a small test file, and checks its exit code and report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

from ember._private.processes import pid_alive
from ember._private.test_utils import wait_for_condition

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_inner(tmp_path, test_source, *args):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(os.path.join(HERE, "conftest.py"), suite / "conftest.py")
    (suite / "test_inner.py").write_text(textwrap.dedent(test_source))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "bt"),
         str(suite), *args],
        capture_output=True, text=True, timeout=120, cwd=str(suite),
    )


def test_leftover_child_process_fails_the_test_and_is_ended(tmp_path):
    pid_file = tmp_path / "pid"
    result = _run_inner(tmp_path, f"""
        import subprocess
        def test_leaks_a_process():
            proc = subprocess.Popen(["sleep", "120"])
            open({str(pid_file)!r}, "w").write(str(proc.pid))
    """)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "processes left running" in result.stdout
    pid = int(pid_file.read_text())
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)


def test_leftover_orphan_fails_the_test(tmp_path):
    pid_file = tmp_path / "pid"
    result = _run_inner(tmp_path, f"""
        import subprocess
        def test_leaks_an_orphan():
            # The shell exits at once; its background child is re-parented to pytest.
            subprocess.run(["sh", "-c", "sleep 120 & echo $! > {pid_file}"], check=True)
    """)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "processes left running" in result.stdout
    pid = int(pid_file.read_text())
    wait_for_condition(lambda: not pid_alive(pid), timeout=10)


def test_leftover_object_store_dir_fails_the_test(tmp_path):
    name = f"ember_session_leakcheck{os.getpid()}_node"
    try:
        result = _run_inner(tmp_path, f"""
            import os
            def test_leaks_a_store(tmp_path):
                (tmp_path / "session_leakcheck{os.getpid()}").mkdir()
                os.makedirs("/dev/shm/{name}")
        """)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "object store dirs left behind" in result.stdout
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        shutil.rmtree(f"/dev/shm/{name}", ignore_errors=True)


def test_clean_test_passes(tmp_path):
    result = _run_inner(tmp_path, """
        import subprocess
        def test_clean():
            subprocess.run(["true"], check=True)
    """)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_tests_collected_fails_the_run(tmp_path):
    result = _run_inner(tmp_path, """
        def test_something():
            pass
    """, "-k", "no_test_has_this_name")
    assert result.returncode == 1, result.stdout + result.stderr


def test_forgotten_shutdown_fails_the_test(tmp_path):
    result = _run_inner(tmp_path, """
        import ember
        def test_forgets_shutdown():
            ember.init(num_cpus=1, object_store_memory=64 * 1024 * 1024)
    """)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "missing ember.shutdown()" in result.stdout
