"""``JobManager``: the job API's logic, run by the head's HTTP server.

It stores a PENDING record, creates the job's ``JobSupervisor`` (a detached actor, see
``supervisor.py``) and asks it to run; everything after that is the supervisor's. The
manager holds no state a restart would lose: records live in the control service's KV
and supervisors in node daemons' workers. Its monitor (one owned task) fails jobs
whose supervisor died, asks supervisors that a previous manager created to run (a run
request dies with the process that sent it; ``run`` is idempotent), and deletes
finished jobs beyond ``job_max_finished_kept`` / ``job_finished_max_age_s``.

Creating actors and calling them needs a core worker: the manager connects one to the
cluster (as a driver in an internal namespace) the first time it needs it. Reading
records does not need it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember.jobs.common import (
    DriverInfo,
    JobDetails,
    JobErrorType,
    JobInfo,
    JobStatus,
    JobSubmitRequest,
    JobType,
    new_submission_id,
    now_ms,
)
from ember.jobs.store import GcsCall, JobStore
from ember.jobs.supervisor import (
    SUPERVISOR_NAMESPACE,
    JobSupervisor,
    log_file_name,
    supervisor_name,
)

logger = logging.getLogger(__name__)

#: Drivers in namespaces with this prefix are Ember's own (the job manager's): not listed.
INTERNAL_NAMESPACE_PREFIX = "_ember_internal"


class JobNotFoundError(KeyError):
    """No job has this submission id (or driver job id)."""


class JobStateError(ValueError):
    """The job's status does not allow the request (e.g. deleting a running job)."""


class JobManager:
    def __init__(self, gcs_call: GcsCall, gcs_address: str, token: str, logs_dir: str) -> None:
        """``gcs_call`` reaches the control service (the HTTP server's client: it fails fast
        while the control service restarts, where a core worker's calls would wait);
        ``logs_dir`` is this (the head) node's session logs folder."""
        self.gcs_address = gcs_address
        self.token = token
        self.logs_dir = logs_dir
        self._gcs = gcs_call
        self._store = JobStore(gcs_call)
        self._worker: Any = None
        self._worker_lock = asyncio.Lock()
        self._head_node_id: str | None = None
        #: Jobs whose supervisor this manager is creating right now (the monitor leaves them be).
        self._submitting: set[str] = set()
        #: Supervisors this manager asked to run (so that the monitor asks only the others).
        self._asked_to_run: set[str] = set()
        #: Jobs not yet final, checked every monitor pass (every record only every full pass).
        self._unfinished: set[str] = set()
        self._background = BackgroundTasks("job manager")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._background.spawn(self._monitor(), "job monitor")

    async def close(self) -> None:
        await self._background.close(config().process_stop_timeout_s)
        if self._worker is not None:
            from ember.api.init import shutdown

            await asyncio.get_running_loop().run_in_executor(None, shutdown)
            self._worker = None

    async def _core_worker(self) -> Any:
        """This process's core worker, connected on first use."""
        async with self._worker_lock:
            if self._worker is None:
                import ember
                from ember._private import runtime

                def connect() -> Any:
                    ember.init(address=self.gcs_address, _token=self.token, namespace=SUPERVISOR_NAMESPACE,
                               log_to_driver=False, ignore_reinit_error=True)
                    return runtime.core_worker()

                self._worker = await asyncio.get_running_loop().run_in_executor(None, connect)
            return self._worker

    async def head_node_id(self) -> str:
        if self._head_node_id is None:
            nodes = await self._gcs("get_nodes", None)
            head = next((n for n in nodes if n.get("IsHead") and n["Alive"]), None)
            if head is None:
                raise RuntimeError("the cluster has no live head node to run job supervisors on")
            self._head_node_id = head["NodeID"]
        return self._head_node_id

    # ------------------------------------------------------------------ submit
    async def submit(self, request: JobSubmitRequest) -> str:
        """Store the job as PENDING and start its supervisor; returns the submission id.

        Raises ``ValueError`` for a taken submission id or a bad runtime_env.
        """
        from ember.runtime_env.validation import validate

        store = self._store
        submission_id = request.submission_id or request.job_id or new_submission_id()
        runtime_env = request.runtime_env or {}
        validate(runtime_env)  # a bad one fails here (ValueError naming the key), before any record
        metadata = dict(request.metadata or {})
        info = JobInfo(
            status=JobStatus.PENDING, entrypoint=request.entrypoint, start_time=now_ms(),
            metadata=metadata, runtime_env=runtime_env,
            entrypoint_num_cpus=request.entrypoint_num_cpus, entrypoint_num_gpus=request.entrypoint_num_gpus,
            entrypoint_memory=request.entrypoint_memory, entrypoint_resources=request.entrypoint_resources,
        )
        self._submitting.add(submission_id)
        self._unfinished.add(submission_id)
        try:
            if not await store.create(submission_id, info):
                raise ValueError(f"Job with submission_id {submission_id} already exists. "
                                 "Please use a different submission_id.")
            try:
                await self._start_supervisor(submission_id, info)
            except Exception as exc:
                await store.try_transition(
                    submission_id, JobStatus.FAILED, message=f"Failed to start the job supervisor: {exc}",
                    error_type=JobErrorType.JOB_SUPERVISOR_ACTOR_DIED.value,
                )
                raise
        finally:
            self._submitting.discard(submission_id)
        return submission_id

    async def _start_supervisor(self, submission_id: str, info: JobInfo) -> None:
        import ember
        from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        await self._core_worker()
        head = await self.head_node_id()
        options: dict[str, Any] = {
            "name": supervisor_name(submission_id), "namespace": SUPERVISOR_NAMESPACE,
            "lifetime": "detached", "max_restarts": 0,
            "num_cpus": info.entrypoint_num_cpus or 0, "num_gpus": info.entrypoint_num_gpus or 0,
        }
        if info.entrypoint_memory:
            options["memory"] = info.entrypoint_memory
        if info.entrypoint_resources:
            options["resources"] = dict(info.entrypoint_resources)
        if info.runtime_env:
            # Set up by the node daemon like any actor's; local folders are uploaded from here.
            options["runtime_env"] = dict(info.runtime_env)
        if not info.requests_entrypoint_resources():
            # Nothing to place it by: it runs on the head, next to the HTTP server (as in Ray).
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=False)

        def create() -> None:
            actor = ember.remote(JobSupervisor).options(**options).remote(
                submission_id, info.entrypoint, info.runtime_env, head)
            actor.run.remote()

        await asyncio.get_running_loop().run_in_executor(None, create)
        self._asked_to_run.add(submission_id)

    # ------------------------------------------------------------------ stop / delete
    async def stop_job(self, submission_id: str) -> bool:
        """Stop a job in any state; False if it had already ended."""
        store = self._store
        info = await store.get(submission_id)
        if info is None:
            raise JobNotFoundError(submission_id)
        if info.status is JobStatus.PENDING:
            if await store.try_transition(submission_id, JobStatus.STOPPED) is not None:
                # Its supervisor may wait for resources: end it (if it starts meanwhile, it sees STOPPED).
                await self._kill_supervisor(submission_id)
                return True
            info = await store.get(submission_id)  # it started in between
            if info is None:
                raise JobNotFoundError(submission_id)
        if info.status.is_terminal():
            return False
        await self._ask_supervisor(submission_id, "stop")
        return True

    async def _kill_supervisor(self, submission_id: str) -> None:
        actor = await self._gcs("get_named_actor", {"name": supervisor_name(submission_id),
                                                     "namespace": SUPERVISOR_NAMESPACE})
        if actor is not None:
            await self._gcs("kill_actor", {"actor_id": actor["actor_id"], "no_restart": True,
                                           "cause": "its job was stopped"})

    async def _ask_supervisor(self, submission_id: str, method: str) -> bool:
        """Send ``method`` to the job's supervisor without waiting for it; False if there is none."""
        import ember

        await self._core_worker()

        def send() -> bool:
            try:
                actor = ember.get_actor(supervisor_name(submission_id), namespace=SUPERVISOR_NAMESPACE)
            except ValueError:
                return False
            getattr(actor, method).remote()
            return True

        return await asyncio.get_running_loop().run_in_executor(None, send)

    async def delete_job(self, submission_id: str) -> bool:
        store = self._store
        info = await store.get(submission_id)
        if info is None:
            raise JobNotFoundError(submission_id)
        if not info.status.is_terminal():
            raise JobStateError(
                f"Attempted to delete job with submission_id {submission_id}, but it is in a "
                f"non-terminal state ({info.status.value}). Stop it first (stop_job)."
            )
        deleted = await store.delete(submission_id)
        try:
            os.unlink(os.path.join(self.logs_dir, log_file_name(submission_id)))
        except OSError:
            pass
        return deleted

    # ------------------------------------------------------------------ reading
    async def _driver_jobs(self) -> list[dict[str, Any]]:
        jobs = await self._gcs("get_jobs", None)
        return [j for j in jobs if not str(j.get("namespace") or "").startswith(INTERNAL_NAMESPACE_PREFIX)]

    async def list_jobs(self) -> list[JobDetails]:
        store = self._store
        records, drivers = await asyncio.gather(store.list(), self._driver_jobs())
        by_submission = _latest_driver_by_submission(drivers)
        details = [_submission_details(sid, info, by_submission.get(sid)) for sid, info in records.items()]
        details.sort(key=lambda d: d.start_time or 0)
        details += [_driver_details(j) for j in drivers if not j.get("submission_id")]
        return details

    async def get_job(self, job_or_submission_id: str) -> JobDetails:
        store = self._store
        drivers = await self._driver_jobs()
        by_submission = _latest_driver_by_submission(drivers)
        info = await store.get(job_or_submission_id)
        if info is not None:
            return _submission_details(job_or_submission_id, info, by_submission.get(job_or_submission_id))
        for job in drivers:
            if job["job_id"].hex() == job_or_submission_id:
                sid = job.get("submission_id")
                info = await store.get(str(sid)) if sid else None
                if info is not None:
                    return _submission_details(str(sid), info, by_submission.get(str(sid)))
                return _driver_details(job)
        raise JobNotFoundError(job_or_submission_id)

    async def submission_id_of(self, job_or_submission_id: str, action: str) -> str:
        """The submission id of a submitted job named by either id; ``JobStateError`` for a
        driver that was not submitted (``action`` says what cannot be done to it)."""
        details = await self.get_job(job_or_submission_id)
        if details.type is not JobType.SUBMISSION or details.submission_id is None:
            raise JobStateError(f"Can only {action} submission type jobs")
        return details.submission_id

    # ------------------------------------------------------------------ logs
    def _local_log_path(self, submission_id: str) -> str:
        return os.path.join(self.logs_dir, log_file_name(submission_id))

    async def get_logs(self, submission_id: str) -> str:
        store = self._store
        data = await self._read_log(submission_id, 0, None)
        if data is None:
            data = await store.get_log_copy(submission_id) or b""
        return data.decode(errors="replace")

    async def _read_log(self, submission_id: str, offset: int, max_bytes: int | None) -> bytes | None:
        """Log bytes from ``offset``: from this node's disk, else from the job's live supervisor;
        None if neither has it."""
        path = self._local_log_path(submission_id)

        def read() -> bytes | None:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    return f.read() if max_bytes is None else f.read(max_bytes)
            except FileNotFoundError:
                return None

        data = await asyncio.get_running_loop().run_in_executor(None, read)
        if data is not None:
            return data
        return await self._read_log_from_supervisor(submission_id, offset, max_bytes)

    async def _read_log_from_supervisor(self, submission_id: str, offset: int, max_bytes: int | None) -> bytes | None:
        import ember

        await self._core_worker()

        def read() -> bytes | None:
            try:
                actor = ember.get_actor(supervisor_name(submission_id), namespace=SUPERVISOR_NAMESPACE)
                data: bytes | None = ember.get(actor.read_log.remote(offset, max_bytes or (1 << 30)),
                                               timeout=config().job_supervisor_call_timeout_s)
                return data
            except Exception:  # gone between the lookup and the call: the caller falls back
                return None

        return await asyncio.get_running_loop().run_in_executor(None, read)

    async def tail_logs(self, submission_id: str) -> AsyncIterator[str]:
        """The job's output as it is written, until the job has ended and all of it was sent."""
        store = self._store
        offset = 0
        period = config().job_log_poll_period_s
        while True:
            info = await store.get(submission_id)
            if info is None:
                return
            ended = info.status.is_terminal()
            if info.status is not JobStatus.PENDING:
                data = await self._read_log(submission_id, offset, 1 << 20)
                if data is None and ended:
                    copy = await store.get_log_copy(submission_id) or b""
                    data = copy[offset:]
                if data:
                    offset += len(data)
                    yield data.decode(errors="replace")
                    continue  # there may be more at once
            if ended:
                return
            await asyncio.sleep(period)

    # ------------------------------------------------------------------ packages
    def _package_store(self) -> Any:
        """renv's package store, called from a worker thread through this loop's client."""
        from ember.runtime_env.package_store import PackageStore

        loop = asyncio.get_running_loop()

        async def request(method: str, payload: Any) -> Any:
            return await self._gcs(method, payload)

        def call(method: str, payload: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(request(method, payload), loop).result()

        return PackageStore(call)

    async def package_exists(self, uri: str) -> bool:
        store = self._package_store()
        return await asyncio.get_running_loop().run_in_executor(None, store.exists, uri)

    async def store_package(self, uri: str, data: bytes) -> None:
        """Store an uploaded package (a working_dir or py_modules zip) under ``uri``.

        Raises ``ValueError`` if it is over ``runtime_env_max_package_bytes`` or not a safe zip.
        """
        from ember.runtime_env import packaging

        limit = config().runtime_env_max_package_bytes
        if len(data) > limit:
            raise ValueError(f"the package is {len(data)} bytes, over the limit of {limit} (runtime_env_max_package_bytes)")
        store = self._package_store()

        def check_and_put() -> None:
            import io
            import zipfile

            try:
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    packaging.check_entries(zf)
            except (zipfile.BadZipFile, packaging.PackageError) as exc:
                raise ValueError(f"the package {uri} is not a usable zip: {exc}") from None
            store.put(uri, data)

        await asyncio.get_running_loop().run_in_executor(None, check_and_put)

    # ------------------------------------------------------------------ monitor
    async def _monitor(self) -> None:
        period = config().job_monitor_period_s
        every = max(1, round(config().job_full_check_period_s / period))
        passes = 0
        while True:
            try:
                await self.check_jobs(full=passes % every == 0)
                passes += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("checking jobs failed; trying again in %gs", period)
            await asyncio.sleep(period)

    async def check_jobs(self, full: bool = True) -> None:
        """One pass over the unfinished jobs: fail those whose supervisor is gone, resume orphaned
        supervisors. A ``full`` pass reads every record (finding unfinished jobs this manager did
        not submit) and deletes old finished jobs; the others read only the unfinished ones."""
        store = self._store
        if full:
            records = await store.list()
            self._unfinished = {sid for sid, info in records.items() if not info.status.is_terminal()}
        else:
            found = {sid: await store.get(sid) for sid in list(self._unfinished)}
            records = {sid: info for sid, info in found.items() if info is not None}
        for sid, info in records.items():
            if info.status.is_terminal():
                self._unfinished.discard(sid)
                continue
            if sid in self._submitting:
                continue
            actor = await self._gcs("get_named_actor", {"name": supervisor_name(sid), "namespace": SUPERVISOR_NAMESPACE})
            if actor is None:
                await self._supervisor_gone(sid, info)
            elif sid not in self._asked_to_run and actor["state"] != "DEAD":
                # Created by a manager that is gone with its run request: ask again (idempotent).
                if await self._ask_supervisor(sid, "run"):
                    self._asked_to_run.add(sid)
        if full:
            await self._evict(store, records)

    async def _supervisor_gone(self, submission_id: str, info: JobInfo) -> None:
        actors = await self._gcs("list_actors", None)
        name = supervisor_name(submission_id)
        dead = [a for a in actors if a["name"] == name and a["namespace"] == SUPERVISOR_NAMESPACE]
        store = self._store
        if not dead:
            await store.try_transition(
                submission_id, JobStatus.FAILED, error_type=JobErrorType.JOB_SUPERVISOR_ACTOR_DIED.value,
                message="Job supervisor actor was never created (the job server stopped while submitting it).",
            )
            return
        actor = dead[-1]
        cause = actor.get("death_cause") or "unknown cause"
        if actor.get("error_type") == "ActorUnschedulableError":
            error_type, message = JobErrorType.JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE, \
                f"Job supervisor actor could not be scheduled: {cause}"
        elif actor.get("error_type") == "RuntimeEnvSetupError":
            error_type, message = JobErrorType.RUNTIME_ENV_SETUP_FAILURE, f"runtime_env setup failed: {cause}"
        else:
            error_type, message = JobErrorType.JOB_SUPERVISOR_ACTOR_DIED, f"Job supervisor actor died: {cause}"
        # A supervisor stores the outcome before it exits: a transition refused here means it did.
        await store.try_transition(submission_id, JobStatus.FAILED, error_type=error_type.value, message=message)

    async def _evict(self, store: JobStore, records: dict[str, JobInfo]) -> None:
        cfg = config()
        finished = sorted(
            ((info.end_time or 0, sid) for sid, info in records.items() if info.status.is_terminal()),
            reverse=True,
        )
        oldest_kept = now_ms() - cfg.job_finished_max_age_s * 1000 if cfg.job_finished_max_age_s > 0 else None
        for rank, (end_time, sid) in enumerate(finished):
            if rank >= cfg.job_max_finished_kept or (oldest_kept is not None and end_time < oldest_kept):
                logger.info("deleting finished job %s (over the kept count or age)", sid)
                await self.delete_job(sid)


def _latest_driver_by_submission(drivers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for job in sorted(drivers, key=lambda j: j.get("start_time") or 0):
        if job.get("submission_id"):
            latest[job["submission_id"]] = job
    return latest


def _driver_info(job: dict[str, Any]) -> DriverInfo:
    address = job.get("driver_address") or ["", 0]
    return DriverInfo(id=job["job_id"].hex(), node_ip_address=str(address[0]), pid=str(job.get("driver_pid") or ""))


def _submission_details(submission_id: str, info: JobInfo, driver: dict[str, Any] | None) -> JobDetails:
    return JobDetails(
        type=JobType.SUBMISSION, submission_id=submission_id,
        job_id=driver["job_id"].hex() if driver else None,
        driver_info=_driver_info(driver) if driver else None,
        **info.to_dict(),
    )


def _driver_details(job: dict[str, Any]) -> JobDetails:
    running = job["status"] == "RUNNING"
    return JobDetails(
        type=JobType.DRIVER, job_id=job["job_id"].hex(), submission_id=None, driver_info=_driver_info(job),
        status=JobStatus.RUNNING if running else JobStatus.SUCCEEDED, entrypoint=job.get("entrypoint") or "",
        message="Job is currently running." if running else "Job finished successfully.",
        start_time=int((job.get("start_time") or 0) * 1000),
        end_time=int(job["end_time"] * 1000) if job.get("end_time") else None,
        metadata={},
    )
