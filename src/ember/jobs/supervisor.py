"""``JobSupervisor``: the detached actor that runs one submitted job's entrypoint.

Why an actor: it is placed by the cluster like any actor, so it holds the job's
entrypoint resources (``entrypoint_num_cpus`` ...) on a node that has them, and a job
waiting for them is PENDING with nothing started; and it is *detached*, so it lives in
a worker of a node daemon, not in the HTTP server — a crash or restart of the HTTP
server or of the control service does not touch a running job (the supervisor writes
the outcome itself once the control service is back). Without entrypoint resources it
holds nothing and is pinned to the head node (as in Ray).

The supervisor actor is created with the job's runtime_env, so its node daemon sets
that up as for any actor (a failure is ``RuntimeEnvSetupError``: the job FAILS with
RUNTIME_ENV_SETUP_FAILURE). The entrypoint runs as a shell command in a new session
(its own process group) in that env (cwd = working_dir, as in Ray), with
``EMBER_ADDRESS`` and the cluster token set so that its driver connects by itself,
``EMBER_JOB_SUBMISSION_ID``, and the job's runtime_env in ``EMBER_JOB_RUNTIME_ENV``
(``init()`` applies it as the job's default). Output goes to
``<session>/logs/job-driver-<submission_id>.log`` on the supervisor's node. Stopping
sends SIGTERM to the process group and every descendant, then SIGKILL after
``job_stop_timeout_s``. When the outcome is stored the actor exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember.jobs.common import JobErrorType, JobStatus
from ember.jobs.store import JobStore, core_worker_call
from ember.runtime_env.resolve import JOB_ENV_VAR, WORKER_ENV_VAR

logger = logging.getLogger(__name__)

#: Supervisors are named actors in this namespace (the prefix marks internal namespaces).
SUPERVISOR_NAMESPACE = "_ember_internal_jobs"
#: Environment a worker gets from its node daemon that a driver must not inherit.
_WORKER_ONLY_ENV = ("EMBER_WORKER_ID", "EMBER_RAYLET_PID", "EMBER_RAYLET_ADDRESS", "EMBER_GCS_ADDRESS",
                    "EMBER_NODE_IP", "EMBER_TOKEN", WORKER_ENV_VAR)


def supervisor_name(submission_id: str) -> str:
    return f"_ember_job_supervisor_{submission_id}"


def log_file_name(submission_id: str) -> str:
    return f"job-driver-{submission_id}.log"


def read_tail(path: str, max_chars: int) -> str:
    """The last ``max_chars`` characters of a file ("" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_chars * 4))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return text[-max_chars:]


def driver_environment(base: dict[str, str], *, gcs_address: str, token: str, submission_id: str,
                       runtime_env: dict[str, Any] | None) -> dict[str, str]:
    """The entrypoint's environment: ours without worker-only variables, plus the cluster's.

    The supervisor runs in the job's runtime env (its node daemon built it: cwd, PATH of a
    pip virtualenv, PYTHONPATH, env_vars), so the entrypoint inherits it. The driver gets the
    job's env as this worker received it (``EMBER_RUNTIME_ENV``: local folders already
    uploaded, so any node can use it) to apply as its job's default.
    """
    env = {k: v for k, v in base.items() if k not in _WORKER_ONLY_ENV}
    wire = base.get(WORKER_ENV_VAR) or ""
    env.update({
        "EMBER_ADDRESS": gcs_address,
        "EMBER_CLUSTER_TOKEN": token,
        "EMBER_JOB_SUBMISSION_ID": submission_id,
        JOB_ENV_VAR: wire if wire not in ("", "{}") else json.dumps(runtime_env or {}),
        "PYTHONUNBUFFERED": "1",  # output reaches the log as it is printed
    })
    env.pop("RAY_ADDRESS", None)  # it may name the HTTP server; EMBER_ADDRESS is the cluster
    for key, value in ((runtime_env or {}).get("env_vars") or {}).items():
        env[str(key)] = str(value)
    return env


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_job(pgid: int, procs: list[Any], sig: int) -> None:
    """Signal the job's process group and every process found under its leader."""
    import psutil

    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def _die_with_parent() -> Any:
    """A ``preexec_fn`` asking Linux to SIGKILL the entrypoint if its supervisor dies (e.g. its
    node is stopped): libc is loaded here, so the child only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def in_child() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)

    return in_child


class JobSupervisor:
    """Runs one job's entrypoint and records its outcome (an async actor: ``stop`` runs while ``run`` waits)."""

    def __init__(self, submission_id: str, entrypoint: str, runtime_env: dict[str, Any] | None,
                 head_node_id: str) -> None:
        from ember._private import runtime

        self._worker = runtime.core_worker()
        self._submission_id = submission_id
        self._entrypoint = entrypoint
        self._runtime_env = runtime_env or {}
        self._head_node_id = head_node_id
        self._store = JobStore(core_worker_call(self._worker))
        self._log_path = os.path.join(self._worker.session_dir, "logs", log_file_name(submission_id))
        #: Owns the run (one task: later ``run`` calls wait for it); the actor's exit ends it.
        self._background = BackgroundTasks("job supervisor")
        self._run_task: asyncio.Task[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stop_requested = False

    async def ping(self) -> str:
        node_id: bytes = self._worker.node_id
        return node_id.hex()

    async def run(self) -> str:
        """Run the job to its end (a second call waits for the first); returns its final status."""
        if self._run_task is None:
            self._run_task = self._background.spawn(self._run(), "job run")
        status = await asyncio.shield(self._run_task)
        from ember.api.actor import exit_actor

        exit_actor()  # the outcome is stored: this supervisor's work is done
        return status

    async def stop(self) -> bool:
        """Stop the job: SIGTERM to its processes, SIGKILL after ``job_stop_timeout_s``."""
        self._stop_requested = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return False
        procs = _descendants(proc.pid)
        _signal_job(proc.pid, procs, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), config().job_stop_timeout_s)
        except asyncio.TimeoutError:
            logger.warning("job %s did not stop within %gs of SIGTERM: sending SIGKILL",
                           self._submission_id, config().job_stop_timeout_s)
        # Whatever of the job is left (the leader's children too) is ended now.
        _signal_job(proc.pid, procs + _descendants(proc.pid), signal.SIGKILL)
        return True

    async def read_log(self, offset: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the job's log from ``offset`` (for logs read from another node)."""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except OSError:
            return b""

    # ------------------------------------------------------------------ the run
    async def _run(self) -> str:
        sid = self._submission_id
        node_id = self._worker.node_id.hex()
        if self._stop_requested or await self._store.try_transition(
                sid, JobStatus.RUNNING, driver_node_id=node_id) is None:
            # Stopped (or deleted) while it waited to start: nothing runs.
            await self._store.try_transition(sid, JobStatus.STOPPED)
            info = await self._store.get(sid)
            return info.status.value if info else JobStatus.STOPPED.value
        env = driver_environment(
            dict(os.environ), gcs_address=self._worker.gcs_address, token=self._worker.token,
            submission_id=sid, runtime_env=self._runtime_env,
        )
        try:
            with open(self._log_path, "ab", buffering=0) as log:
                # cwd: this worker's, the job's working_dir when it has one (as in Ray).
                self._proc = await asyncio.create_subprocess_shell(
                    self._entrypoint, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                    env=env, start_new_session=True, preexec_fn=_die_with_parent(),
                )
        except (OSError, ValueError) as exc:
            await self._store.try_transition(
                sid, JobStatus.FAILED, message=f"Job entrypoint command failed to start: {exc}",
                error_type=JobErrorType.JOB_ENTRYPOINT_COMMAND_START_ERROR.value,
            )
            return JobStatus.FAILED.value
        if self._stop_requested:  # stop() came while the process was being started
            await self.stop()
        code = await self._proc.wait()
        # Processes the entrypoint left behind in its group do not outlive the job.
        _signal_job(self._proc.pid, [], signal.SIGKILL)
        await self._keep_log_copy()
        if self._stop_requested:
            final = await self._store.try_transition(sid, JobStatus.STOPPED, driver_exit_code=code)
        elif code == 0:
            final = await self._store.try_transition(sid, JobStatus.SUCCEEDED, driver_exit_code=code)
        else:
            final = await self._store.try_transition(
                sid, JobStatus.FAILED, driver_exit_code=code, message=self._failure_message(code),
                error_type=JobErrorType.JOB_ENTRYPOINT_COMMAND_ERROR.value,
            )
        if final is None:
            info = await self._store.get(sid)
            return info.status.value if info else JobStatus.STOPPED.value
        return final.status.value

    def _failure_message(self, code: int) -> str:
        if code < 0:
            what = f"was killed by signal {signal.Signals(-code).name}" if -code in signal.valid_signals() \
                else f"was killed by signal {-code}"
        else:
            what = f"failed with exit code {code}"
        tail = read_tail(self._log_path, config().job_failure_log_chars)
        if not tail:
            return f"Job entrypoint command {what}. No logs available."
        return (f"Job entrypoint command {what}, last available logs "
                f"(truncated to {config().job_failure_log_chars:,} chars):\n{tail}")

    async def _keep_log_copy(self) -> None:
        """On a node other than the head, leave the log's tail in the cluster: the head's
        HTTP server reads logs from its own disk, and this worker is about to exit."""
        if self._worker.node_id.hex() == self._head_node_id:
            return
        limit = config().job_log_copy_max_bytes
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                data = f.read()
        except OSError:
            return
        await self._store.put_log_copy(self._submission_id, data)
