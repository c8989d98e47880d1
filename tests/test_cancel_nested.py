"""``ember.cancel`` of nested tasks, as in Ray.

* The driver cancels a task another task submitted (the ref reached it as a
  value): the request goes to the task's owner.
* ``recursive=True`` (the default) cancels what the task submitted too;
  ``recursive=False`` leaves the children running.
* ``force=True`` kills the worker; the children it owns end with it.
* ``get`` raises ``TaskCancelledError`` in every case.

Children report through files: ``started`` (their pid), then ``ended`` with
``cancelled`` or ``finished``; they wait for a ``go`` file the test creates
only when it wants them to finish.
"""

from __future__ import annotations

import os

import psutil
import pytest

import ember
from ember._private.test_utils import wait_for_condition, wait_for_file, write_file_atomic
from ember.exceptions import TaskCancelledError


@ember.remote(num_cpus=1, max_retries=0)
def child(folder: str) -> str:
    write_file_atomic(os.path.join(folder, "started"), str(os.getpid()))
    try:
        wait_for_file(os.path.join(folder, "go"), timeout=120)
    except BaseException:
        write_file_atomic(os.path.join(folder, "ended"), "cancelled")
        raise
    write_file_atomic(os.path.join(folder, "ended"), "finished")
    return "done"


@ember.remote(num_cpus=1, max_retries=0)
def waits_for_child(folder: str) -> str:
    return ember.get(child.remote(folder))


@ember.remote(num_cpus=1)
def submits_child(folder: str) -> list[ember.ObjectRef]:
    return [child.remote(folder)]


def ended(folder: str) -> str:
    return wait_for_file(os.path.join(folder, "ended"), timeout=30)


def test_the_driver_cancels_a_task_another_task_submitted(ember_local, tmp_path):
    [ref] = ember.get(submits_child.remote(str(tmp_path)))
    wait_for_file(str(tmp_path / "started"), timeout=30)
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)
    assert ended(str(tmp_path)) == "cancelled"


@pytest.mark.parametrize("recursive", [True, False])
def test_recursive_cancel_reaches_the_children_and_only_then(ember_local, tmp_path, recursive):
    parent = waits_for_child.remote(str(tmp_path))
    wait_for_file(str(tmp_path / "started"), timeout=30)
    ember.cancel(parent, recursive=recursive)
    with pytest.raises(TaskCancelledError):
        ember.get(parent, timeout=30)
    if not recursive:  # the child runs on until told to finish
        assert not (tmp_path / "ended").exists()
        write_file_atomic(str(tmp_path / "go"), "go")
    assert ended(str(tmp_path)) == ("cancelled" if recursive else "finished")


def test_force_cancel_kills_the_worker_and_its_children(ember_local, tmp_path):
    parent = waits_for_child.remote(str(tmp_path))
    child_pid = int(wait_for_file(str(tmp_path / "started"), timeout=30))
    ember.cancel(parent, force=True)
    with pytest.raises(TaskCancelledError):
        ember.get(parent, timeout=30)
    wait_for_condition(lambda: not psutil.pid_exists(child_pid), timeout=30)
    assert not (tmp_path / "ended").exists()  # killed, not interrupted


def test_cancelling_a_finished_task_changes_nothing(ember_local, tmp_path):
    write_file_atomic(str(tmp_path / "go"), "go")
    [ref] = ember.get(submits_child.remote(str(tmp_path)))
    assert ember.get(ref, timeout=30) == "done"
    ember.cancel(ref)
    assert ember.get(ref) == "done"
