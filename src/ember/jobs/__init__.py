"""Submitted jobs: records, the supervisor that runs an entrypoint, and the job manager.

* ``common``     — ``JobStatus`` (Ray's values) and its transitions, the stored ``JobInfo``
  record, ``JobDetails`` (what the HTTP API and the SDK return), request validation.
* ``store``      — job records in the control service's KV (they survive its restart).
* ``supervisor`` — the ``JobSupervisor`` detached actor: runs one entrypoint as a
  subprocess, writes its output to ``job-driver-<submission_id>.log`` and its outcome to
  the record.
* ``manager``    — ``JobManager``: submit, stop, delete, list, logs; used by the head's
  HTTP server (``ember/dashboard/modules/jobs.py``).

The public SDK is ``ember.job_submission``.
"""
