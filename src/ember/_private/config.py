"""Every tunable number of Ember, in one place.

Each field can be overridden by an environment variable ``EMBER_<field>``
(for example ``EMBER_heartbeat_period_s=0.5``), which daemons and workers
inherit from the process that started them. Timeouts live here and nowhere
else, so that tests can shorten them and users can find them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass
class Config:
    # --- objects -----------------------------------------------------------
    #: Values whose serialized size is below this travel inline in messages.
    max_direct_call_object_size: int = 100 * 1024
    #: Default object store capacity as a fraction of system memory.
    object_store_memory_fraction: float = 0.3
    #: Spill objects to disk once the store is fuller than this fraction.
    object_spilling_threshold: float = 0.8
    #: Where to spill: a folder or an fsspec URL (default: the session's spill/ folder); each
    #: node spills into an ``ember_spilled_objects_<node>`` folder of its own inside it.
    object_spilling_directory: str = ""
    #: Where an object that does not fit in the store even after spilling is written instead
    #: (fallback allocation; default: the session's fallback/ folder, on disk).
    object_store_fallback_directory: str = ""
    #: Most bytes of fallback files per node at once (0: only the disk's free space limits them).
    object_store_fallback_max_bytes: int = 0
    #: Free disk space a fallback file must leave behind.
    object_store_fallback_min_free_bytes: int = 1024 * 1024 * 1024
    #: Alignment of out-of-band buffers inside an object file.
    object_buffer_alignment: int = 64

    # --- transport ---------------------------------------------------------
    #: Largest frame a daemon accepts once a peer has authenticated.
    max_frame_bytes: int = 512 * 1024 * 1024
    #: Largest frame accepted before authentication (the hello).
    max_hello_bytes: int = 4096
    #: Seconds a peer has to authenticate after connecting.
    handshake_timeout_s: float = 5.0
    #: Seconds to keep retrying a connection to a daemon that is starting.
    connect_timeout_s: float = 10.0
    #: Default timeout of an RPC call that has no explicit one.
    rpc_timeout_s: float = 30.0
    #: Seconds a core worker tries to connect to another one (an owner, a leased worker, an actor).
    peer_connect_timeout_s: float = 5.0
    #: Seconds one reconnection attempt of a core worker to a restarting control service may take
    #: (between attempts it pauses from 50 ms doubling up to ``gcs_reconnect_max_backoff_s``).
    gcs_reconnect_attempt_timeout_s: float = 2.0
    #: Seconds a borrower waits for an owner to acknowledge its registration.
    borrower_registration_timeout_s: float = 30.0
    #: Seconds a core worker's shutdown waits for its connections and background tasks to close.
    core_worker_shutdown_timeout_s: float = 5.0
    #: Seconds an actor calling exit_actor() waits for the control service to record it dead.
    actor_exit_timeout_s: float = 5.0

    # --- scheduling --------------------------------------------------------
    #: Tasks pushed to one leased worker before its first reply comes back.
    max_tasks_in_flight_per_worker: int = 4
    #: Lease requests one scheduling class may have outstanding at once.
    max_pending_lease_requests: int = 8
    #: Seconds an idle lease is kept before it is returned to the node.
    idle_lease_timeout_s: float = 0.1
    #: Seconds between warnings about a task no node can ever run.
    infeasible_warning_period_s: float = 10.0
    #: If > 0, ``get`` on an infeasible task's result fails after this long.
    infeasible_timeout_s: float = 0.0
    #: Hybrid policy: stay local while the node's utilisation is below this.
    scheduler_spread_threshold: float = 0.5
    #: Hybrid policy: choose among this fraction of the least-utilised nodes...
    scheduler_top_k_fraction: float = 0.2
    #: ... but among at least this many.
    scheduler_top_k_absolute: int = 1
    #: Seconds daemons, drivers and workers keep trying to reach a restarting control service.
    gcs_reconnect_timeout_s: float = 60.0
    #: Seconds without a report after which a node is declared dead.
    node_death_timeout_s: float = 10.0
    #: Default retries of a task whose worker died.
    task_max_retries: int = 3

    # --- workers -----------------------------------------------------------
    #: sys.setswitchinterval in workers: how soon a busy thread hands the GIL to the I/O
    #: thread (Python's default is 0.005; threaded actors answer faster with less).
    worker_switch_interval_s: float = 0.005
    #: Start workers by forking a process that has already imported the runtime.
    use_fork_server: bool = True
    #: Workers the node daemon starts ahead of demand (default: num_cpus).
    num_prestart_workers: int = -1
    #: Most task worker processes one node runs at once (default: 4 x num_cpus + 8). Actors'
    #: processes do not count: they are limited by file descriptors, memory and the next field.
    max_workers: int = -1
    #: Most actor processes one node runs at once (0: no cap but the machine's limits).
    max_actor_workers: int = 0
    #: Workers one node starts at once (default: 2 x num_cpus, at least 4); more wait their turn.
    worker_maximum_startup_concurrency: int = -1
    #: Seconds a worker has to register with its node daemon after starting.
    worker_register_timeout_s: float = 30.0
    #: Idle workers beyond the prestart count exit after this many seconds.
    idle_worker_kill_s: float = 10.0

    # --- runtime environments ----------------------------------------------
    #: Largest working_dir / py_modules package (zipped) a driver uploads (Ray: 512 MiB).
    runtime_env_max_package_bytes: int = 512 * 1024 * 1024
    #: Packages are stored in the control service in chunks of this size (below the frame limit).
    runtime_env_chunk_bytes: int = 8 * 1024 * 1024
    #: Where nodes unpack packages and build virtualenvs (default: the session's runtime_resources/).
    runtime_env_dir: str = ""
    #: Unpacked packages and virtualenvs unused (no worker) for this many seconds are removed.
    runtime_env_unused_ttl_s: float = 600.0
    #: Seconds between checks for unused packages and virtualenvs.
    runtime_env_gc_period_s: float = 30.0
    #: A package stored in the cluster less than this long ago is kept even if no job pins it yet.
    runtime_env_package_grace_s: float = 600.0
    #: Build pip/uv virtualenvs with uv when it is installed (else venv + pip).
    runtime_env_use_uv: bool = True
    #: Last lines of an installer's output quoted in a RuntimeEnvSetupError.
    runtime_env_error_lines: int = 40

    # --- memory monitor ----------------------------------------------------
    #: Fraction of node (or cgroup) memory above which a worker is ended (1.0: off).
    memory_usage_threshold: float = 0.95
    #: Seconds between memory checks.
    memory_monitor_period_s: float = 0.25
    #: First delay before retrying a task the memory monitor ended (doubles per retry).
    oom_retry_backoff_s: float = 0.5

    # --- processes ------------------------------------------------------------
    #: The youngest generation's threshold of Python's garbage collector in Ember's processes
    #: and in a connected driver (Python's is 700; 0: leave Python's): see _private/collector.py.
    gc_young_threshold: int = 20_000

    # --- task events (state API, timeline) ----------------------------------
    #: Record every task's state transitions for the state API (``ember list tasks``).
    task_events_enabled: bool = True
    #: Seconds between two batches of task events a process sends to the control service.
    task_events_report_period_s: float = 0.5
    #: Task rows (of each kind: ended tasks of each job, others) a process keeps while the control
    #: service cannot take them; beyond, the oldest are dropped and counted.
    task_events_buffer_size: int = 100_000
    #: Tasks the control service keeps per job; beyond, finished ones are dropped first (counted).
    task_events_max_tasks_per_job: int = 100_000
    #: Most rows one state-API query returns (a larger ``limit`` is cut to this).
    state_api_max_limit: int = 100_000

    # --- health ------------------------------------------------------------
    heartbeat_period_s: float = 1.0
    #: Seconds between resource reports a node sends when nothing changes.
    resource_report_period_s: float = 0.2
    #: ... and a node reports a change of its available resources after at most this long.
    resource_report_min_interval_s: float = 0.02
    #: Seconds between reads of worker log files.
    log_poll_period_s: float = 0.05
    #: ... a file quiet for a while is read less often, down to once per this many seconds.
    log_poll_idle_period_s: float = 0.5
    #: Seconds to wait for a process to exit after SIGTERM before SIGKILL.
    process_stop_timeout_s: float = 3.0
    #: Seconds a daemon started by ``ember.init`` waits between checks
    #: that its parent is still alive.
    parent_check_period_s: float = 0.5
    #: Seconds between sweeps of a node's worker table for exited processes.
    worker_reap_period_s: float = 0.5
    #: Seconds a node daemon waits for a dead (or OOM-killed) worker's exit status before it
    #: reports the death without it (or looks at memory again).
    worker_exit_wait_s: float = 1.0
    #: Seconds a node daemon's load report may wait for the control service's answer.
    resource_report_timeout_s: float = 5.0
    #: Longest pause between a node daemon's (or core worker's) attempts to reach a restarting
    #: control service.
    gcs_reconnect_max_backoff_s: float = 1.0

    # --- autoscaler --------------------------------------------------------
    #: Seconds between two decisions of the autoscaler (it also decides at once when demand appears).
    autoscaler_update_interval_s: float = 1.0
    #: Shortest pause between two decisions (new demand wakes the autoscaler; this bounds how often).
    autoscaler_min_update_gap_s: float = 0.1
    #: Longest a ``get_cluster_demand`` call waits for new demand (bounds a client's request).
    autoscaler_max_demand_wait_s: float = 60.0
    #: Nodes allowed to be launching at once whatever ``upscaling_speed`` says (Ray's 5).
    autoscaler_upscaling_initial_num_nodes: int = 5
    #: Seconds a launched node has to join the cluster before it counts as failed and is ended.
    autoscaler_node_start_timeout_s: float = 60.0
    #: First pause after a node provider failed to launch a node type, doubled per failure...
    autoscaler_launch_backoff_initial_s: float = 1.0
    #: ...up to this.
    autoscaler_launch_backoff_max_s: float = 30.0
    #: Scale-up/down events and failures kept for ``ember status`` and the dashboard (the newest).
    autoscaler_max_events: int = 200
    #: Seconds between draining an idle node (no new work is sent to it) and ending it if still idle.
    autoscaler_drain_settle_s: float = 0.5
    #: Seconds ``ember up`` / ``ember start --autoscaling-config`` wait for the autoscaler's first report.
    autoscaler_start_timeout_s: float = 30.0
    #: First pause before the control service restarts an autoscaler that died, doubled per
    #: death in a row...
    autoscaler_restart_backoff_initial_s: float = 0.5
    #: ...up to this.
    autoscaler_restart_backoff_max_s: float = 30.0
    #: An autoscaler that ran this long before dying is restarted after the initial pause again.
    autoscaler_restart_stable_s: float = 60.0
    #: Seconds the control service waits for an autoscaler whose connection closed to exit
    #: (still running after that: it will reconnect, and is not restarted).
    autoscaler_exit_wait_s: float = 5.0
    #: Object store of a fake_multinode node whose type names no object_store_memory.
    autoscaler_fake_node_object_store_bytes: int = 100 * 1024 * 1024

    # --- daemon-to-daemon calls ---------------------------------------------
    #: Calls the control service makes to a node daemon or a worker (bundles, actor creation).
    gcs_node_call_timeout_s: float = 10.0
    #: Seconds one attempt to reach a restarting control service may take.
    gcs_connect_attempt_timeout_s: float = 2.0
    #: Backstop for waiters on the node table (placement groups, actors waiting for a node):
    #: they wake at every change anyway; this bounds a wait if a change is missed.
    cluster_change_wait_s: float = 1.0
    #: Pause before trying again to place a group after an unexpected failure.
    placement_retry_delay_s: float = 0.5
    #: Seconds a node daemon gives an object's owner to accept its watch connection.
    owner_watch_connect_timeout_s: float = 10.0
    #: Longest pause between attempts to watch an owner whose connection was reset.
    owner_watch_max_backoff_s: float = 2.0
    #: Seconds a node daemon waits for a worker to answer a question (e.g. does it own objects).
    worker_query_timeout_s: float = 5.0
    #: Seconds the fork server has to hand back a new worker's pid.
    fork_server_launch_timeout_s: float = 10.0
    #: Seconds the fork server has to import the worker runtime at a node's start. Workers wait
    #: for it (a fresh interpreter would import the same on the same cores); past this, it is
    #: ended and workers start as fresh interpreters.
    fork_server_ready_timeout_s: float = 30.0
    #: Seconds a holder has to prepare an object for a pull.
    object_transfer_prepare_timeout_s: float = 120.0
    #: Socket timeout of one transfer stream (no byte for this long: the stream fails).
    object_transfer_socket_timeout_s: float = 30.0

    # --- jobs (the job API on the head) -------------------------------------
    #: Seconds a stopped job's entrypoint has after SIGTERM before its processes get SIGKILL.
    job_stop_timeout_s: float = 3.0
    #: Finished jobs kept (records and logs); the oldest beyond this are deleted.
    job_max_finished_kept: int = 1000
    #: Seconds a finished job is kept after it ended (0: no age limit).
    job_finished_max_age_s: float = 7 * 24 * 3600.0
    #: Seconds between the job manager's checks of unfinished jobs' supervisors.
    job_monitor_period_s: float = 1.0
    #: Seconds between its reads of every job record (jobs it did not submit; deleting old ones).
    job_full_check_period_s: float = 30.0
    #: Seconds between reads of a job's log file while its logs are followed.
    job_log_poll_period_s: float = 0.1
    #: Seconds the job manager waits for a supervisor to answer a log read.
    job_supervisor_call_timeout_s: float = 10.0
    #: Characters of output quoted in a FAILED job's message.
    job_failure_log_chars: int = 20000
    #: Bytes of a job's log kept in the cluster when it ran on a node other than the head.
    job_log_copy_max_bytes: int = 1024 * 1024

    # --- metrics -----------------------------------------------------------
    #: Count tasks by state (ray_tasks) and send application metrics (Ray's
    #: RAY_enable_metrics_collection); off: records are dropped, the port serves node metrics only.
    enable_metrics_collection: bool = True
    #: Seconds a process that records metrics batches them before sending them to its node daemon.
    metrics_report_period_s: float = 1.0
    #: Most metric series (name + label values) a node daemon keeps; records of new ones beyond are dropped (and counted).
    metrics_max_series: int = 20000
    #: Seconds a metrics scraper has to send its request before the connection is closed.
    metrics_request_timeout_s: float = 10.0
    #: Seconds a scrape waits for the control service's actor and task counts (head node).
    metrics_gcs_timeout_s: float = 2.0

    # --- web UI --------------------------------------------------------------
    #: Seconds a view's document is reused for every open page before it is rebuilt.
    dashboard_ui_refresh_s: float = 1.0
    #: Seconds between samples of cluster use for the Overview charts ...
    dashboard_history_period_s: float = 2.0
    #: ... and how many samples are kept (300 x 2 s = the last 10 minutes).
    dashboard_history_samples: int = 300
    #: Rows a page lists at most (failed tasks, actor calls, jobs); it always shows the total.
    dashboard_ui_rows: int = 200
    #: Jobs whose last task counts the UI keeps after their driver has gone.
    dashboard_ui_remembered_jobs: int = 1000
    #: Largest log read one request returns, in bytes.
    dashboard_log_read_bytes: int = 256 * 1024
    #: Matching lines a log search returns at most (the total is always counted).
    dashboard_log_search_matches: int = 500
    #: Seconds the UI waits for a node daemon's answer.
    dashboard_node_timeout_s: float = 2.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        source: Mapping[str, str] = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = source.get("EMBER_" + field.name)
            if raw is None:
                continue
            kind: type[Any] = type(field.default)
            try:
                if kind is bool:
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    values[field.name] = raw.lower() in ("1", "true", "yes")
                    continue
                values[field.name] = kind(raw)
            except ValueError as exc:
                raise ValueError(
                    f"EMBER_{field.name}={raw!r} is not a valid {kind.__name__}"
                ) from exc
        return cls(**values)


_config: Config | None = None


def config() -> Config:
    """The process-wide configuration, read from the environment once."""
    global _config
    if _config is None:
        _config = Config.from_env()
    return _config


def reset_config() -> None:
    """Forget the cached config so the next ``config()`` re-reads the environment."""
    global _config
    _config = None
